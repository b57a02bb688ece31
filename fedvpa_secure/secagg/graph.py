"""Who masks with whom: the full graph, or a SecAgg+ Harary graph from a public seed.

For large rounds each client masks with, and shares its secrets among, only ``k`` neighbours
(Bell et al. 2020, "Secure Single-Server Aggregation with (Poly)Logarithmic Overhead"): the graph
is the Harary graph H(m, k) - position i is joined to positions i +- 1 .. i +- k/2 (mod m) - over a
random permutation of the members. The permutation is drawn from a *public* seed,
``SHA-256(label, round id, sorted U1)``, so every client recomputes the whole graph and checks its
own neighbourhood instead of trusting the server, and the server cannot steer an honest client
into a neighbourhood of colluders.

The permutation is a Fisher-Yates shuffle driven by SHAKE-256 of the seed with rejection sampling
(no modulo bias). The graph is public: SECURITY.md lists it among what the server learns.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from fedvpa_secure.secagg.encoding import lp_str, lp_strs

LABEL_GRAPH = b"fedvpa-secagg/v1/graph"


def graph_seed(round_id: str, members: Sequence[str]) -> bytes:
    """The public seed: SHA-256 of the label, the round id and the sorted member ids."""
    return hashlib.sha256(LABEL_GRAPH + lp_str(round_id) + lp_strs(sorted(members))).digest()


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


def neighbourhoods(
    members: Sequence[str], degree: int | None, round_id: str
) -> dict[str, frozenset[str]]:
    """Every member's neighbours (excluding itself).

    Args:
        members: the ids in U1.
        degree: the SecAgg+ degree k (even), or ``None`` for the full graph. A degree of at least
            ``len(members) - 1`` also gives the full graph.
        round_id: the round id (part of the public seed).
    """
    ids = sorted(set(members))
    m = len(ids)
    if degree is None or degree >= m - 1:
        everyone = frozenset(ids)
        return {u: everyone - {u} for u in ids}
    if degree < 2 or degree % 2:
        raise ValueError("a SecAgg+ degree is an even number >= 2")
    order = permutation(ids, graph_seed(round_id, ids))
    half = degree // 2
    out: dict[str, frozenset[str]] = {}
    for pos, u in enumerate(order):
        out[u] = frozenset(order[(pos + d) % m] for d in range(-half, half + 1) if d != 0)
    return out


def neighbours_of(
    member: str, members: Sequence[str], degree: int | None, round_id: str
) -> frozenset[str]:
    """One member's neighbourhood, as that member recomputes it to check the server."""
    ids = sorted(set(members))
    if member not in ids:
        raise ValueError(f"{member!r} is not a member")
    if degree is None or degree >= len(ids) - 1:
        return frozenset(ids) - {member}
    return neighbourhoods(ids, degree, round_id)[member]
