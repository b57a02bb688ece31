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
from fedvpa_secure.train.aggregation import MAX_CLIENT_WEIGHT, Update
from fedvpa_secure.train.dp_config import NOISE_KINDS
from fedvpa_secure.train.secure_aggregation import NoisyLayout, privatize_update


def check_share(share: pb.UserDpShare, round_id: str) -> None:
    """Refuse malformed noise parameters before any data is touched (the client sits it out).

    Whether a well-formed share is noisy enough is the policy's question
    (:func:`fedvpa_secure.client.policy.check_user_dp`); this catches a missing or non-finite
    value that would silently release an un-noised update.
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


def check_weight(weight: float) -> None:
    """A weight outside [0, MAX_CLIENT_WEIGHT] is never masked or sent (the server cannot see
    inside the mask, so the client is where an honest weight is enforced)."""
    if not (math.isfinite(weight) and 0.0 <= weight <= MAX_CLIENT_WEIGHT):
        raise AbortRound(
            f"this client's update weight {weight!r} is outside [0, {MAX_CLIENT_WEIGHT}]; not sent"
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
