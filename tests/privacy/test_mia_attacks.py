"""Membership inference math: exact ROC with ties, AUC and its standard error, both attacks.

Controls: pure-noise scores give AUC within a few standard errors of 1/2; a planted signal is
found; LiRA's per-example calibration beats the plain loss threshold when difficulty varies.
"""

from __future__ import annotations

import numpy as np
import pytest

from privacy.errors import InvalidParameterError
from privacy.mia import (
    auc_score,
    auc_standard_error,
    evaluate_attack,
    lira_offline_scores,
    loss_threshold_scores,
    plot_roc,
    roc_curve,
)


def _brute_auc(scores: np.ndarray, members: np.ndarray) -> float:
    pos, neg = scores[members], scores[~members]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (pos.size * neg.size))


def test_roc_by_hand_with_ties() -> None:
    scores = [0.9, 0.8, 0.8, 0.5, 0.1]
    members = [True, True, False, False, True]
    roc = roc_curve(scores, members)
    # a tie between a member and a non-member moves TPR and FPR in one step
    np.testing.assert_allclose(roc.tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1])
    np.testing.assert_allclose(roc.fpr, [0, 0, 0.5, 1, 1])
    assert auc_score(scores, members) == pytest.approx(float(np.trapezoid(roc.tpr, roc.fpr)))
    assert roc.tpr_at_fpr(0.0) == pytest.approx(1 / 3)
    assert roc.tpr_at_fpr(0.49) == pytest.approx(1 / 3)
    assert roc.tpr_at_fpr(0.5) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_brute_force_on_heavily_tied_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 4, size=60).astype(float)
    members = rng.random(60) < 0.5
    roc = roc_curve(scores, members)
    assert auc_score(scores, members) == pytest.approx(_brute_auc(scores, members))
    assert float(np.trapezoid(roc.tpr, roc.fpr)) == pytest.approx(_brute_auc(scores, members))
    assert len(roc.thresholds) == len(np.unique(scores)) + 1


def test_all_tied_scores_give_half_and_a_non_zero_error() -> None:
    members = np.arange(40) % 2 == 0
    assert auc_score(np.zeros(40), members) == 0.5
    assert auc_standard_error(np.zeros(40), members) > 0.05
    assert roc_curve(np.zeros(40), members).tpr_at_fpr(0.5) == 0.0


def test_noise_scores_stay_within_three_standard_errors() -> None:
    # Negative control of the math: scores independent of membership.
    rng = np.random.default_rng(0)
    outside = 0
    for _ in range(200):
        members = rng.random(200) < 0.5
        scores = rng.normal(size=200)
        auc, se = auc_score(scores, members), auc_standard_error(scores, members)
        outside += abs(auc - 0.5) > 3 * se
    assert outside <= 3  # ~0.27% expected


def test_delong_error_matches_the_spread_under_a_signal() -> None:
    rng = np.random.default_rng(1)
    aucs, ses = [], []
    for _ in range(300):
        members = rng.random(300) < 0.5
        scores = rng.normal(size=300) + 0.8 * members
        aucs.append(auc_score(scores, members))
        ses.append(auc_standard_error(scores, members))
    assert np.mean(ses) == pytest.approx(np.std(aucs), rel=0.2)


def test_planted_signal_is_detected_at_low_fpr() -> None:
    rng = np.random.default_rng(2)
    members = rng.random(2000) < 0.5
    losses = rng.exponential(1.0, size=2000)
    losses[members] *= 0.05  # members are fitted
    result = evaluate_attack("loss", loss_threshold_scores(losses), members)
    assert result.auc > 0.8
    assert result.auc - 3 * result.auc_se > 0.5
    summary = result.summary()
    assert summary["tpr_at_fpr_0.01"] > 0.05
    assert set(summary) >= {"auc", "auc_se", "tpr_at_fpr_0.01", "tpr_at_fpr_0.001"}


def test_lira_calibrates_per_example_difficulty() -> None:
    # Each example has its own difficulty; membership adds a small shift. The loss threshold is
    # swamped by the difficulty spread, offline LiRA subtracts it using OUT reference models.
    rng = np.random.default_rng(3)
    n, n_ref = 1000, 8
    difficulty = rng.normal(0, 3, size=n)
    members = rng.random(n) < 0.5
    target = difficulty + 1.0 * members + rng.normal(0, 0.3, size=n)
    reference = difficulty[None, :] + rng.normal(0, 0.3, size=(n_ref, n))
    lira = evaluate_attack("lira", lira_offline_scores(target, reference), members)
    naive = evaluate_attack("loss", loss_threshold_scores(-target), members)
    assert lira.auc > 0.9 > naive.auc + 0.2
    per_example = lira_offline_scores(target, reference, fix_variance=False)
    assert auc_score(per_example, members) > 0.85


def test_lira_on_noise_is_chance() -> None:
    rng = np.random.default_rng(4)
    members = rng.random(400) < 0.5
    scores = lira_offline_scores(rng.normal(size=400), rng.normal(size=(4, 400)))
    assert abs(auc_score(scores, members) - 0.5) < 3 * auc_standard_error(scores, members)


@pytest.mark.parametrize(
    ("scores", "members"),
    [([0.1, 0.2], [True]), ([0.1, float("nan")], [True, False]), ([0.1, 0.2], [True, True])],
)
def test_bad_input_raises(scores, members) -> None:
    with pytest.raises(InvalidParameterError):
        roc_curve(scores, members)


def test_lira_needs_two_reference_models() -> None:
    with pytest.raises(InvalidParameterError, match="two"):
        lira_offline_scores([0.0, 1.0], [[0.0, 1.0]])
    with pytest.raises(InvalidParameterError, match="shape"):
        lira_offline_scores([0.0, 1.0], [[0.0], [1.0]])


def test_plot_roc_writes_a_png(tmp_path) -> None:
    rng = np.random.default_rng(5)
    members = rng.random(100) < 0.5
    curves = {"noise": roc_curve(rng.normal(size=100), members)}
    path = plot_roc(curves, tmp_path / "sub" / "roc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
