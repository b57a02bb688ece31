"""One DP client round: budget check, DP-SGD, the prior's Gaussian release, ledger record.

Order (PRIVACY.md section 1 and privacy/budget.py): the round's event is fully known before
training (noise multiplier, Poisson rate, steps, prior release), so the client calls
``check_next`` first and refuses with :class:`~fedvpa_secure.errors.BudgetExceededError` before
touching its data; after training it ``record``s the event BEFORE the update leaves the client
(write-ahead: a crash in between over-counts, never under-counts).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.errors import BudgetExceededError, ConfigError
from fedvpa_secure.model.preference_model import PreferenceModel
from fedvpa_secure.model.prior import clip_rows, responsibilities
from fedvpa_secure.train.aggregation import Update, client_update
from fedvpa_secure.train.dp_config import DPConfig, require_mutant_allowed
from fedvpa_secure.train.dp_local import (
    DPLocalResult,
    resolve_engine,
    sample_rate,
    train_local_dp,
)
from fedvpa_secure.train.local import ClientState, sample_episodes
from fedvpa_secure.train.secret_noise import secret_torch_generator
from fedvpa_secure.train.tensors import ClientTensors, make_batch
from privacy import (
    BudgetExceeded,
    BudgetPolicy,
    ComposedEvent,
    GaussianEvent,
    PersistentAccountant,
    PrivacyEvent,
    SampledGaussianEvent,
    make_accountant,
)
from privacy.accountants import solve_decreasing

RECORD_UNIT = "record"
log = logging.getLogger(__name__)


def client_ledger_path(run_dir: str | Path, client_id: str) -> Path:
    """``RUN_DIR/privacy/clients/<id>.ledger.jsonl``: one ledger per client, found by ``audit``."""
    return Path(run_dir) / "privacy" / "clients" / f"{client_id}.ledger.jsonl"


def open_client_accountant(
    run_dir: str | Path, run_id: str, client_id: str, dp: DPConfig
) -> PersistentAccountant:
    """The client's ledger-backed accountant, created on first use and replayed afterwards.

    Reopening after a crash or restart replays every recorded round, so epsilon continues.
    """
    budget = dp.budget_epsilon
    if budget is None:
        raise BudgetExceededError(
            "no privacy budget: set target_epsilon or epsilon_max (--dp-epsilon) for DP clients"
        )
    path = client_ledger_path(run_dir, client_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    return PersistentAccountant.open(
        path,
        run_id=run_id,
        actor=client_id,
        unit=RECORD_UNIT,
        budget=BudgetPolicy(budget, dp.delta),
        accountant=dp.accountant,
    )


def round_event(
    noise_multiplier: float, q: float, steps: int, dp: DPConfig, with_prior: bool
) -> PrivacyEvent:
    """One client round: ``steps`` subsampled-Gaussian steps, then the prior release."""
    if not noise_multiplier > 0:
        raise ConfigError(
            f"noise multiplier {noise_multiplier!r} cannot be accounted (zero noise is not "
            "private); it is only for tests of train_local_dp"
        )
    sgd = SampledGaussianEvent(noise_multiplier, q, steps)
    if not with_prior:
        return sgd
    return ComposedEvent((sgd, GaussianEvent(dp.prior_noise_multiplier)))


def calibrate_client_noise(
    dp: DPConfig, q: float, steps: int, rounds: int, with_prior: bool
) -> float:
    """The DP-SGD noise multiplier for ``dp.target_epsilon`` over ``rounds`` full rounds.

    Calibrates the composition actually recorded (DP-SGD steps plus prior releases), assuming
    the client takes part in every round (the worst case; clients sampled less often end below
    the target). Returns ``dp.noise_multiplier`` when it is given.
    """
    if dp.noise_multiplier is not None:
        return dp.noise_multiplier
    target = float(dp.target_epsilon)  # type: ignore[arg-type]

    def eps(z: float) -> float:
        acc = make_accountant(dp.accountant)
        acc.compose(round_event(z, q, steps, dp, with_prior), count=rounds)
        return acc.get_epsilon(dp.delta)

    if with_prior:
        floor = make_accountant(dp.accountant)
        floor.compose(GaussianEvent(dp.prior_noise_multiplier), count=rounds)
        if floor.get_epsilon(dp.delta) >= target:
            raise BudgetExceededError(
                f"the prior releases alone (noise multiplier {dp.prior_noise_multiplier}, "
                f"{rounds} rounds) spend more than target epsilon {target}; raise "
                "prior_noise_multiplier or the target"
            )
    return solve_decreasing(eps, target, low=0.3, high=3.0, rtol=1e-3, limits=(1e-2, 1e4))


def release_prior_statistics(
    model: PreferenceModel,
    client: ClientTensors,
    cfg: ExperimentConfig,
    dp: DPConfig,
    rng: np.random.Generator,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor] | None:
    """The clipped Gaussian release of the prior's statistics (METHOD.md section 3).

    One fresh partition puts each pair in exactly one context episode. Episode e contributes
    ``r_e`` to n (``||r_e||_2 <= ||r_e||_1 = 1``), ``r_e * sq_e`` to v with ``sq_e`` clipped to
    ``B_v``, the clipped mean ``mu_e`` (norm <= c = mu_clip) to m1 and ``mu_e mu_e^T`` (Frobenius
    norm ``||mu_e||^2 <= c^2``) to m2. The vector ``(n, v / B_v, m1 / c, m2 / c^2)`` therefore has
    L2 sensitivity at most 2 under adding or removing one episode, and noise
    ``N(0, (2 z_p)^2)`` on it is one Gaussian mechanism with multiplier ``z_p`` (Dwork and Roth
    2014, Thm. A.1), recorded as :class:`~privacy.GaussianEvent`. Everything is computed from
    the same partition and released together; nothing else about the prior leaves the client.
    """
    if not model.spec.mixture_prior:
        return None
    items = sample_episodes([client], cfg.train.context_size, 1, 10**9, rng)
    model.eval()
    with torch.no_grad():
        mu, _ = model.encode(make_batch(items).to(device))
    c = cfg.objective.mu_clip
    mu = clip_rows(mu.detach().cpu().double(), c)
    protos = model.prototypes.detach().cpu().double()
    d = mu.shape[-1]
    v_clip = dp.prior_v_clip
    if v_clip is None:
        v_clip = (c + float(protos.norm(dim=-1).max())) ** 2 / d
    r = responsibilities(mu, protos, model.log_pi.cpu().double(), model.prior_var.cpu().double())
    sq = (((mu.unsqueeze(1) - protos.unsqueeze(0)) ** 2).sum(-1) / d).clamp(max=v_clip)
    stats = {"n": r.sum(0), "v": (r * sq).sum(0), "m1": mu.sum(0), "m2": mu.T @ mu}
    scales = {"n": 1.0, "v": v_clip, "m1": c, "m2": c * c}
    std = 2.0 * dp.prior_noise_multiplier
    if generator is None:  # never the public seed's generator: the noise must not be replayable
        generator = secret_torch_generator("cpu")
    out = {}
    for key, value in stats.items():
        noise = torch.randn(value.shape, generator=generator, dtype=torch.float64)
        out[key] = value + noise * (std * scales[key])
    return out


def check_round(
    accountant: PersistentAccountant, event: PrivacyEvent, client_id: str, round_index: int
) -> float:
    """Epsilon after the round, or :class:`BudgetExceededError` with a clear message."""
    try:
        return accountant.check_next(event)
    except BudgetExceeded as err:
        raise BudgetExceededError(
            f"client {client_id!r} refuses round {round_index}: {err} (ledger "
            f"{accountant.ledger.path})"
        ) from err


def dp_client_round(
    local_model: PreferenceModel,
    global_state: dict[str, torch.Tensor],
    client: ClientTensors,
    state: ClientState,
    cfg: ExperimentConfig,
    tau: float,
    rng: np.random.Generator,
    device: torch.device,
    accountant: PersistentAccountant,
    round_index: int,
    noise_multiplier: float,
    noise_generator: torch.Generator | None = None,
) -> tuple[Update, DPLocalResult]:
    """What a DP client does in a round; the DP twin of ``federation.client_round``.

    Raises:
        BudgetExceededError: the round would cross the client's budget; nothing was trained,
            recorded or released.
    """
    dp: DPConfig = cfg.dp  # type: ignore[assignment]
    require_mutant_allowed(dp.mutant)  # a server-sent config must not switch DP off
    q = sample_rate([client], cfg)
    with_prior = bool(local_model.spec.mixture_prior)
    event = round_event(noise_multiplier, q, cfg.train.local_steps, dp, with_prior)
    check_round(accountant, event, client.client_id, round_index)
    local_model.load_state_dict(global_state)
    trainable = {k: v.detach().clone() for k, v in local_model.trainable_state().items()}
    result = train_local_dp(
        local_model,
        [client],
        state,
        cfg,
        cfg.train.local_steps,
        tau,
        rng,
        device,
        noise_multiplier,
        dp.max_grad_norm,
        resolve_engine(dp),
        noise_generator,
        mutant=dp.mutant,  # TEST ONLY; the ledger below still records the honest event
        learning_rate=dp.learning_rate,
        max_noise_step=dp.max_noise_step,
    )
    stats = release_prior_statistics(local_model, client, cfg, dp, rng, device, noise_generator)
    accountant.record(
        event, round=round_index, clipping_norm=dp.max_grad_norm, label="dp-sgd+prior"
    )  # before the update leaves the client
    # weight 1, not the pair count: the count is data the mechanism does not cover, and the
    # server divides by the number of survivors, which no client can forge
    return client_update(trainable, local_model, 1.0, stats), result


def privacy_summary(
    dp: DPConfig, accountants: Sequence[PersistentAccountant], noise_multiplier: float
) -> dict:
    """The record-level part of report.json's "privacy" section."""
    eps = {a.ledger.genesis.actor: a.epsilon for a in accountants}
    return {
        "unit": "one preference pair of one client (record level)",
        "mechanism": "DP-SGD over episodes (Poisson sampling) + Gaussian prior release",
        "accountant": dp.accountant,
        "delta": dp.delta,
        "epsilon_budget": dp.budget_epsilon,
        "noise_multiplier": noise_multiplier,
        "prior_noise_multiplier": dp.prior_noise_multiplier,
        "max_grad_norm": dp.max_grad_norm,
        "learning_rate": dp.learning_rate,
        "max_noise_step": dp.max_noise_step,
        **({"mutant": dp.mutant} if dp.mutant is not None else {}),
        "epsilon": max(eps.values(), default=0.0),
        "per_client_epsilon": eps,
        "ledgers": [str(a.ledger.path) for a in accountants],
    }


class DPClients:
    """The in-process federation's DP clients: one persistent accountant per client.

    In a real deployment each client process holds only its own accountant
    (:func:`open_client_accountant`) and calls :func:`dp_client_round`; this class is the
    in-process stand-in that the federation loop uses.
    """

    def __init__(
        self, cfg: ExperimentConfig, clients: Sequence[ClientTensors], run_dir: str | Path
    ) -> None:
        if cfg.dp is None:
            raise ConfigError("DPClients needs cfg.dp")
        self.cfg = cfg
        self.dp: DPConfig = cfg.dp
        self.run_dir = Path(run_dir)
        self.run_id = self.run_dir.name or "run"
        if self.dp.mutant is not None:
            require_mutant_allowed(self.dp.mutant)
            log.warning(
                "TEST-ONLY DP mutant %r: the DP-SGD mechanism is deliberately broken while the "
                "ledgers record the honest guarantee",
                self.dp.mutant,
            )
        self.accountants = {
            c.client_id: open_client_accountant(self.run_dir, self.run_id, c.client_id, self.dp)
            for c in clients
        }
        # One multiplier for every client, calibrated for the client with the highest rate.
        q = max(sample_rate([c], cfg) for c in clients)
        with_prior = cfg.spec.mixture_prior
        self.noise_multiplier = calibrate_client_noise(
            self.dp, q, cfg.train.local_steps, cfg.train.rounds, with_prior
        )

    def client_round(
        self,
        local_model: PreferenceModel,
        global_state: dict[str, torch.Tensor],
        client: ClientTensors,
        state: ClientState,
        cfg: ExperimentConfig,
        tau: float,
        rng: np.random.Generator,
        device: torch.device,
        round_index: int,
    ) -> tuple[Update, DPLocalResult]:
        """:func:`dp_client_round` with this client's accountant."""
        return dp_client_round(
            local_model,
            global_state,
            client,
            state,
            cfg,
            tau,
            rng,
            device,
            self.accountants[client.client_id],
            round_index,
            self.noise_multiplier,
        )

    def summary(self) -> dict:
        """The record-level part of report.json's "privacy" section."""
        return privacy_summary(self.dp, list(self.accountants.values()), self.noise_multiplier)
