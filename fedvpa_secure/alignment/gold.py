"""Gold rewards for best-of-N: one reward per user type, fitted with the TRUE type and the TRUE
source domain on pairs the federation never trained on (the gold-reward protocol of Gao et al.,
2022, scaled down to what runs offline on two cores).

Each gold reward is linear Bradley-Terry on the frozen backbone's embedding, with separate weights
for the prompt's HH collection (harmless-base red-team prompts, helpful prompts): the "true subset
gate" ceiling of the learner issue, which no federated model can see. It shares the frozen MiniLM
features with the models it judges, so it measures how well a model picks what its type prefers
in that feature space, not absolute response quality; its held-out accuracy is reported with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score

from fedvpa_secure.data.dialogue import first_human_turn
from fedvpa_secure.data.protocols import CHOSEN, Candidate, pair_domain
from fedvpa_secure.data.split import is_eval_prompt
from fedvpa_secure.data.types import join_prompt_response
from fedvpa_secure.errors import DataError

Embed = Callable[[Sequence[str]], np.ndarray]
REGULARISATION_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
"""Inverse regularisation strengths the gold's cross-validation chooses from."""
HOLDOUT_SALT = 7919
"""Seed of the prompt hash that holds out a share of the gold pairs to measure the gold itself."""


@dataclass(frozen=True)
class GoldReward:
    """Linear rewards w[type, domain] . e(prompt + response), and how right they are."""

    weights: Mapping[tuple[str, str], np.ndarray]
    # type -> {domain: held-out accuracy, f"{domain}_pairs": how many held-out pairs,
    #          f"{domain}_C": the inverse regularisation cross-validation chose}
    held_out: Mapping[str, Mapping[str, float]]

    @property
    def user_types(self) -> list[str]:
        return sorted({t for t, _ in self.weights})

    def score(self, embeddings: np.ndarray, domains: Sequence[str], user_type: str) -> np.ndarray:
        """Gold rewards of embedded responses; ``domains[i]`` is response i's prompt collection."""
        if len(domains) != len(embeddings):
            raise DataError(f"{len(embeddings)} embeddings but {len(domains)} domains")
        out = np.empty(len(embeddings), dtype=np.float64)
        for i, domain in enumerate(domains):
            key = (user_type, domain)
            if key not in self.weights:
                raise DataError(f"no gold reward for type {user_type!r} in domain {domain!r}")
            out[i] = float(embeddings[i] @ self.weights[key])
        return out


def _preferred_differences(
    candidates: Sequence[Candidate], user_type: str, embed: Embed
) -> np.ndarray:
    """e(preferred) - e(other) for each candidate pair, as ``user_type`` labels it."""
    chosen = embed([join_prompt_response(c.raw.prompt, c.raw.chosen) for c in candidates])
    rejected = embed([join_prompt_response(c.raw.prompt, c.raw.rejected) for c in candidates])
    sign = np.array([1.0 if c.labels[user_type] == CHOSEN else -1.0 for c in candidates])
    return (chosen - rejected) * sign[:, None]


def _fit_bradley_terry(
    diffs: np.ndarray, openers: Sequence[str], grid: Sequence[float]
) -> tuple[np.ndarray, float]:
    """A logistic Bradley-Terry model without intercept (symmetrised), its inverse
    regularisation chosen by 5-fold cross-validation grouped by conversation opener: a few
    hundred pairs in 384 dimensions overfit at sklearn's default (measured on p3's harmless-base
    pairs: 0.54 at C=1, 0.58 at C=0.01)."""
    x = np.concatenate([diffs, -diffs])
    y = np.concatenate([np.ones(len(diffs)), np.zeros(len(diffs))])
    groups = [*openers, *openers]
    folds = min(5, len(set(openers)))
    scores = {
        c: cross_val_score(
            LogisticRegression(fit_intercept=False, C=c, max_iter=5000),
            x,
            y,
            groups=groups,
            cv=GroupKFold(folds),
        ).mean()
        for c in grid
    }
    best_c = max(grid, key=lambda c: (scores[c], -c))  # ties: the stronger regularisation
    fit = LogisticRegression(fit_intercept=False, C=best_c, max_iter=5000).fit(x, y)
    return fit.coef_[0].astype(np.float64), best_c


def fit_gold(
    candidates: Sequence[Candidate],
    user_types: Sequence[str],
    embed: Embed,
    holdout_fraction: float = 0.2,
    grid: Sequence[float] = REGULARISATION_GRID,
) -> GoldReward:
    """Fit one gold reward per (type, domain) and measure it on prompts it did not see.

    Raises:
        DataError: no pair of a known HH collection, or a (type, domain) with fewer than 20
            training pairs or no held-out pair.
    """
    weights: dict[tuple[str, str], np.ndarray] = {}
    held_out: dict[str, dict[str, float]] = {}
    domains = sorted({pair_domain(c.raw) for c in candidates} - {""})
    if not domains:
        raise DataError("no harmless or helpful HH-RLHF pair to fit gold rewards on")
    for user_type in user_types:
        held_out[user_type] = {}
        for domain in domains:
            mine = [c for c in candidates if pair_domain(c.raw) == domain and user_type in c.labels]
            held = [is_eval_prompt(c.raw.prompt, holdout_fraction, HOLDOUT_SALT) for c in mine]
            test = [c for c, h in zip(mine, held, strict=True) if h]
            train = [c for c, h in zip(mine, held, strict=True) if not h]
            if len(train) < 20 or not test:
                raise DataError(
                    f"{len(train)} gold training pairs and {len(test)} held-out pairs for type "
                    f"{user_type!r} in domain {domain!r} (need >= 20 and >= 1); give an "
                    "evaluation folder with more pairs of that collection"
                )
            diffs = _preferred_differences(train, user_type, embed)
            openers = [first_human_turn(m.raw.prompt) for m in train]
            w, chosen_c = _fit_bradley_terry(diffs, openers, grid)
            weights[(user_type, domain)] = w
            held_out[user_type][f"{domain}_C"] = chosen_c
            correct = _preferred_differences(test, user_type, embed) @ w > 0
            held_out[user_type][domain] = float(np.mean(correct))
            held_out[user_type][f"{domain}_pairs"] = float(len(test))
    return GoldReward(weights, held_out)
