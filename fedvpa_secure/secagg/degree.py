"""How large a SecAgg+ degree must be: Bell et al.'s failure bound, for clients and server alike.

A Harary graph of degree ``k`` over a random permutation fails in two ways that expose an honest
client: a neighbourhood holding the neighbourhood threshold of colluders, or the honest
survivors' graph splitting. :func:`degree_failure_bound` union-bounds both;
:func:`min_secure_degree` is the smallest even ``k`` that keeps it below ``2^-security_bits``.
The server's default degree (:func:`fedvpa_secure.secagg.config.default_degree`) and every
client's policy check (:func:`fedvpa_secure.client.policy.check_secagg`) use the same bound with
the same default assumptions, so an honest server's default round passes a default policy.
"""

from __future__ import annotations

import math

DEFAULT_COLLUDING_FRACTION = 1.0 / 3.0
"""The share of a round's clients assumed to collude with the server (the hardened threshold
``floor(2n/3)+1`` tolerates fewer than n/3)."""
DEFAULT_DROPOUT_FRACTION = 0.1
"""The share of a round's clients assumed to drop out before unmasking."""
DEFAULT_SECURITY_BITS = 40
"""Statistical security: the graph may fail with probability at most 2^-40."""


def _hypergeometric_tail(population: int, marked: int, draws: int, at_least: int) -> float:
    """P[X >= at_least] for X ~ Hypergeometric(population, marked, draws)."""
    total = math.comb(population, draws)
    return (
        sum(
            math.comb(marked, i) * math.comb(population - marked, draws - i)
            for i in range(max(at_least, 0), min(marked, draws) + 1)
        )
        / total
    )


def degree_failure_bound(
    n: int, degree: int, colluding_fraction: float, dropout_fraction: float, hardened: bool
) -> float:
    """A union bound on the chance that a SecAgg+ Harary graph over a random permutation fails.

    Two failures expose an honest client (Bell et al. 2020, Sec. 3): (a) its neighbourhood holds
    at least the neighbourhood threshold of colluders, who then hold shares of both its secrets;
    (b) the honest survivors' graph splits, so the server learns a partial sum. A client's
    ``k`` neighbours are a uniformly random ``k``-subset of the others (a hypergeometric tail,
    union-bounded over the ``n`` clients). H(n, k) is a ring in which each position reaches
    ``k/2`` on either side, so it splits only where two runs of ``k/2`` consecutive positions
    are all colluding or dropped: at most ``C(n, 2)`` pairs of runs, each all-bad with
    probability at most ``beta^k`` (drawing without replacement only lowers it).
    """
    from fedvpa_secure.secagg.config import default_threshold  # config imports this module

    bad_clients = math.floor(colluding_fraction * n)
    group = degree + 1
    t_nbr = max(default_threshold(group, hardened), 3)
    isolate = n * _hypergeometric_tail(n - 1, bad_clients, degree, t_nbr)
    beta = min(1.0, colluding_fraction + dropout_fraction)
    split = math.comb(n, 2) * beta ** (2 * (degree // 2))
    return isolate + split


def min_secure_degree(
    n: int,
    colluding_fraction: float,
    dropout_fraction: float,
    security_bits: int,
    hardened: bool = True,
) -> int | None:
    """The smallest even SecAgg+ degree whose :func:`degree_failure_bound` is ``<= 2^-sigma``;
    ``None`` when only the full graph qualifies."""
    target = 2.0 ** (-security_bits)
    for k in range(2, n - 1, 2):
        if degree_failure_bound(n, k, colluding_fraction, dropout_fraction, hardened) <= target:
            return k
    return None
