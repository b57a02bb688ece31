"""The federated Gumbel-Softmax mixture prior (METHOD.md section 3).

Global state (broadcast every round): prototypes P (K x d, trained and averaged like any other
weight), log mixture weights log pi (K) and per-component variances s_k^2 (K). Each client keeps
its own logits alpha (K), started from log pi and never sent anywhere, and trains against
p_i(z) = sum_k w_k N(z; P_k, s_k^2 I) with w = GumbelSoftmax(alpha, tau).

The server never sees a client's statistics: it rebuilds pi and s^2 from SUMS of the sufficient
statistics n_k = sum_e r_ek and v_k = sum_e r_ek ||mu_e - P_k||^2 / d (one federated EM step), so
the same code runs unchanged when the sums come out of secure aggregation.
"""

from __future__ import annotations

import math

import torch

LOG_2PI = math.log(2.0 * math.pi)


def init_prototypes(n_components: int, latent_dim: int, scale: float, seed: int) -> torch.Tensor:
    """K orthogonal prototypes of norm ``scale``: QR of a seeded Gaussian matrix."""
    gen = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(latent_dim, n_components, generator=gen))
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # unique QR: deterministic signs
    return (q.T * scale).contiguous()


def tau_schedule(round_index: int, rounds: int, tau_start: float, tau_end: float) -> float:
    """Geometric annealing from tau_start (first round) to tau_end (last round)."""
    if rounds <= 1:
        return tau_end
    frac = min(max(round_index / (rounds - 1), 0.0), 1.0)
    return float(tau_start * (tau_end / tau_start) ** frac)


def gumbel_softmax_weights(
    alpha: torch.Tensor, tau: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One relaxed draw w ~ GumbelSoftmax(alpha, tau), differentiable in alpha."""
    u = torch.rand(alpha.shape, generator=generator, dtype=alpha.dtype).clamp(1e-9, 1 - 1e-9)
    gumbel = -torch.log(-torch.log(u)).to(alpha.device)
    return torch.softmax((alpha + gumbel) / tau, dim=-1)


def component_log_densities(
    z: torch.Tensor, prototypes: torch.Tensor, variances: torch.Tensor
) -> torch.Tensor:
    """log N(z; P_k, s_k^2 I) for every component: shape (..., K)."""
    d = z.shape[-1]
    sq = ((z.unsqueeze(-2) - prototypes) ** 2).sum(-1)
    return -0.5 * (sq / variances + d * torch.log(variances) + d * LOG_2PI)


def log_mixture_density(
    z: torch.Tensor, prototypes: torch.Tensor, log_weights: torch.Tensor, variances: torch.Tensor
) -> torch.Tensor:
    """log sum_k w_k N(z; P_k, s_k^2 I)."""
    return torch.logsumexp(log_weights + component_log_densities(z, prototypes, variances), dim=-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (z**2 + LOG_2PI).sum(-1)


def log_diag_gaussian(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return -0.5 * (((z - mu) ** 2) / logvar.exp() + logvar + LOG_2PI).sum(-1)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Closed-form KL(N(mu, diag e^logvar) || N(0, I)) per dimension: shape like mu."""
    return 0.5 * (mu**2 + logvar.exp() - 1.0 - logvar)


def responsibilities(
    mu: torch.Tensor, prototypes: torch.Tensor, log_pi: torch.Tensor, variances: torch.Tensor
) -> torch.Tensor:
    """r_ek proportional to pi_k N(mu_e; P_k, s_k^2 I); rows sum to 1."""
    return torch.softmax(log_pi + component_log_densities(mu, prototypes, variances), dim=-1)


def clip_rows(x: torch.Tensor, max_norm: float) -> torch.Tensor:
    norms = x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return x * (max_norm / norms).clamp(max=1.0)


def sufficient_statistics(
    mu: torch.Tensor,
    prototypes: torch.Tensor,
    log_pi: torch.Tensor,
    variances: torch.Tensor,
    mu_clip: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One client's (n_k, v_k) over its episodes' posterior means ``mu`` (E x d).

    Each episode's contribution is bounded: its responsibilities sum to 1 and ||mu_e|| is clipped,
    so ||mu_e - P_k||^2 / d <= (mu_clip + ||P_k||)^2 / d. That bound is what a DP release of these
    statistics is calibrated to.
    """
    mu = clip_rows(mu.detach(), mu_clip)
    r = responsibilities(mu, prototypes.detach(), log_pi, variances)
    sq = ((mu.unsqueeze(1) - prototypes.detach().unsqueeze(0)) ** 2).sum(-1) / mu.shape[-1]
    return r.sum(0), (r * sq).sum(0)


def moment_statistics(mu: torch.Tensor, mu_clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum mu_e, sum mu_e mu_e^T) of clipped posterior means: summed, they give the population
    mean and covariance from which the server re-seeds the prototypes."""
    mu = clip_rows(mu.detach().double(), mu_clip)
    return mu.sum(0), mu.T @ mu


def rebuild_prior(
    n_sum: torch.Tensor, v_sum: torch.Tensor, variance_floor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Server side: (log pi, s^2) from SUMMED statistics only.

    Noisy sums (DP) can be slightly negative; they are clamped, and an empty component keeps a
    small weight and the floor variance rather than dying out for good.
    """
    n = n_sum.clamp(min=1e-3)
    log_pi = torch.log(n / n.sum())
    variances = (v_sum.clamp(min=0.0) / n).clamp(min=variance_floor)
    return log_pi, variances


def orthogonality_penalty(prototypes: torch.Tensor, scale: float) -> torch.Tensor:
    """gamma-term of METHOD.md section 4: ||P P^T - s^2 I||_F^2."""
    k = prototypes.shape[0]
    gram = prototypes @ prototypes.T
    eye = torch.eye(k, dtype=prototypes.dtype, device=prototypes.device)
    return ((gram - scale**2 * eye) ** 2).sum()


def orthogonality_gradient(prototypes: torch.Tensor, scale: float) -> torch.Tensor:
    """d/dP of :func:`orthogonality_penalty` in closed form: ``4 (P P^T - s^2 I) P``.

    The DP trainer applies this data-independent term after the noisy step; the closed form
    spares it an autograd pass per step.
    """
    p = prototypes.detach()
    k = p.shape[0]
    eye = torch.eye(k, dtype=p.dtype, device=p.device)
    return 4.0 * (p @ p.T - scale**2 * eye) @ p
