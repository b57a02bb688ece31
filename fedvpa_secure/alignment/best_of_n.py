"""Best-of-N: pick the candidate a reward model scores highest, and judge picks by a gold reward.

Win rates are per prompt: against another selector, 1 when the gold reward prefers this pick,
0 when it prefers the other's, 1/2 when both picked the same candidate or the gold ties; against
a random candidate, the share of the N candidates the pick beats (itself counting as a tie), which
is the expected win over a uniformly random pick. Intervals are percentile bootstraps over prompts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fedvpa_secure.errors import DataError

BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class WinRate:
    """A mean per-prompt win rate with its bootstrap interval."""

    mean: float
    low: float
    high: float
    prompts: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def score_grid(
    score: Callable[..., np.ndarray],
    prompts: Sequence[str],
    candidates: Sequence[Sequence[str]],
    **who: Any,
) -> np.ndarray:
    """Rewards of every candidate, shape (prompts, N), from one batched ``score(prompts,
    responses, **who)`` call (``who``: a :class:`~fedvpa_secure.reward_model.RewardModel`'s
    profile, prototype or user type)."""
    widths = {len(c) for c in candidates}
    if len(widths) != 1 or len(prompts) != len(candidates):
        raise DataError("every prompt needs the same number of candidates")
    n = widths.pop()
    flat_prompts = [p for p in prompts for _ in range(n)]
    flat = [c for group in candidates for c in group]
    return np.asarray(score(flat_prompts, flat, **who), dtype=np.float64).reshape(len(prompts), n)


def best(scores: np.ndarray) -> np.ndarray:
    """The index of the highest-scored candidate per prompt (the first on ties)."""
    return np.argmax(scores, axis=1)


def wins_against(gold: np.ndarray, pick: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per prompt: 1 if gold prefers ``pick``'s candidate to ``other``'s, 1/2 on a tie, else 0."""
    rows = np.arange(len(gold))
    mine, theirs = gold[rows, pick], gold[rows, other]
    return np.where(mine > theirs, 1.0, np.where(mine < theirs, 0.0, 0.5))


def wins_against_random(gold: np.ndarray, pick: np.ndarray) -> np.ndarray:
    """Per prompt: the expected win of ``pick`` over a uniformly random candidate."""
    mine = gold[np.arange(len(gold)), pick][:, None]
    return ((mine > gold).sum(axis=1) + 0.5 * (mine == gold).sum(axis=1)) / gold.shape[1]


def bootstrap(values: np.ndarray, seed: int = 0) -> WinRate:
    """The mean of per-prompt values with a percentile bootstrap interval over prompts."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise DataError("no prompts to compute a win rate over")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))
    means = values[idx].mean(axis=1)
    tail = (1.0 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return WinRate(float(values.mean()), float(low), float(high), len(values))
