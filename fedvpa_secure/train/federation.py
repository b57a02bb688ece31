"""The in-process federation: client sampling, local steps, aggregation of sums, prior rebuild.

The round logic talks to the server side only through an :data:`Aggregator` (a function from the
list of client updates to their element-wise sum), so secure aggregation plugs in without
changing the math. Centralised VPL (no federation) trains one model on the pooled clients with
the same number of local steps per round.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.model.preference_model import PreferenceModel
from fedvpa_secure.model.prior import moment_statistics, sufficient_statistics, tau_schedule
from fedvpa_secure.train.aggregation import (
    LL_FLOOR,
    Aggregator,
    ServerOptimizer,
    Update,
    client_update,
    plain_sum,
    server_step,
)
from fedvpa_secure.train.evaluate import EvalEpisodes, evaluate, posterior_means
from fedvpa_secure.train.local import ClientState, LocalResult, sample_episodes, train_local
from fedvpa_secure.train.tensors import ClientTensors, make_batch

log = logging.getLogger(__name__)


@dataclass
class RoundRecord:
    round: int
    tau: float
    loss: float
    bt: float
    kl: float
    pull: float
    eval_accuracy: float
    eval_conflicting: float
    clients: int
    seconds: float
    latent: list[list[float]] | None = None  # eval users' posterior means (for the scatter plot)

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("latent")
        return d


@dataclass
class History:
    rounds: list[RoundRecord] = field(default_factory=list)
    latent_types: list[int] = field(default_factory=list)
    privacy: dict | None = None  # record-level DP summary when cfg.dp is set


@torch.no_grad()
def client_prior_statistics(
    model: PreferenceModel,
    client: ClientTensors,
    cfg: ExperimentConfig,
    rng: np.random.Generator,
    device: torch.device,
) -> dict[str, torch.Tensor] | None:
    """(n_k, v_k) and the first two moments over one fresh partition into context episodes."""
    if not model.spec.mixture_prior:
        return None
    items = sample_episodes([client], cfg.train.context_size, 1, 10**9, rng)
    model.eval()
    batch = make_batch(items).to(device)
    mu, _ = model.encode(batch)
    mu = mu.cpu()
    n_k, v_k = sufficient_statistics(
        mu,
        model.prototypes.detach().cpu(),
        model.log_pi.cpu(),
        model.prior_var.cpu(),
        cfg.objective.mu_clip,
    )
    m1, m2 = moment_statistics(mu, cfg.objective.mu_clip)
    stats = {"n": n_k, "v": v_k, "m1": m1, "m2": m2}
    if model.likelihood_posterior:
        # per-pair mean log-likelihoods are <= 0; clamped so that one episode's share is bounded
        stats["ll"] = model.context_mean_loglik(batch).clamp(min=-LL_FLOOR).sum(0).cpu()
    return stats


UpdateSpec = dict[str, tuple[tuple[int, ...], str]]


def update_spec(
    model: PreferenceModel, client: ClientTensors, cfg: ExperimentConfig, device: torch.device
) -> UpdateSpec:
    """name -> (shape, little-endian dtype) of one client's update, derived by running the
    learner's own :func:`client_update` on ``client``, so that everyone who sizes a round
    (the server's secure-aggregation layout, a client's noise check) follows the learner when
    its update gains a statistic."""
    rng = np.random.default_rng(0)
    stats = client_prior_statistics(model, client, cfg, rng, device)
    trainable = {k: v.detach().clone() for k, v in model.trainable_state().items()}
    update = client_update(trainable, model, 1.0, stats)
    return {
        k: (tuple(np.shape(v)), np.asarray(v).dtype.newbyteorder("<").str)
        for k, v in update.items()
    }


def _mean_of_finite(values: Sequence[float]) -> float:
    """Mean of the non-NaN values; NaN when none (e.g. no pull term during the warm-up)."""
    finite = [v for v in values if not np.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")


def client_round(
    local_model: PreferenceModel,
    global_state: dict[str, torch.Tensor],
    client: ClientTensors,
    state: ClientState,
    cfg: ExperimentConfig,
    tau: float,
    rng: np.random.Generator,
    device: torch.device,
) -> tuple[Update, LocalResult]:
    """Everything one client does in a round, from the broadcast state to what it sends.

    Loads the global model into ``local_model``, trains locally, and returns the weighted delta
    and prior statistics as named float arrays (the input of aggregation, plain or secure).
    """
    local_model.load_state_dict(global_state)
    trainable = {k: v.detach().clone() for k, v in local_model.trainable_state().items()}
    result = train_local(local_model, [client], state, cfg, cfg.train.local_steps, tau, rng, device)
    stats = client_prior_statistics(local_model, client, cfg, rng, device)
    return client_update(trainable, local_model, client.n_pairs, stats), result


def run_federation(
    model: PreferenceModel,
    train_clients: Sequence[ClientTensors],
    eval_episodes: EvalEpisodes,
    reference_episodes: EvalEpisodes,
    user_types: Sequence[str],
    cfg: ExperimentConfig,
    device: torch.device,
    aggregate: Aggregator = plain_sum,
    on_round: Callable[[RoundRecord], None] | None = None,
    privacy_dir: str | Path | None = None,
) -> History:
    """Train ``model`` (the global model, updated in place) for ``cfg.train.rounds`` rounds.

    With ``cfg.dp`` set, every client trains with DP-SGD and keeps its ledger under
    ``privacy_dir`` (required then); the non-DP path is unchanged.
    """
    rng = np.random.default_rng(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    history = History(latent_types=[c.user_type for c in eval_episodes.clients])
    states = {c.client_id: ClientState() for c in train_clients}
    dp_clients = None
    if cfg.dp is not None:
        from fedvpa_secure.train.dp_round import DPClients

        if not cfg.spec.federated or privacy_dir is None:
            raise ConfigError("DP training needs a federated method and a privacy_dir for ledgers")
        dp_clients = DPClients(cfg, train_clients, privacy_dir)
    local_model = copy.deepcopy(model) if cfg.spec.federated else model
    server_opt = ServerOptimizer(model, cfg.train.server_optimizer, cfg.train.server_learning_rate)
    n_per_round = cfg.train.clients_per_round or len(train_clients)
    n_per_round = min(n_per_round, len(train_clients))
    for r in range(cfg.train.rounds):
        start = time.perf_counter()
        tau = tau_schedule(r, cfg.train.rounds, cfg.objective.tau_start, cfg.objective.tau_end)
        round_cfg = replace(cfg, objective=cfg.objective.at_round(r, cfg.train.rounds))
        chosen = rng.choice(len(train_clients), size=n_per_round, replace=False)
        logs = []
        if cfg.spec.federated:
            global_state = model.state_dict()
            updates = []
            for idx in sorted(chosen):
                client = train_clients[idx]
                round_fn = client_round if dp_clients is None else dp_clients.client_round
                extra = () if dp_clients is None else (r + 1,)
                update, result = round_fn(
                    local_model,
                    global_state,
                    client,
                    states[client.client_id],
                    round_cfg,
                    tau,
                    rng,
                    device,
                    *extra,
                )
                logs.append(result)
                updates.append(update)
            server_step(model, aggregate(updates), server_opt, cfg, r)
        else:
            pooled = [train_clients[i] for i in chosen]
            result = train_local(
                model,
                pooled,
                states[train_clients[0].client_id],
                round_cfg,
                cfg.train.local_steps * len(pooled),
                tau,
                rng,
                device,
            )
            logs.append(result)
        metrics = evaluate(model, eval_episodes, user_types, device, full=False)["accuracy"]
        latent = None
        if model.spec.latent:
            latent = posterior_means(model, eval_episodes, device)[0].tolist()
        record = RoundRecord(
            round=r + 1,
            tau=tau,
            loss=float(np.mean([lg.mean("loss") for lg in logs])),
            bt=float(np.mean([lg.mean("bt") for lg in logs])),
            kl=_mean_of_finite([lg.mean("kl") for lg in logs]),
            pull=_mean_of_finite([lg.mean("pull") for lg in logs]),
            eval_accuracy=metrics["overall"],
            eval_conflicting=metrics["conflicting"],
            clients=len(chosen),
            seconds=time.perf_counter() - start,
            latent=latent,
        )
        history.rounds.append(record)
        log.debug("round %d: loss %.4f acc %.4f", record.round, record.loss, record.eval_accuracy)
        if on_round is not None:
            on_round(record)
    if dp_clients is not None:
        history.privacy = dp_clients.summary()
    return history
