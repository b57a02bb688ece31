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
from dataclasses import dataclass, field

import numpy as np
import torch

from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.model.preference_model import PreferenceModel
from fedvpa_secure.model.prior import sufficient_statistics, tau_schedule
from fedvpa_secure.train.aggregation import (
    Aggregator,
    ServerOptimizer,
    Update,
    apply_sums,
    client_update,
    plain_sum,
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


@torch.no_grad()
def client_prior_statistics(
    model: PreferenceModel,
    client: ClientTensors,
    cfg: ExperimentConfig,
    rng: np.random.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
    """(n_k, v_k) over one fresh partition of the client's pairs into context episodes."""
    if not model.spec.mixture_prior:
        return None, None
    items = sample_episodes([client], cfg.train.context_size, 1, 10**9, rng)
    model.eval()
    mu, _ = model.encode(make_batch(items).to(device))
    return sufficient_statistics(
        mu.cpu(),
        model.prototypes.detach().cpu(),
        model.log_pi.cpu(),
        model.prior_var.cpu(),
        cfg.objective.mu_clip,
    )


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
    n_k, v_k = client_prior_statistics(local_model, client, cfg, rng, device)
    return client_update(trainable, local_model, client.n_pairs, n_k, v_k), result


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
) -> History:
    """Train ``model`` (the global model, updated in place) for ``cfg.train.rounds`` rounds."""
    rng = np.random.default_rng(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    history = History(latent_types=[c.user_type for c in eval_episodes.clients])
    states = {c.client_id: ClientState() for c in train_clients}
    local_model = copy.deepcopy(model) if cfg.spec.federated else model
    server_opt = ServerOptimizer(model, cfg.train.server_optimizer, cfg.train.server_learning_rate)
    n_per_round = cfg.train.clients_per_round or len(train_clients)
    n_per_round = min(n_per_round, len(train_clients))
    for r in range(cfg.train.rounds):
        start = time.perf_counter()
        tau = tau_schedule(r, cfg.train.rounds, cfg.objective.tau_start, cfg.objective.tau_end)
        chosen = rng.choice(len(train_clients), size=n_per_round, replace=False)
        logs = []
        if cfg.spec.federated:
            global_state = model.state_dict()
            updates = []
            for idx in sorted(chosen):
                client = train_clients[idx]
                update, result = client_round(
                    local_model,
                    global_state,
                    client,
                    states[client.client_id],
                    cfg,
                    tau,
                    rng,
                    device,
                )
                logs.append(result)
                updates.append(update)
            apply_sums(model, aggregate(updates), cfg.objective.variance_floor, server_opt)
        else:
            pooled = [train_clients[i] for i in chosen]
            result = train_local(
                model,
                pooled,
                states[train_clients[0].client_id],
                cfg,
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
            kl=float(np.nanmean([lg.mean("kl") for lg in logs]))
            if model.spec.latent
            else float("nan"),
            pull=float(np.nanmean([lg.mean("pull") for lg in logs]))
            if model.spec.ortho_pull
            else float("nan"),
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
    return history
