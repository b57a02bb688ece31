"""Local training on one client (or, for centralised VPL, on the pooled clients).

A step draws a fresh data-independent partition of each client's pairs into disjoint episodes
(context + query), takes up to ``episodes_per_step`` of them, and minimises the objective of
METHOD.md section 4. The client's Gumbel-Softmax logits alpha live here, not in the model: they
are trained locally and never leave the client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.data.episodes import partition_episodes
from fedvpa_secure.model.objective import LossParts, PriorContext, episode_loss
from fedvpa_secure.model.preference_model import EpisodeBatch, PreferenceModel
from fedvpa_secure.model.prior import gumbel_softmax_weights
from fedvpa_secure.train.tensors import ClientTensors, make_batch


@dataclass
class ClientState:
    """What a client keeps between rounds (never sent): its local mixture logits."""

    alpha: torch.Tensor | None = None
    rounds_trained: int = 0


@dataclass
class StepLog:
    loss: float
    bt: float
    kl: float = float("nan")
    pull: float = float("nan")


@dataclass
class LocalResult:
    steps: list[StepLog] = field(default_factory=list)

    def mean(self, name: str) -> float:
        vals = [v for v in (getattr(s, name) for s in self.steps) if not np.isnan(v)]
        return float(np.mean(vals)) if vals else float("nan")


def sample_episodes(
    clients: Sequence[ClientTensors],
    context_size: int,
    query_size: int,
    max_episodes: int,
    rng: np.random.Generator,
) -> list[tuple[ClientTensors, tuple[int, ...], tuple[int, ...]]]:
    """Fresh disjoint episodes from each client, then up to ``max_episodes`` of them.

    Clients too small for a full episode shrink the context so that at least one query remains.
    """
    pool = []
    for client in clients:
        k = min(context_size, max(1, client.n_pairs - 1))
        q = min(query_size, client.n_pairs - k)
        for ep in partition_episodes(client.n_pairs, k, q, rng):
            pool.append((client, ep.context, ep.query))
    if len(pool) > max_episodes:
        keep = rng.choice(len(pool), size=max_episodes, replace=False)
        pool = [pool[i] for i in sorted(keep)]
    return pool


def prior_context(
    model: PreferenceModel,
    state: ClientState,
    tau: float,
    generator: torch.Generator,
    use_mixture: bool = True,
) -> tuple[PriorContext, torch.Tensor | None]:
    """The prior for this step; returns the local alpha so the optimiser can train it.

    ``use_mixture=False`` (the prior warm-up) trains mixture methods against N(0, I).
    """
    if not model.spec.latent or model.prototypes is None:
        return PriorContext(None, None, None), None
    if not model.spec.mixture_prior or not use_mixture:
        return PriorContext(model.prototypes, None, None), None
    if state.alpha is None:
        state.alpha = model.log_pi.detach().clone()
    state.alpha.requires_grad_(True)
    w = gumbel_softmax_weights(state.alpha, tau, generator)
    return PriorContext(
        model.prototypes, model.prior_var, torch.log(w.clamp(min=1e-12))
    ), state.alpha


def compute_loss(
    model: PreferenceModel, batch: EpisodeBatch, cfg: ExperimentConfig, prior: PriorContext
) -> LossParts:
    outputs = model(batch, sample=True)
    return episode_loss(
        outputs, batch.query_label, batch.query_mask, model.spec, cfg.objective, prior
    )


def local_optimizer(model: PreferenceModel, cfg: ExperimentConfig) -> torch.optim.Optimizer:
    """The client's optimiser: heads at ``learning_rate``, LoRA adapters at their own rate."""
    head = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n]
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    groups = [{"params": head, "lr": cfg.train.learning_rate}]
    if lora:
        groups.append({"params": lora, "lr": cfg.train.lora_learning_rate})
    if cfg.train.local_optimizer == "sgd":
        return torch.optim.SGD(groups, weight_decay=cfg.train.weight_decay)
    return torch.optim.Adam(groups, weight_decay=cfg.train.weight_decay)


def train_local(
    model: PreferenceModel,
    clients: Sequence[ClientTensors],
    state: ClientState,
    cfg: ExperimentConfig,
    steps: int,
    tau: float,
    rng: np.random.Generator,
    device: torch.device,
) -> LocalResult:
    """Plain (non-private) local optimisation; the DP trainer shares this loss and batching."""
    model.train()
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    params = [p for p in model.parameters() if p.requires_grad]
    alpha_opt = None
    result = LocalResult()
    optimizer = local_optimizer(model, cfg)
    for _ in range(steps):
        items = sample_episodes(
            clients, cfg.train.context_size, cfg.train.query_size, cfg.train.episodes_per_step, rng
        )
        batch = make_batch(items).to(device)
        prior, alpha = prior_context(model, state, tau, generator, cfg.objective.use_mixture)
        if alpha is not None and alpha_opt is None:
            alpha_opt = torch.optim.Adam([alpha], lr=cfg.train.learning_rate)
        parts = compute_loss(model, batch, cfg, prior)
        loss = parts.total()
        optimizer.zero_grad(set_to_none=True)
        if alpha_opt is not None:
            alpha_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        optimizer.step()
        if alpha_opt is not None:
            alpha_opt.step()
        result.steps.append(
            StepLog(
                loss=float(loss.detach()),
                bt=float(parts.bt.detach().mean()),
                kl=float(parts.kl.detach().mean()) if parts.kl is not None else float("nan"),
                pull=float(parts.pull.detach().mean()) if parts.pull is not None else float("nan"),
            )
        )
    if state.alpha is not None:
        state.alpha = state.alpha.detach()
    state.rounds_trained += 1
    return result
