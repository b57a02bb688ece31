"""Membership inference attacks and their ROC statistics (pure numpy/scipy).

Two attacks, both scoring "how member-like" each target looks (higher = more likely IN):

* Loss threshold (Yeom, Giacomelli, Fredrikson, Jha 2018, "Privacy Risk in Machine Learning:
  Analyzing the Connection to Overfitting", section 3.2): a record (or a client) whose loss under
  the published model is low is guessed to be a member. The score is ``-loss``.
* Offline LiRA (Carlini, Chien, Nasr, Song, Terzis, Tramer 2022, "Membership Inference Attacks
  From First Principles", section 4.3 and algorithm 1, offline variant): for each target, fit a
  Gaussian to its logit-scaled confidence under a few reference models trained WITHOUT it
  (OUT models only), then score by the one-sided test ``Pr[Z <= observed]``, Z ~ N(mu_out,
  sigma_out^2). Per-example calibration removes the "some examples are just easy" confound the
  plain loss threshold suffers from. With few reference models the per-example variance is
  noisy, so the paper recommends one global variance (``fix_variance=True``, section 4.2).

ROC statistics are computed exactly from the scores: one ROC point per distinct score (tied
scores move TPR and FPR together, never one before the other), AUC is the Mann-Whitney statistic
with ties counted one half (equal to the trapezoid area under the exact ROC), and its standard
error is DeLong's (DeLong, DeLong, Clarke-Pearson 1988), which handles ties through mid-ranks.
Low-FPR operating points (Carlini et al. 2022 section 3 argue these matter most) are read off the
exact curve without interpolation: TPR at FPR <= target.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from privacy.errors import InvalidParameterError

DEFAULT_FPRS = (0.01, 0.001)


def _as_arrays(scores: Sequence[float], members: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(members).reshape(-1)
    if s.shape != y.shape:
        raise InvalidParameterError(f"{s.size} scores but {y.size} membership labels")
    if not np.all(np.isfinite(s)):
        raise InvalidParameterError("scores must be finite (no NaN or infinity)")
    if y.dtype != bool:
        if not np.all((y == 0) | (y == 1)):
            raise InvalidParameterError("membership labels must be booleans or 0/1")
        y = y.astype(bool)
    if y.all() or not y.any():
        raise InvalidParameterError(
            f"need both members and non-members, got {int(y.sum())} of {y.size} members"
        )
    return s, y


@dataclass(frozen=True)
class RocCurve:
    """The exact ROC curve of one attack: point i is "guess IN when score >= thresholds[i]".

    ``fpr[0] == tpr[0] == 0`` (threshold +inf) and the last point is (1, 1).
    """

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray
    n_members: int
    n_nonmembers: int

    def tpr_at_fpr(self, target: float) -> float:
        """Highest TPR among operating points with FPR <= ``target`` (no interpolation)."""
        if not 0.0 <= target <= 1.0:
            raise InvalidParameterError(f"target FPR must be in [0, 1], got {target}")
        ok = self.fpr <= target + 1e-12
        return float(self.tpr[ok].max())


def roc_curve(scores: Sequence[float], members: Sequence[bool]) -> RocCurve:
    """Exact ROC curve; tied scores form a single operating point.

    Args:
        scores: attack scores, higher means "more likely a member".
        members: true membership (True = IN).

    Raises:
        InvalidParameterError: mismatched lengths, non-finite scores, or a single class.
    """
    s, y = _as_arrays(scores, members)
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    # last index of each run of equal scores: the ROC moves only there
    last = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1]
    tp = np.cumsum(y_sorted)[last]
    fp = np.cumsum(~y_sorted)[last]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    return RocCurve(
        fpr=np.r_[0.0, fp / n_neg],
        tpr=np.r_[0.0, tp / n_pos],
        thresholds=np.r_[np.inf, s_sorted[last]],
        n_members=n_pos,
        n_nonmembers=n_neg,
    )


def _placements(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components: for each member, the share of non-members it beats
    (ties one half), and for each non-member, the share of members that beat it."""
    pos, neg = np.sort(s[y]), np.sort(s[~y])
    below = np.searchsorted(neg, s[y], side="left")
    tied = np.searchsorted(neg, s[y], side="right") - below
    v10 = (below + 0.5 * tied) / neg.size
    above = pos.size - np.searchsorted(pos, s[~y], side="right")
    tied_p = np.searchsorted(pos, s[~y], side="right") - np.searchsorted(pos, s[~y], side="left")
    v01 = (above + 0.5 * tied_p) / pos.size
    return v10, v01


def auc_score(scores: Sequence[float], members: Sequence[bool]) -> float:
    """Area under the ROC curve = P[score(member) > score(non-member)] + P[tie] / 2."""
    s, y = _as_arrays(scores, members)
    v10, _ = _placements(s, y)
    return float(v10.mean())


def auc_standard_error(scores: Sequence[float], members: Sequence[bool]) -> float:
    """DeLong's standard error of the AUC (DeLong et al. 1988, eq. for a single curve).

    Under "scores independent of membership" the AUC is near 1/2 and this is close to the
    Hanley-McNeil value sqrt((m + n + 1) / (12 m n)); the negative control uses it for its
    0.5 +- 3 SE band. Never below the Hanley-McNeil null value, so a degenerate sample (all
    scores tied) does not produce a zero-width band.
    """
    s, y = _as_arrays(scores, members)
    v10, v01 = _placements(s, y)
    m, n = v10.size, v01.size
    var = (np.var(v10, ddof=1) if m > 1 else 0.0) / m + (np.var(v01, ddof=1) if n > 1 else 0.0) / n
    null = (m + n + 1) / (12.0 * m * n)
    return float(math.sqrt(max(var, null)))


@dataclass(frozen=True)
class AttackResult:
    """Scores of one attack and its summary statistics."""

    name: str
    scores: np.ndarray
    members: np.ndarray
    roc: RocCurve
    auc: float
    auc_se: float

    def tpr_at(self, fpr: float) -> float:
        return self.roc.tpr_at_fpr(fpr)

    def summary(self, fprs: Sequence[float] = DEFAULT_FPRS) -> dict[str, float | int]:
        """JSON-ready numbers: ``auc``, ``auc_se``, ``tpr_at_fpr_<f>`` for each f."""
        out: dict[str, float | int] = {
            "auc": self.auc,
            "auc_se": self.auc_se,
            "n_members": self.roc.n_members,
            "n_nonmembers": self.roc.n_nonmembers,
        }
        for f in fprs:
            out[f"tpr_at_fpr_{f:g}"] = self.tpr_at(f)
        return out


def evaluate_attack(name: str, scores: Sequence[float], members: Sequence[bool]) -> AttackResult:
    """ROC, AUC and DeLong SE of one attack's scores."""
    s, y = _as_arrays(scores, members)
    return AttackResult(name, s, y, roc_curve(s, y), auc_score(s, y), auc_standard_error(s, y))


def loss_threshold_scores(losses: Sequence[float]) -> np.ndarray:
    """Yeom et al. (2018) loss attack: score = -loss (low loss looks like a member).

    Sweeping the threshold over these scores gives the attack's whole ROC; Yeom's fixed
    threshold (the mean training loss) is one point on it.
    """
    loss = np.asarray(losses, dtype=np.float64)
    if not np.all(np.isfinite(loss)):
        raise InvalidParameterError("losses must be finite")
    return -loss


def lira_offline_scores(
    target: Sequence[float],
    reference_out: np.ndarray | Sequence[Sequence[float]],
    *,
    fix_variance: bool = True,
    min_std: float = 1e-6,
) -> np.ndarray:
    """Offline LiRA (Carlini et al. 2022, algorithm 1 without IN models).

    Args:
        target: per-example confidence under the attacked model, logit-scaled and oriented so
            that members score HIGHER (for a Bradley-Terry reward model the signed logit
            ``y * (r(a) - r(b))`` is exactly log(p / (1 - p)) of the true label; the negative
            loss also works).
        reference_out: shape (n_reference_models, n_examples): the same confidence under
            reference models trained without the examples (OUT). At least two models.
        fix_variance: use one pooled variance for all examples (the paper's recommendation for
            few reference models); otherwise per-example variances.
        min_std: floor on the standard deviation, so a constant reference row cannot divide by 0.

    Returns:
        log Pr[Z <= target], Z ~ N(mu_out, sigma_out^2) per example: the one-sided likelihood
        ratio test statistic, on a log scale so that very confident members stay distinguishable.

    Raises:
        InvalidParameterError: wrong shapes, fewer than two reference models, non-finite input.
    """
    x = np.asarray(target, dtype=np.float64).reshape(-1)
    ref = np.asarray(reference_out, dtype=np.float64)
    if ref.ndim != 2 or ref.shape[1] != x.size:
        raise InvalidParameterError(
            f"reference_out must have shape (n_models, {x.size}), got {ref.shape}"
        )
    if ref.shape[0] < 2:
        raise InvalidParameterError("offline LiRA needs at least two OUT reference models")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(ref))):
        raise InvalidParameterError("LiRA inputs must be finite")
    mu = ref.mean(axis=0)
    if fix_variance:
        std = np.full_like(mu, float(np.sqrt(np.mean(ref.var(axis=0, ddof=1)))))
    else:
        std = ref.std(axis=0, ddof=1)
    std = np.maximum(std, min_std)
    return stats.norm.logcdf(x, loc=mu, scale=std)


def plot_roc(
    curves: Mapping[str, RocCurve],
    target: str | Path,
    title: str = "membership inference ROC",
) -> Path:
    """Write a two-panel ROC figure (linear and log-log, where low FPR is visible).

    Uses Matplotlib's object-oriented API with the Agg canvas, so it never changes the global
    backend (safe in tests and headless servers). Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not curves:
        raise InvalidParameterError("plot_roc needs at least one curve")
    fig = Figure(figsize=(10, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    lin, log = fig.subplots(1, 2)
    floor = 1.0 / max(max(c.n_nonmembers, c.n_members) for c in curves.values()) / 2
    for name, c in curves.items():
        area = float(np.trapezoid(c.tpr, c.fpr))
        lin.plot(c.fpr, c.tpr, drawstyle="steps-post", label=f"{name} (AUC {area:.3f})")
        log.plot(
            np.maximum(c.fpr, floor),
            np.maximum(c.tpr, floor),
            drawstyle="steps-post",
            label=name,
        )
    for ax in (lin, log):
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.grid(alpha=0.3)
    log.set_xscale("log")
    log.set_yscale("log")
    log.set_xlim(floor, 1)
    log.set_ylim(floor, 1)
    lin.set_title(title)
    log.set_title("log scale (low FPR)")
    lin.legend(fontsize="small", loc="lower right")
    out = Path(target)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


__all__ = [
    "DEFAULT_FPRS",
    "AttackResult",
    "RocCurve",
    "auc_score",
    "auc_standard_error",
    "evaluate_attack",
    "lira_offline_scores",
    "loss_threshold_scores",
    "plot_roc",
    "roc_curve",
]
