"""Masking and unmasking: which streams a client adds and which the server removes.

A client u sends, modulo 2^32 (Bonawitz et al. 2017, Sec. 4 and Fig. 4 round 2)::

    y_u = x_u + PRG(b_u) + sum_{v in view(u)} sign(u, v) * PRG(s_uv)

with sign(u, v) = +1 if u < v else -1, so the pairwise masks of two clients that both survive
cancel in the sum. The server, after the unmask round, subtracts PRG(b_u) for every survivor u
and, for every dropped client d that a survivor v had masked with, subtracts that survivor's term
``sign(v, d) * PRG(s_vd)`` (it rebuilt d's mask key, so it can compute s_vd). The self mask b_u is
what keeps a late-arriving y_u of a client declared dead hidden: the server learns b_u only for
survivors.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from fedvpa_secure.secagg import kdf, keys, prg
from fedvpa_secure.secagg.prg import Stream


def sign(own: str, peer: str) -> int:
    """+1 if ``own`` sorts before ``peer`` else -1 (ids are compared as Python strings)."""
    if own == peer:
        raise ValueError("a client has no pairwise mask with itself")
    return 1 if own < peer else -1


def client_streams(
    own: str,
    self_seed: bytes,
    session_id: bytes,
    mask_private: keys.X25519PrivateKey,
    peer_mask_publics: Mapping[str, bytes],
) -> list[Stream]:
    """The streams a client adds to its quantised input: its self mask and one per peer in view."""
    streams: list[Stream] = [(kdf.self_mask_key(self_seed, session_id, own), 1)]
    for peer in sorted(peer_mask_publics):
        secret = keys.agree(mask_private, peer_mask_publics[peer])
        streams.append((kdf.pair_mask_key(secret, session_id, own, peer), sign(own, peer)))
    return streams


def server_streams(
    session_id: bytes,
    survivor_seeds: Mapping[str, bytes],
    dropped_keys: Mapping[str, bytes],
    dropped_partners: Mapping[str, Iterable[str]],
    mask_publics: Mapping[str, bytes],
) -> list[Stream]:
    """The streams the server subtracts to turn the sum of masked inputs into the plain sum.

    Args:
        session_id: the round's session id.
        survivor_seeds: survivor id -> its rebuilt self-mask seed b.
        dropped_keys: dropped id -> its rebuilt 32-byte mask private key.
        dropped_partners: dropped id -> the survivors that masked with it.
        mask_publics: every client's advertised mask public key.
    """
    streams: list[Stream] = [
        (kdf.self_mask_key(seed, session_id, owner), -1)
        for owner, seed in sorted(survivor_seeds.items())
    ]
    for dropped in sorted(dropped_keys):
        private = keys.mask_private_from_bytes(dropped_keys[dropped])
        for survivor in sorted(dropped_partners.get(dropped, ())):
            secret = keys.agree(private, mask_publics[survivor])
            key = kdf.pair_mask_key(secret, session_id, survivor, dropped)
            streams.append((key, -sign(survivor, dropped)))
    return streams


def apply(
    vector: np.ndarray, streams: list[Stream], *, algorithm: str, workers: int | None = None
) -> np.ndarray:
    """Add the streams into ``vector`` in place (mod 2^32) and return it."""
    prg.accumulate(vector, streams, algorithm=algorithm, workers=workers)
    return vector
