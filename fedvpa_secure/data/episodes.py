"""Episodes: disjoint (context, query) index sets drawn from one client's pairs.

Record-level DP treats an episode as the sampled unit (Opacus' "sample"), so a pair may belong
to at most one episode per pass: otherwise one pair could influence several clipped gradients
and the per-sample sensitivity bound would be wrong. The partition depends only on the number
of pairs and the generator, never on the data, so it leaks nothing about labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedvpa_secure.errors import ConfigError


@dataclass(frozen=True)
class Episode:
    """Indices into one client's pairs: context pairs infer z, query pairs are scored."""

    context: tuple[int, ...]
    query: tuple[int, ...]


def _check(name: str, value: int, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def partition_episodes(
    n_pairs: int, context_size: int, query_size: int, rng: np.random.Generator
) -> list[Episode]:
    """A fresh random partition of a client's pairs into disjoint episodes.

    Draws ``n_pairs // (context_size + query_size)`` episodes from one permutation; each pair is
    in at most one episode, context and query never share a pair, and the leftover pairs are
    unused this call (a new call draws a new permutation, so every pair gets used over time).

    Args:
        n_pairs: number of pairs the client holds.
        context_size: K_ctx, pairs per context (0 allowed: models without a latent).
        query_size: pairs scored per episode (>= 1).
        rng: the client's generator; the partition depends on nothing else.

    Raises:
        ConfigError: a size is out of range, or n_pairs < context_size + query_size (the
            client could not form a single episode).
    """
    _check("n_pairs", n_pairs, 0)
    _check("context_size", context_size, 0)
    _check("query_size", query_size, 1)
    size = int(context_size) + int(query_size)
    if n_pairs < size:
        raise ConfigError(
            f"a client with {n_pairs} pairs cannot form one episode of {context_size} context + "
            f"{query_size} query pairs; lower context/query sizes or give clients more pairs"
        )
    order = [int(i) for i in rng.permutation(int(n_pairs))]
    episodes = []
    for start in range(0, (n_pairs // size) * size, size):
        block = order[start : start + size]
        episodes.append(Episode(tuple(block[:context_size]), tuple(block[context_size:])))
    return episodes


def _check_eval_sizes(n_pairs: int, context_size: int) -> None:
    """An unseen user's context must leave at least one of its pairs to score."""
    _check("n_pairs", n_pairs, 0)
    _check("context_size", context_size, 0)
    if context_size >= n_pairs:
        raise ConfigError(
            f"an eval client with {n_pairs} pairs has none left to score after {context_size} "
            "context pairs; lower the context size or give eval clients more pairs"
        )


def eval_split(
    n_pairs: int, context_size: int, rng: np.random.Generator | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Context and query indices for an unseen user: K_ctx pairs as context, the rest as queries.

    With ``rng`` the context is a random K_ctx subset (queries keep their original order);
    without it, the user's first K_ctx pairs, which is what a deployed user would have.

    Raises:
        ConfigError: context_size out of range or leaving no query pair.
    """
    _check_eval_sizes(n_pairs, context_size)
    if rng is None:
        context = tuple(range(int(context_size)))
    else:
        context = tuple(
            sorted(int(i) for i in rng.choice(int(n_pairs), int(context_size), replace=False))
        )
    chosen = set(context)
    query = tuple(i for i in range(int(n_pairs)) if i not in chosen)
    return context, query


def cross_fit_splits(
    n_pairs: int, context_size: int, rng: np.random.Generator
) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Score EVERY pair of an unseen user once, each with a context disjoint from it.

    The pairs are dealt at random into ``F = ceil(n / (n - K_ctx))`` folds; fold f is scored
    with z inferred from K_ctx pairs drawn from the other folds. A long context then costs no
    scored pairs: a user with 320 pairs and K_ctx = 256 has all 320 pairs scored (five folds of
    64) instead of the 64 that a single split leaves. Depends only on the sizes and ``rng``.

    Raises:
        ConfigError: context_size out of range or leaving no query pair.
    """
    _check_eval_sizes(n_pairs, context_size)
    n, k = int(n_pairs), int(context_size)
    folds = np.array_split(rng.permutation(n), math.ceil(n / (n - k)))
    splits = []
    for fold in folds:
        others = np.setdiff1d(np.arange(n), fold)
        context = rng.choice(others, k, replace=False) if k else others[:0]
        splits.append((tuple(sorted(int(i) for i in context)), tuple(sorted(int(i) for i in fold))))
    return splits
