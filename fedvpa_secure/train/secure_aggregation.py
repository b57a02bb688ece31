"""Secure aggregation as an :data:`~fedvpa_secure.train.aggregation.Aggregator`, with the option
of user-level distributed DP (PRIVACY.md section 2).

:class:`SecureAggregator` has the signature of ``plain_sum`` (a list of client updates in, their
element-wise sum out) and runs one in-process round of the secure-aggregation protocol
(Bonawitz et al. 2017; :func:`fedvpa_secure.secagg.run_in_process`), so the in-process federation
runs unchanged with ``--secure-agg``. The model deltas travel as tensors, the prior statistics as
extra vectors and the client weight in the protocol's own weight coordinate, all in one masked
vector. The only difference from ``plain_sum`` is the fixed-point quantisation (unbiased
stochastic rounding to ``2^-f``; error bounded per coordinate by ``n * 2^-f``).

With :class:`~fedvpa_secure.train.dp_config.UserDPConfig` each client (the client-side half,
:func:`privatize_update`, is what a gRPC client calls) clips its whole update to norm S
(McMahan et al. 2018, "Learning differentially private recurrent language models"), is
quantised, and adds its integer noise share (discrete Gaussian, Canonne-Kamath-Steinke 2020, or
Skellam, Agarwal-Kairouz-Liu 2021) in the ring BEFORE masking, so the server only ever unmasks a
noisy sum (Kairouz, Liu, Steinke 2021, "The distributed discrete Gaussian mechanism"). The
noise is calibrated to ``t_min`` survivors; the protocol's threshold is raised to ``t_min`` so a
round with fewer survivors aborts with no output. The server's accountant (actor ``server``,
unit ``user``) composes each round, subsampled with the client sampling rate ``q``, and refuses
a round that would cross its budget; the round is recorded before the sum is unmasked.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fedvpa_secure.errors import AbortRound, BudgetExceededError, ConfigError, ProtocolError
from fedvpa_secure.secagg import InProcessRound, Layout, SecAggConfig
from fedvpa_secure.secagg.config import default_threshold
from fedvpa_secure.secagg.quantize import derive_frac_bits
from fedvpa_secure.train.aggregation import (
    DELTA_PREFIX,
    MAX_CLIENT_WEIGHT,
    PRIOR_KEYS,
    WEIGHT,
    Update,
)
from fedvpa_secure.train.dp_config import UserDPConfig
from privacy import (
    BudgetExceeded,
    BudgetPolicy,
    DistributedNoiseEvent,
    PersistentAccountant,
    calibrate_noise_multiplier,
)
from privacy.distributed import (
    DistributedNoisePlan,
    calibrate_distributed_noise,
    clip_update,
    quantized_l2_sensitivity,
    sample_noise,
)

log = logging.getLogger(__name__)

PRIOR_PREFIX = "prior/"
# Weighted deltas are w * delta with w <= MAX_CLIENT_WEIGHT: a per-coordinate |delta| of 1 fits.
DEFAULT_CLIP = {DELTA_PREFIX: MAX_CLIENT_WEIGHT, PRIOR_PREFIX: 1e5}
PRIOR_SHARE = 0.5  # fraction of the user-level clip norm given to the prior statistics
NOISE_TAIL = 10.0  # headroom, in noise standard deviations, before a coordinate could wrap


def split_update(update: Mapping[str, np.ndarray]) -> tuple[dict, dict, float]:
    """(tensors, extras, weight) of an Update, in the shapes the protocol's layout wants."""
    tensors = {k: np.asarray(v) for k, v in update.items() if k.startswith(DELTA_PREFIX)}
    extras = {
        k: np.asarray(v, dtype=np.float64).reshape(-1)
        for k, v in update.items()
        if k.startswith(PRIOR_PREFIX)
    }
    unknown = set(update) - set(tensors) - set(extras) - {WEIGHT}
    if unknown:
        raise ProtocolError(f"update has tensors secure aggregation does not know: {unknown}")
    return tensors, extras, float(np.asarray(update[WEIGHT]).reshape(-1)[0])


# -- user-level DP, client side ------------------------------------------------------------------


def privatize_update(update: Update, clip_norm: float) -> Update:
    """The client-side float half of user-level DP: unweight, normalise, clip to ``clip_norm``.

    * Deltas are divided by the client's weight and every client gets weight 1: with user-level
      DP each user counts equally (a weight that grows with the data would grow the
      sensitivity).
    * Prior statistics are divided by the client's episode count ``sum_k n_k`` (so they describe
      one user, not their data volume) and clipped as one block to ``PRIOR_SHARE * S``; the
      deltas are clipped to ``sqrt(1 - PRIOR_SHARE^2) * S``: the whole vector has norm <= S.
      The server's prior rebuild uses ratios of sums, which this per-user normalisation keeps
      meaningful (each user weighs one).
    """
    _, _, weight = split_update(update)
    w = max(weight, 1e-12)
    deltas = {
        k: (np.asarray(v, np.float64) / w).astype(np.float32)
        for k, v in update.items()
        if k.startswith(DELTA_PREFIX)
    }
    out: Update = dict(clip_update(deltas, clip_norm * math.sqrt(1.0 - PRIOR_SHARE**2)).update)
    prior = {k: np.asarray(v, np.float64) for k, v in update.items() if k.startswith(PRIOR_PREFIX)}
    if prior:
        episodes = max(float(np.sum(prior.get(PRIOR_KEYS["n"], np.ones(1)))), 1.0)
        prior = {k: v / episodes for k, v in prior.items()}
        out.update(clip_update(prior, clip_norm * PRIOR_SHARE).update)
    out[WEIGHT] = np.array([1.0])
    return out


@dataclasses.dataclass(frozen=True)
class NoisyLayout(Layout):
    """A layout whose ``quantize`` adds one client's integer noise share to the user coordinates.

    The noise is added in Z_(2^32) after stochastic rounding and before the pairwise and self
    masks, from the CSPRNG samplers of :mod:`privacy.noise`. The weight and count coordinates stay
    exact (they are public: the server learns the survivor set anyway). Clients and server agree
    on the same digest as the plain layout: the noise changes values, not the layout.
    """

    noise: str = "discrete_gaussian"
    local_sigma: float = 0.0

    def quantize(self, tensors, rng, *, extras=None, weight: float = 1.0) -> np.ndarray:  # type: ignore[override]
        out = super().quantize(tensors, rng, extras=extras, weight=weight)
        n = self.user_size
        shares = sample_noise(self.noise, self.local_sigma, n)
        out[:n] = (out[:n].astype(np.int64) + shares).astype(np.uint32)  # wraps mod 2^32
        return out


def noisy_layout(layout: Layout, plan: DistributedNoisePlan) -> NoisyLayout:
    """The client-side layout that adds this plan's integer noise share before masking.

    A gRPC client builds its ``ClientSession`` with this layout; the server keeps the plain one
    (same digest).
    """
    return NoisyLayout(
        layout.entries, layout.size, layout.digest, noise=plan.noise, local_sigma=plan.local_sigma
    )


def open_server_accountant(run_dir: str | Path, user_dp: UserDPConfig) -> PersistentAccountant:
    """The server's user-level accountant, ``RUN_DIR/privacy/server.ledger.jsonl``."""
    path = Path(run_dir) / "privacy" / "server.ledger.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return PersistentAccountant.open(
        path,
        run_id=Path(run_dir).name or "run",
        actor="server",
        unit="user",
        budget=BudgetPolicy(user_dp.budget_epsilon, user_dp.delta),
        accountant=user_dp.accountant,
    )


def gaussian_multiplier(user_dp: UserDPConfig, sample_rate: float, rounds: int) -> float:
    """The Gaussian noise multiplier the run needs (sizes the ring's headroom for the noise)."""
    return calibrate_noise_multiplier(
        target_epsilon=user_dp.target_epsilon,
        delta=user_dp.delta,
        sample_rate=sample_rate,
        steps=rounds,
        accountant=user_dp.accountant,
    )


def user_dp_round_config(
    user_dp: UserDPConfig,
    *,
    n_clients: int,
    max_clients: int,
    dim: int,
    sample_rate: float,
    rounds: int,
    hardened: bool = True,
    round_index: int = 0,
    z: float | None = None,
    cached: DistributedNoisePlan | None = None,
) -> tuple[SecAggConfig, DistributedNoisePlan]:
    """The secure-aggregation config and the calibrated noise plan of one user-level DP round.

    One coordinate of a clipped update is at most S; the group clip leaves ``NOISE_TAIL``
    standard deviations of headroom so the noisy sum neither wraps nor trips the server's range
    check, and the fractional bits are the largest that cannot overflow for ``max_clients``.
    The protocol threshold is raised to ``t_min``.

    Raises:
        AbortRound: fewer than ``t_min`` clients were sampled.
    """
    if n_clients < user_dp.min_survivors:
        raise AbortRound(
            f"round {round_index}: {n_clients} clients sampled, fewer than "
            f"t_min={user_dp.min_survivors} the distributed noise is calibrated to; the round is "
            "aborted"
        )
    if z is None:
        z = gaussian_multiplier(user_dp, sample_rate, rounds)
    coord_clip = user_dp.clip_norm * (1.0 + NOISE_TAIL * z)
    frac_bits = derive_frac_bits("", coord_clip, max_clients)
    sens = quantized_l2_sensitivity(
        clip_norm=user_dp.clip_norm, scale=2.0**frac_bits, dim=dim, beta=0.0
    )
    plan = cached
    if (
        plan is None
        or plan.dim != dim
        or plan.l2_sensitivity != sens
        or plan.max_summands != max_clients
    ):
        plan = calibrate_distributed_noise(
            target_epsilon=user_dp.target_epsilon,
            delta=user_dp.delta,
            sample_rate=sample_rate,
            rounds=rounds,
            l2_sensitivity=sens,
            dim=dim,
            min_survivors=user_dp.min_survivors,
            max_summands=max_clients,
            noise=user_dp.noise,
            accountant=user_dp.accountant,
        )
    threshold = max(default_threshold(n_clients, hardened), user_dp.min_survivors, 3)
    config = SecAggConfig(
        n_clients=n_clients,
        threshold=min(threshold, n_clients),
        hardened=hardened,
        clip={"": coord_clip},
        frac_bits={"": frac_bits},
        max_clients=max_clients,
        weight_cap=MAX_CLIENT_WEIGHT,
    )
    return config, plan


def round_privacy_event(
    experiment: object,
    *,
    round_index: int,
    survivors: int,
    plan: DistributedNoisePlan | None = None,
) -> DistributedNoiseEvent | None:
    """The server ledger's event for one user-level DP round (the gRPC server's hook).

    Returns ``None`` when the round ran without distributed noise (``plan`` is None): such a
    round has no DP guarantee to record. With a plan, a round whose survivors fall below the
    plan's ``t_min`` is refused (:class:`AbortRound`): its sum must not be released. Record the
    event BEFORE unmasking (write-ahead), as :class:`SecureAggregator` does.
    """
    del experiment  # the plan carries every parameter; kept for the hook's signature
    if plan is None:
        return None
    if survivors < plan.min_survivors:
        raise AbortRound(
            f"round {round_index}: {survivors} survivors < t_min={plan.min_survivors}; the noise "
            "in the sum would be below its calibration, so the round is aborted"
        )
    return plan.round_event(1)


# -- the aggregator -------------------------------------------------------------------------------


class SecureAggregator:
    """``plain_sum``'s signature over the in-process secure-aggregation protocol.

    Args:
        clip: per-group coordinate clip of the fixed-point encoding (no user DP); keys are name
            prefixes. Values beyond it are clipped (and logged): pick it above any real value.
        hardened: malicious-server mode of the protocol (consistency round).
        max_clients: the most clients ever summed (sets the fractional bits); defaults to each
            round's number of updates.
        user_dp: user-level distributed DP settings; then ``run_dir``, ``rounds`` and
            ``sample_rate`` are required.
        run_dir: where the server's ledger ``privacy/server.ledger.jsonl`` lives.
        rounds: rounds planned (for calibration).
        sample_rate: client sampling rate q per round.
    """

    def __init__(
        self,
        *,
        clip: Mapping[str, float] | None = None,
        hardened: bool = True,
        max_clients: int | None = None,
        user_dp: UserDPConfig | None = None,
        run_dir: str | Path | None = None,
        rounds: int | None = None,
        sample_rate: float | None = None,
    ) -> None:
        self.clip = dict(clip or DEFAULT_CLIP)
        self.hardened = hardened
        self.max_clients = max_clients
        self.user_dp = user_dp
        self.round = 0
        self.last_survivors: tuple[str, ...] = ()
        self.accountant: PersistentAccountant | None = None
        self.plan: DistributedNoisePlan | None = None
        self._z: float | None = None
        if user_dp is not None:
            if run_dir is None or rounds is None or sample_rate is None:
                raise ConfigError("user-level DP needs run_dir, rounds and sample_rate")
            self.rounds = int(rounds)
            self.sample_rate = float(sample_rate)
            self.accountant = open_server_accountant(run_dir, user_dp)

    def _dp_config(self, n: int, dim: int) -> tuple[SecAggConfig, DistributedNoisePlan]:
        if self.user_dp is None:
            raise ConfigError("user-level DP is not configured")
        if self._z is None:
            self._z = gaussian_multiplier(self.user_dp, self.sample_rate, self.rounds)
        config, self.plan = user_dp_round_config(
            self.user_dp,
            n_clients=n,
            max_clients=max(self.max_clients or n, n),
            dim=dim,
            sample_rate=self.sample_rate,
            rounds=self.rounds,
            hardened=self.hardened,
            round_index=self.round,
            z=self._z,
            cached=self.plan,
        )
        return config, self.plan

    # -- one round -------------------------------------------------------------------------------
    def __call__(self, updates: Sequence[Update], drop_at: Mapping | None = None) -> Update:
        """Securely sum ``updates``; with user DP, privatize and noise them first.

        Raises:
            AbortRound: fewer survivors than the protocol threshold (or ``t_min``).
            BudgetExceededError: the server's user-level budget would be crossed.
        """
        if not updates:
            raise ProtocolError("no client updates to aggregate")
        self.round += 1
        n = len(updates)
        if self.user_dp is not None:
            updates = [privatize_update(u, self.user_dp.clip_norm) for u in updates]
        parts = [split_update(u) for u in updates]
        tensors = [p[0] for p in parts]
        extras = [p[1] for p in parts]
        weights = [p[2] for p in parts]
        if self.user_dp is None:
            config = SecAggConfig(
                n_clients=n,
                hardened=self.hardened,
                clip=self.clip,
                max_clients=max(self.max_clients or n, n),
                weight_cap=MAX_CLIENT_WEIGHT,
            )
            self._warn_clipped(updates)
            layout = Layout.build(tensors[0], config, extras=extras[0] or None)
        else:
            dim = sum(int(np.asarray(v).size) for k, v in updates[0].items() if k != WEIGHT)
            config, plan = self._dp_config(n, dim)
            base = Layout.build(tensors[0], config, extras=extras[0] or None)
            layout = noisy_layout(base, plan)
            self._record(plan)  # write-ahead: before anything is unmasked
        result = InProcessRound(
            tensors,
            config,
            extras=extras if extras[0] else None,
            weights=weights,
            round_id=f"round-{self.round}",
            drop_at=drop_at,
            layout=layout,
            record_transcript=False,
        ).run()
        if self.user_dp is not None and result.count < self.user_dp.min_survivors:
            raise AbortRound(  # unreachable with threshold >= t_min; kept as a second guard
                f"round {self.round}: {result.count} survivors < t_min={self.user_dp.min_survivors}"
            )
        self.last_survivors = result.survivors
        out: Update = {k: np.asarray(v, np.float64) for k, v in result.tensors.items()}
        out.update({k: np.asarray(v, np.float64) for k, v in result.extras.items()})
        for k, v in updates[0].items():
            if k.startswith(PRIOR_PREFIX):
                out[k] = out[k].reshape(np.asarray(v).shape)
        out[WEIGHT] = np.array([result.weight])
        return out

    def _record(self, plan: DistributedNoisePlan) -> None:
        if self.accountant is None or self.user_dp is None:
            raise ConfigError("user-level DP is not configured")
        event = plan.round_event(1)
        try:
            self.accountant.record(
                event,
                round=self.round,
                clipping_norm=self.user_dp.clip_norm,
                label=f"distributed {plan.noise}, t_min={plan.min_survivors}",
            )
        except BudgetExceeded as err:
            raise BudgetExceededError(
                f"server refuses round {self.round}: {err} (ledger {self.accountant.ledger.path})"
            ) from err

    def _warn_clipped(self, updates: Sequence[Update]) -> None:
        config = SecAggConfig(n_clients=max(len(updates), 3), clip=self.clip)
        for u in updates:
            for k, v in u.items():
                if k == WEIGHT:
                    continue
                c = config.clip[config.group_of(k)]
                if np.abs(np.asarray(v)).max(initial=0.0) > c:
                    log.warning("secure aggregation clips %s at %g: raise the clip", k, c)

    def privacy_summary(self) -> dict | None:
        """The user-level part of report.json's "privacy" section (None without user DP)."""
        if self.user_dp is None or self.accountant is None:
            return None
        return {
            "unit": "one client's whole data (user level)",
            "mechanism": f"distributed {self.user_dp.noise} noise under secure aggregation",
            "accountant": self.user_dp.accountant,
            "delta": self.user_dp.delta,
            "epsilon": self.accountant.epsilon,
            "epsilon_budget": self.user_dp.budget_epsilon,
            "clip_norm": self.user_dp.clip_norm,
            "min_survivors": self.user_dp.min_survivors,
            "sample_rate": self.sample_rate,
            "local_sigma": None if self.plan is None else self.plan.local_sigma,
            "effective_noise_multiplier": None
            if self.plan is None
            else self.plan.effective_noise_multiplier,
            "ledgers": [str(self.accountant.ledger.path)],
        }
