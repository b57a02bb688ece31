"""Who masks with whom: the full graph, or a SecAgg+ Harary graph from a jointly drawn seed.

For large rounds each client masks with, and shares its secrets among, only ``k`` neighbours
(Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead"): the graph
is the Harary graph H(m, k) - position i is joined to positions i +- 1 .. i +- k/2 (mod m) - over a
random permutation of the members U1. Every client recomputes the whole graph from the seed and
checks its own neighbourhood instead of trusting the server.

Why the seed is drawn jointly. A seed computable from public data alone (round id, U1) lets the
server *grind*: it picks the round id and, by dropping advertisers, U1, so it can try candidates
offline until the permutation places a target client between colluders, whose pairwise masks and
shares it then owns. So the seed is a commit-reveal coin toss among the members:

* round 0: each client draws a fresh :data:`NONCE_BYTES`-byte nonce r_i from the OS CSPRNG and
  advertises :func:`nonce_commitment` ``c_i = SHA-256(label, round id, client id, r_i)`` under
  the same identity signature as its keys, so the server can neither read r_i (256 unknown bits)
  nor substitute c_i;
* graph-seed round: once the server has fixed U1 and every commitment in the key directory, each
  member signs that directory (:func:`keys.directory_payload`) and reveals r_i;
* every client checks that *every* member of U1 revealed a nonce matching its commitment and
  signed the same directory, then derives :func:`graph_seed` from all the nonces.

Any one honest member's nonce makes the seed uniform and unknown to the server until after U1 and
the round id are fixed; after the reveals the server can only continue or abort the round (an
honest client signs one directory per round and aborts unless all of U1 revealed, so it can
neither drop a member nor swap a nonce to re-roll). Grinding thus turns from free offline hashing
into whole aborted rounds, each visible to every client.

The permutation is a Fisher-Yates shuffle driven by SHAKE-256 of the seed with rejection sampling
(no modulo bias). The graph is public once fixed: SECURITY.md lists it among what the server
learns. The full graph (degree ``None``) ignores the seed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from fedvpa_secure.secagg.encoding import lp, lp_str, lp_strs

LABEL_GRAPH = b"fedvpa-secagg/v1/graph"
LABEL_NONCE_COMMITMENT = b"fedvpa-secagg/v1/graph-nonce-commitment"
NONCE_BYTES = 32


def nonce_commitment(round_id: str, client_id: str, nonce: bytes) -> bytes:
    """``c_i``: SHA-256 of the label, the round id, the client id and its graph nonce.

    Hiding because the nonce is 32 uniformly random bytes; binding because SHA-256 is collision
    resistant; the round and client ids stop a commitment from being replayed or copied.
    """
    return hashlib.sha256(
        LABEL_NONCE_COMMITMENT + lp_str(round_id) + lp_str(client_id) + lp(nonce)
    ).digest()


def graph_seed(round_id: str, nonces: Mapping[str, bytes]) -> bytes:
    """The graph seed: SHA-256 of the label, the round id, sorted U1 and every member's nonce.

    Args:
        round_id: the round id.
        nonces: every member of U1 -> its revealed graph nonce (U1 is this mapping's keys).
    """
    members = sorted(nonces)
    return hashlib.sha256(
        LABEL_GRAPH + lp_str(round_id) + lp_strs(members) + b"".join(lp(nonces[u]) for u in members)
    ).digest()


class _Xof:
    """Uniform integers from SHAKE-256(seed), extended on demand."""

    def __init__(self, seed: bytes) -> None:
        self._seed = seed
        self._buf = b""
        self._pos = 0

    def _take(self, n: int) -> bytes:
        if self._pos + n > len(self._buf):
            self._buf = hashlib.shake_256(self._seed).digest(max(4096, 2 * (self._pos + n)))
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def below(self, bound: int) -> int:
        bits = (bound - 1).bit_length()
        mask = (1 << bits) - 1
        while True:
            value = int.from_bytes(self._take(8), "big") & mask
            if value < bound:
                return value


def permutation(members: Sequence[str], seed: bytes) -> list[str]:
    """The seeded Fisher-Yates shuffle of the sorted members."""
    order = sorted(members)
    xof = _Xof(seed)
    for i in range(len(order) - 1, 0, -1):
        j = xof.below(i + 1)
        order[i], order[j] = order[j], order[i]
    return order


def _is_full(m: int, degree: int | None) -> bool:
    return degree is None or degree >= m - 1


def neighbour_count(m: int, degree: int | None) -> int:
    """How many neighbours each of ``m`` members has: the same for all, whatever the seed.

    So the threshold checks can run when U1 is fixed, before any nonce is revealed.
    """
    return m - 1 if _is_full(m, degree) else int(degree)  # type: ignore[arg-type]


def neighbourhoods(
    members: Sequence[str], degree: int | None, seed: bytes
) -> dict[str, frozenset[str]]:
    """Every member's neighbours (excluding itself).

    Args:
        members: the ids in U1.
        degree: the SecAgg+ degree k (even), or ``None`` for the full graph. A degree of at least
            ``len(members) - 1`` also gives the full graph.
        seed: :func:`graph_seed` of the round (ignored by the full graph).
    """
    ids = sorted(set(members))
    m = len(ids)
    if _is_full(m, degree):
        everyone = frozenset(ids)
        return {u: everyone - {u} for u in ids}
    if degree < 2 or degree % 2:  # type: ignore[operator]
        raise ValueError(f"a SecAgg+ degree is an even number >= 2, not {degree}")
    order = permutation(ids, seed)
    half = degree // 2  # type: ignore[operator]
    out: dict[str, frozenset[str]] = {}
    for pos, u in enumerate(order):
        out[u] = frozenset(order[(pos + d) % m] for d in range(-half, half + 1) if d != 0)
    return out


def neighbours_of(
    member: str, members: Sequence[str], degree: int | None, seed: bytes
) -> frozenset[str]:
    """One member's neighbourhood, as that member recomputes it to check the server."""
    ids = sorted(set(members))
    if member not in ids:
        raise ValueError(f"{member!r} is not a member")
    if _is_full(len(ids), degree):
        return frozenset(ids) - {member}
    return neighbourhoods(ids, degree, seed)[member]
