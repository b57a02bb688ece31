"""The local objective of METHOD.md section 4, per episode.

L = BT NLL + beta * KL(q(z|C) || p_i) + lambda * ||z - P_c*||^2 + gamma * ||P P^T - s^2 I||_F^2

The first three terms are per-episode (data-dependent, clipped per sample under DP). The
orthogonality term depends only on the prototypes, not on data, so it is returned separately: a
DP trainer applies its gradient as public post-processing instead of mixing it into per-sample
gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedvpa_secure.config import MethodSpec, ObjectiveConfig
from fedvpa_secure.model.prior import (
    component_log_densities,
    kl_standard_normal,
    log_diag_gaussian,
    log_mixture_density,
    orthogonality_penalty,
)


@dataclass
class PriorContext:
    """What the client trains against this step: global prototypes/variances, local weights."""

    # (K, d) model parameter (gradients flow); or (B, K, d), one detached copy per episode, when
    # the DP hooks engine wants per-episode prototype gradients (the data-independent
    # orthogonality term is then left to the caller)
    prototypes: torch.Tensor | None
    variances: torch.Tensor | None  # (K,) global s_k^2
    log_weights: torch.Tensor | None  # (K,) log Gumbel-Softmax draw w; None: N(0, I) prior


def bt_nll(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean Bradley-Terry negative log-likelihood over each episode's real query pairs."""
    nll = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")
    m = mask.to(nll.dtype)
    return (nll * m).sum(-1) / m.sum(-1).clamp(min=1.0)


def kl_to_prior(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    spec: MethodSpec,
    prior: PriorContext,
    n_samples: int,
) -> torch.Tensor:
    """KL(q(z|C) || prior) per episode.

    Against N(0, I) it is closed-form. Against the mixture it has no closed form, so it is the
    Monte Carlo estimate E_q[log q(z) - log sum_k w_k N(z; P_k, s_k^2 I)] with reparameterised
    samples (unbiased, differentiable in mu, logvar, P and the local logits).
    """
    if not spec.mixture_prior or prior.log_weights is None:
        return kl_standard_normal(mu, logvar).sum(-1)
    std = (0.5 * logvar).exp()
    eps = torch.randn((n_samples, *mu.shape), dtype=mu.dtype, device=mu.device)
    z = mu.unsqueeze(0) + eps * std.unsqueeze(0)
    log_q = log_diag_gaussian(z, mu.unsqueeze(0), logvar.unsqueeze(0))
    log_p = log_mixture_density(z, prior.prototypes, prior.log_weights, prior.variances)
    return (log_q - log_p).mean(0)


def kl_categorical(resp: torch.Tensor, prior: PriorContext) -> torch.Tensor:
    """KL(r || w) per episode for the likelihood posterior (a discrete latent over prototypes).

    ``w`` is the client's Gumbel-Softmax draw under the mixture prior, uniform otherwise.
    """
    k = resp.shape[-1]
    if prior.log_weights is None:
        log_w = resp.new_full((k,), -float(torch.log(torch.tensor(float(k)))))
    else:
        log_w = prior.log_weights
    return (resp * (torch.log(resp.clamp(min=1e-12)) - log_w)).sum(-1)


def pull_to_component(
    z: torch.Tensor, mu: torch.Tensor, prior: PriorContext, spec: MethodSpec
) -> torch.Tensor:
    """lambda-term: ||z - P_c*||^2 / d, c* = the component most responsible for this episode.

    c* is chosen locally from the episode's posterior mean (no server-side clustering, no
    oracle labels). Under the N(0, I) prior (FedVPL+Ortho) all components are weighted equally.
    The squared distance is divided by d (a deviation from the paper's plain norm): with
    prototypes of norm s = 5 the plain norm starts near 25-40 and swamps the BT term (~0.7), so
    every user is pulled to one prototype before the encoder can tell users apart (measured on
    synthetic data: FedVPA-GP stuck at 0.46 on controversial pairs). Per dimension, lambda = 1
    weighs the pull like one BT term whatever d is.
    """
    protos = prior.prototypes  # (K, d), or (B, K, d): one copy per episode (DP hooks engine)
    if spec.mixture_prior and prior.log_weights is not None:
        scores = prior.log_weights + component_log_densities(
            mu.detach(), protos.detach(), prior.variances
        )
    else:
        scores = -((mu.detach().unsqueeze(-2) - protos.detach()) ** 2).sum(-1)
    c_star = scores.argmax(-1)
    if protos.dim() == 3:
        chosen = protos[torch.arange(protos.shape[0], device=protos.device), c_star]
    else:
        chosen = protos[c_star]
    return ((z - chosen) ** 2).mean(-1)


@dataclass
class LossParts:
    per_episode: torch.Tensor  # (B,) data-dependent terms, weighted
    ortho: torch.Tensor  # scalar, data-independent, weighted
    bt: torch.Tensor  # (B,) unweighted, for logging
    kl: torch.Tensor | None
    pull: torch.Tensor | None

    def total(self) -> torch.Tensor:
        return self.per_episode.mean() + self.ortho


def episode_loss(
    outputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    mask: torch.Tensor,
    spec: MethodSpec,
    cfg: ObjectiveConfig,
    prior: PriorContext,
) -> LossParts:
    """All loss terms for a batch of episodes, by method switch."""
    bt = bt_nll(outputs["logits"], labels, mask)
    per_episode = bt
    if "domain_nll" in outputs:  # the domain gate's router (ModelConfig.domain_gate)
        per_episode = per_episode + cfg.domain_weight * outputs["domain_nll"]
    kl = pull = None
    ortho = bt.new_zeros(())
    if spec.latent:
        if "resp" in outputs:  # likelihood posterior: z is a mixture of prototypes, no encoder
            kl = kl_categorical(outputs["resp"], prior)
        else:
            kl = kl_to_prior(outputs["mu"], outputs["logvar"], spec, prior, cfg.kl_samples)
        per_episode = per_episode + cfg.beta * kl
        if spec.ortho_pull:
            if prior.prototypes.dim() == 2:  # per-episode copies: the DP trainer adds it itself
                ortho = cfg.ortho_weight * orthogonality_penalty(prior.prototypes, cfg.prior_scale)
            if cfg.pull_weight > 0:
                pull = pull_to_component(outputs["z"], outputs["mu"], prior, spec)
                per_episode = per_episode + cfg.pull_weight * pull
    return LossParts(per_episode=per_episode, ortho=ortho, bt=bt, kl=kl, pull=pull)
