"""User-level distributed DP for the gRPC server (PRIVACY.md section 2).

The in-process :class:`~fedvpa_secure.train.secure_aggregation.SecureAggregator` and this server
share every piece of math: :func:`user_dp_round_config` gives the round's quantisation, raised
threshold and calibrated :class:`~privacy.distributed.DistributedNoisePlan`,
:func:`round_privacy_event` the ledger event (and the ``t_min`` check). What this module adds is
the server's half of the wire protocol:

* :meth:`ServerUserDP.round_config` for the coordinator (refuses a round that samples fewer
  than ``t_min`` clients);
* :meth:`ServerUserDP.share_message` -- what each client needs to clip and add its noise share
  (clip norm, noise kind, per-client sigma; the quantisation travels in the SecAggConfig);
* :meth:`ServerUserDP.before_unmask` -- called once the survivor set U3 is fixed and BEFORE any
  unmask request leaves the server: a round below ``t_min`` is aborted, and the round's
  :class:`~privacy.DistributedNoiseEvent` is written to the server ledger (write-ahead: a crash
  after it over-counts, never under-counts).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fedvpa_secure.errors import AbortRound, BudgetExceededError, ConfigError
from fedvpa_secure.proto import federation_pb2 as pb
from fedvpa_secure.secagg import SecAggConfig
from fedvpa_secure.server.settings import DpSettings
from fedvpa_secure.train.aggregation import WEIGHT
from fedvpa_secure.train.dp_config import UserDPConfig
from fedvpa_secure.train.secure_aggregation import (
    gaussian_multiplier,
    round_privacy_event,
    user_dp_round_config,
)
from privacy import BudgetExceeded, PersistentAccountant, SampledGaussianEvent, compute_epsilon
from privacy.distributed import DistributedNoisePlan

log = logging.getLogger("fedvpa_secure.server")

Spec = Mapping[str, tuple[tuple[int, ...], str]]


def user_dp_config(dp: DpSettings, *, sample_rate: float, rounds: int) -> UserDPConfig:
    """The learner's :class:`UserDPConfig` from ``server.toml``'s ``[dp]`` section.

    With ``noise_multiplier`` z the target is the epsilon that ``rounds`` Poisson-subsampled
    Gaussian rounds of multiplier z spend (the plan then reaches at least z), so one calibration
    routine serves both ways of asking.

    Raises:
        ConfigError: user-level DP is off, or the run could not finish within ``epsilon_max``.
    """
    if not dp.user_level:
        raise ConfigError("user-level DP is off: set dp.target_epsilon or dp.noise_multiplier")
    target = dp.target_epsilon
    if target is None:
        event = SampledGaussianEvent(float(dp.noise_multiplier), sample_rate, rounds)  # type: ignore[arg-type]
        target = compute_epsilon(event, dp.delta, dp.accountant)
        if target > dp.epsilon_max:
            raise ConfigError(
                f"dp.noise_multiplier={dp.noise_multiplier} spends epsilon {target:.3g} over "
                f"{rounds} rounds (q={sample_rate:.3g}), above dp.epsilon_max={dp.epsilon_max}: "
                "raise the noise multiplier or epsilon_max, or run fewer rounds"
            )
    return UserDPConfig(
        target_epsilon=float(target),
        delta=dp.delta,
        clip_norm=dp.clip_norm,
        min_survivors=dp.min_survivors,
        noise=dp.noise,
        accountant=dp.accountant,
        epsilon_max=dp.epsilon_max,
    )


def update_dim(spec: Spec) -> int:
    """Coordinates of one client's user vector (deltas and prior statistics, not the weight)."""
    total = 0
    for name, (shape, _dtype) in spec.items():
        if name == WEIGHT:
            continue
        size = 1
        for s in shape:
            size *= int(s)
        total += size
    return total


class ServerUserDP:
    """The server's user-level DP: per-round plan, wire parameters, write-ahead ledger record.

    Args:
        dp: the ``[dp]`` settings (user-level DP must be on).
        ledger: the server's accountant (actor ``server``, unit ``user``).
        rounds: rounds planned (for calibration).
        sample_rate: client sampling rate q (``clients_per_round / population``).
        max_clients: the most clients one round sums (sets the fractional bits).
        hardened: malicious-server mode of secure aggregation.
        min_clients, stage_deadline_s, threshold: the ``[rounds]`` settings carried into the
            round's :class:`SecAggConfig` (the threshold is never below ``t_min``).
    """

    def __init__(
        self,
        dp: DpSettings,
        ledger: PersistentAccountant,
        *,
        rounds: int,
        sample_rate: float,
        max_clients: int,
        hardened: bool = True,
        min_clients: int = 3,
        stage_deadline_s: float = 60.0,
        threshold: int = 0,
    ) -> None:
        self.settings = dp
        self.config = user_dp_config(dp, sample_rate=sample_rate, rounds=rounds)
        self.ledger = ledger
        self.rounds = int(rounds)
        self.sample_rate = float(sample_rate)
        self.max_clients = int(max_clients)
        self.hardened = hardened
        self.min_clients = int(min_clients)
        self.stage_deadline_s = float(stage_deadline_s)
        self.threshold = int(threshold)
        self.plan: DistributedNoisePlan | None = None
        self._z = gaussian_multiplier(self.config, self.sample_rate, self.rounds)

    def round_config(
        self, n_clients: int, spec: Spec, round_index: int
    ) -> tuple[SecAggConfig, DistributedNoisePlan]:
        """This round's SecAggConfig and noise plan (the plan is cached across rounds).

        Raises:
            AbortRound: fewer than ``t_min`` clients were sampled.
        """
        config, self.plan = user_dp_round_config(
            self.config,
            n_clients=n_clients,
            max_clients=max(self.max_clients, n_clients),
            dim=update_dim(spec),
            sample_rate=self.sample_rate,
            rounds=self.rounds,
            hardened=self.hardened,
            round_index=round_index,
            z=self._z,
            cached=self.plan,
        )
        threshold = min(max(config.threshold or 0, self.threshold), n_clients)
        config = dataclasses.replace(
            config,
            threshold=threshold,
            min_clients=min(self.min_clients, threshold),
            stage_deadline_s=self.stage_deadline_s,
        )
        return config, self.plan

    def share_message(self, plan: DistributedNoisePlan) -> pb.UserDpShare:
        """What every client of the round needs to clip and add its noise share."""
        return pb.UserDpShare(
            clip_norm=self.config.clip_norm,
            noise=plan.noise,
            local_sigma=plan.local_sigma,
            min_survivors=plan.min_survivors,
            effective_noise_multiplier=plan.effective_noise_multiplier,
        )

    def before_unmask(
        self,
        round_index: int,
        round_id: str,
        survivors: Sequence[str],
        plan: DistributedNoisePlan,
    ) -> None:
        """Abort below ``t_min``; otherwise record the round's event (write-ahead).

        Raises:
            AbortRound: fewer survivors than the plan's ``t_min``; nothing is recorded or
                released.
            BudgetExceededError: the round would cross ``dp.epsilon_max``; nothing is released.
        """
        try:
            event = round_privacy_event(
                None, round_index=round_index + 1, survivors=len(survivors), plan=plan
            )
        except AbortRound as exc:
            log.error("round %s aborted before unmasking, no release: %s", round_id, exc)
            raise
        if event is None:  # pragma: no cover - a plan always yields an event
            raise AbortRound(f"round {round_id}: no privacy event for a user-level DP round")
        try:
            entry = self.ledger.record(
                event,
                round=round_index + 1,
                clipping_norm=self.config.clip_norm,
                participants=list(survivors),
                label=f"{round_id} distributed {plan.noise}, t_min={plan.min_survivors}",
            )
        except BudgetExceeded as err:
            log.error("round %s refused before unmasking: %s", round_id, err)
            raise BudgetExceededError(
                f"server refuses round {round_index + 1} ({round_id}): {err} "
                f"(ledger {self.ledger.ledger.path})"
            ) from err
        log.info(
            "round %s: user-level DP recorded before unmasking (%d survivors, local sigma %.4g, "
            "epsilon %.4g)",
            round_id,
            len(survivors),
            plan.local_sigma,
            entry.epsilon_after,
        )

    def summary(self) -> dict[str, Any]:
        """The user-level part of the server report (what the run guarantees and spent)."""
        plan = self.plan
        return {
            "unit": "one client's whole data (user level)",
            "mechanism": f"distributed {self.config.noise} noise under secure aggregation",
            "accountant": self.config.accountant,
            "delta": self.config.delta,
            "epsilon": self.ledger.epsilon,
            "epsilon_budget": self.config.budget_epsilon,
            "target_epsilon": self.config.target_epsilon,
            "clip_norm": self.config.clip_norm,
            "min_survivors": self.config.min_survivors,
            "sample_rate": self.sample_rate,
            "local_sigma": None if plan is None else plan.local_sigma,
            "effective_noise_multiplier": None if plan is None else plan.effective_noise_multiplier,
        }
