"""The DP plug of the leakage harness: user-level DP-FedAvg as an aggregator, and mutants.

User-level DP (PRIVACY.md section 2) is DP-FedAvg (McMahan, Ramage, Talwar, Zhang 2018,
"Learning Differentially Private Recurrent Language Models", algorithm 1): every client's whole
round update is clipped to L2 norm S, the clipped updates are summed, and Gaussian noise
N(0, (z S)^2 I) is added to the sum. The server divides by the (public) participant count. In the
deployed system the noise is added in shares before secure aggregation; the distribution of the
noisy sum the server sees is the same, which is all the empirical audit observes, so the harness
adds it here through the learner's :data:`Aggregator` seam without touching the round logic.

The mixture prior's sufficient statistics are a separate release (PRIVACY.md section 1); this
harness does not release them under DP (the prior stays at its initial value), so the only thing
that leaves a client is the clipped model delta and the audited mechanism is exactly the one
accounted for.

Record-level DP-SGD belongs to the learner (``dp_local`` / ``dp_round``): the harness hands it
the same :class:`DPSettings` through ``ExperimentConfig.dp`` (:func:`record_dp_config`), and the
accountant epsilon is the worst client's ledger epsilon. Record-level mutants are passed to the
learner's test-only knob :attr:`~fedvpa_secure.train.dp_config.DPConfig.mutant`.

Test-only mutants (``DPSettings.mutant``) reproduce two classic DP bugs so that the audit can be
shown to catch them (Tramer, Terzis, Steinke, Song, Jagielski, Carlini 2022, "Debugging
Differential Privacy: A Case Study for Privacy Auditing"):

* ``zero-noise``: no noise is added, while the ledger still records sigma = z;
* ``no-clipping``: updates are not clipped, while the noise is still scaled to the nominal S.

At user level the mechanism is the whole-update clip and noise of :class:`UserDPAggregator`; at
record level it is the per-episode clip and noise of the learner's DP-SGD (Opacus).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedvpa_secure.errors import ConfigError
from fedvpa_secure.train.aggregation import DELTA_PREFIX, WEIGHT, Update
from fedvpa_secure.train.dp_config import DEFAULT_MAX_NOISE_STEP

log = logging.getLogger(__name__)

DP_LEVELS = ("user", "record")
MUTANTS = ("zero-noise", "no-clipping")


@dataclass(frozen=True)
class DPSettings:
    """How the audited run is made private, and what its ledger claims.

    Attributes:
        level: "user" (DP-FedAvg over clients) or "record" (client DP-SGD, the learner's).
        clipping_norm: S, the L2 bound on one unit's contribution.
        noise_multiplier: z; the noise standard deviation is z * S. Set it directly or leave it
            None and give ``target_epsilon`` to calibrate it for the run's rounds.
        target_epsilon: the epsilon to calibrate z for (ignored when z is given).
        delta: the delta of the claim.
        accountant: accountant for the claim (``rdp``, ``prv``, ``pld``, ``dpa-rdp``).
        prior_noise_multiplier: record level only: noise multiplier of the learner's prior
            statistics release (composed into the same client budget); None calibrates it to a
            fixed share of the budget (``dp_config.resolve_prior_noise``).
        learning_rate: record level only: the learner's DP learning rate
            (``DPConfig.learning_rate``; None keeps the run's learning rate).
        max_noise_step: record level only: cap on the per-step noise std ``lr * z * C / B``
            (``DPConfig.max_noise_step``, same default); None removes the cap.
        mutant: TEST ONLY: "zero-noise" or "no-clipping" breaks the mechanism while the ledger
            keeps claiming the honest guarantee. Never set it outside tests and audits.
    """

    level: str = "user"
    clipping_norm: float = 0.05
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    accountant: str = "pld"
    prior_noise_multiplier: float | None = None  # None: calibrated share of the budget
    learning_rate: float | None = None
    max_noise_step: float | None = DEFAULT_MAX_NOISE_STEP
    mutant: str | None = None

    def __post_init__(self) -> None:
        if self.level not in DP_LEVELS:
            raise ConfigError(f"dp level={self.level!r} is invalid: expected one of {DP_LEVELS}")
        if not (math.isfinite(self.clipping_norm) and self.clipping_norm > 0):
            raise ConfigError(f"clipping_norm={self.clipping_norm!r} is invalid: expected > 0")
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ConfigError("DP needs a noise_multiplier or a target_epsilon to calibrate it")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ConfigError(f"noise_multiplier={self.noise_multiplier!r}: expected > 0")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ConfigError(f"target_epsilon={self.target_epsilon!r}: expected > 0")
        if not 0 < self.delta < 1:
            raise ConfigError(f"delta={self.delta!r} is invalid: expected in (0, 1)")
        if self.mutant is not None and self.mutant not in MUTANTS:
            raise ConfigError(f"mutant={self.mutant!r} is invalid: expected one of {MUTANTS}")

    def resolved_noise(self, rounds: int, sample_rate: float = 1.0) -> float:
        """z, calibrated to ``target_epsilon`` over ``rounds`` when not given."""
        if self.noise_multiplier is not None:
            return float(self.noise_multiplier)
        from privacy.accountants import calibrate_noise_multiplier

        return calibrate_noise_multiplier(
            target_epsilon=float(self.target_epsilon),
            delta=self.delta,
            sample_rate=sample_rate,
            steps=rounds,
            accountant=self.accountant,
        )


def record_dp_config(settings: DPSettings) -> Any:
    """The learner's record-level DP-SGD configuration (``ExperimentConfig.dp``) for ``settings``.

    Record-level DP is the learner's own DP-SGD (per-episode clipping, Poisson sampling, client
    ledgers); the harness only passes the clipping norm, the noise (or target epsilon), delta,
    accountant and (TEST ONLY) mutant through this one parameter. A mutant breaks the learner's
    mechanism (``DPConfig.mutant``) while its client ledgers keep the honest claim.
    """
    from fedvpa_secure.train.dp_config import DPConfig

    accountant = settings.accountant if settings.accountant in ("rdp", "prv") else "prv"
    return DPConfig(
        target_epsilon=None if settings.noise_multiplier is not None else settings.target_epsilon,
        noise_multiplier=settings.noise_multiplier,
        delta=settings.delta,
        max_grad_norm=settings.clipping_norm,
        accountant=accountant,
        prior_noise_multiplier=settings.prior_noise_multiplier,
        learning_rate=settings.learning_rate,
        max_noise_step=settings.max_noise_step,
        mutant=settings.mutant,
    )


class UserDPAggregator:
    """DP-FedAvg sum: clip each client's unweighted delta to S, sum, add N(0, (z S)^2).

    Also keeps the server's ledger: one :class:`SampledGaussianEvent` (sample rate 1, every
    client participates) per round with the CLAIMED z, whatever a mutant does.
    """

    def __init__(
        self,
        settings: DPSettings,
        noise_multiplier: float,
        seed: int,
        ledger_path: Path | None = None,
        rounds: int = 1,
    ) -> None:
        self.settings = settings
        self.z = float(noise_multiplier)
        self.rng = np.random.default_rng([seed, 0xD9])
        self.round = 0
        self.max_norm_seen = 0.0
        self.accountant = None
        if ledger_path is not None:
            from privacy.accountants import compute_epsilon
            from privacy.budget import BudgetPolicy, PersistentAccountant
            from privacy.events import SampledGaussianEvent

            total = compute_epsilon(
                SampledGaussianEvent(self.z, 1.0, rounds), settings.delta, settings.accountant
            )
            ledger_path.parent.mkdir(parents=True, exist_ok=True)
            if ledger_path.exists():
                ledger_path.unlink()
            self.accountant = PersistentAccountant.open(
                ledger_path,
                run_id=f"leakage-{seed}",
                actor="server",
                unit="user",
                budget=BudgetPolicy(total * 1.001 + 1e-9, settings.delta),
                accountant=settings.accountant,
            )

    def __call__(self, updates: Sequence[Update]) -> Update:
        s = self.settings
        names = sorted(k for k in updates[0] if k.startswith(DELTA_PREFIX))
        total = {k: np.zeros_like(np.asarray(updates[0][k], dtype=np.float64)) for k in names}
        for u in updates:
            w = float(np.asarray(u[WEIGHT]).reshape(-1)[0])
            delta = {k: np.asarray(u[k], dtype=np.float64) / w for k in names}
            norm = math.sqrt(sum(float(np.sum(v * v)) for v in delta.values()))
            self.max_norm_seen = max(self.max_norm_seen, norm)
            scale = (
                1.0 if s.mutant == "no-clipping" else min(1.0, s.clipping_norm / max(norm, 1e-12))
            )
            for k in names:
                total[k] += scale * delta[k]
        std = 0.0 if s.mutant == "zero-noise" else self.z * s.clipping_norm
        if std > 0:
            for k in names:
                total[k] += self.rng.normal(0.0, std, size=total[k].shape)
        if self.accountant is not None:
            from privacy.events import SampledGaussianEvent

            self.accountant.record(
                SampledGaussianEvent(self.z, 1.0, 1),
                round=self.round,
                clipping_norm=s.clipping_norm,
                participants=len(updates),
            )
        self.round += 1
        return {**total, WEIGHT: np.array([float(len(updates))])}


def claimed_epsilon(settings: DPSettings, noise_multiplier: float, rounds: int) -> float:
    """The epsilon the ledger claims for ``rounds`` DP-FedAvg rounds at sample rate 1."""
    from privacy.accountants import compute_epsilon
    from privacy.events import SampledGaussianEvent

    return compute_epsilon(
        SampledGaussianEvent(noise_multiplier, 1.0, rounds), settings.delta, settings.accountant
    )


__all__ = [
    "DP_LEVELS",
    "MUTANTS",
    "DPSettings",
    "UserDPAggregator",
    "claimed_epsilon",
    "record_dp_config",
]
