"""The client's half of user-level distributed DP over gRPC (PRIVACY.md section 2).

Exactly what the in-process :class:`~fedvpa_secure.train.secure_aggregation.SecureAggregator`
does for each client, with the same functions: :func:`privatize_update` (unweight, normalise the
prior statistics, clip the whole update to S) and a
:class:`~fedvpa_secure.train.secure_aggregation.NoisyLayout` whose ``quantize`` adds this
client's integer noise share from the CSPRNG samplers in the ring, after stochastic rounding and
BEFORE the masks. The noisy layout has the plain layout's digest, so the server's checks are
unchanged; the server only ever unmasks a noisy sum.
"""

from __future__ import annotations

import math

from fedvpa_secure.errors import AbortRound
from fedvpa_secure.proto import federation_pb2 as pb
from fedvpa_secure.secagg import Layout
from fedvpa_secure.train.aggregation import Update
from fedvpa_secure.train.dp_config import NOISE_KINDS
from fedvpa_secure.train.secure_aggregation import NoisyLayout, privatize_update


def check_share(share: pb.UserDpShare, round_id: str) -> None:
    """Refuse noise parameters no honest server sends (the round is aborted for this client).

    A server that wants less noise could send a smaller sigma; what this catches is a missing or
    non-finite value that would silently release an un-noised update.
    """
    problems = []
    if not (math.isfinite(share.clip_norm) and share.clip_norm > 0):
        problems.append(f"clip_norm={share.clip_norm!r} (expected a finite number > 0)")
    if share.noise not in NOISE_KINDS:
        problems.append(f"noise={share.noise!r} (expected one of {NOISE_KINDS})")
    if not (math.isfinite(share.local_sigma) and share.local_sigma > 0):
        problems.append(f"local_sigma={share.local_sigma!r} (expected a finite number > 0)")
    if share.min_survivors < 3:
        problems.append(f"min_survivors={share.min_survivors} (expected >= 3)")
    if problems:
        raise AbortRound(
            f"round {round_id}: the server's user-level DP parameters are invalid: "
            + "; ".join(problems)
        )


def privatize(update: Update, share: pb.UserDpShare) -> Update:
    """The clipped, unweighted update the client masks (whole-update norm <= ``clip_norm``)."""
    return privatize_update(update, share.clip_norm)


def noisy_layout(layout: Layout, share: pb.UserDpShare) -> NoisyLayout:
    """The layout whose ``quantize`` adds this client's noise share before masking."""
    return NoisyLayout(
        layout.entries,
        layout.size,
        layout.digest,
        noise=share.noise,
        local_sigma=float(share.local_sigma),
    )
