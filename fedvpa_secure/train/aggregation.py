"""What a client sends and what the server does with the SUM of what clients send.

A client's update is a flat dict of named float arrays: its weighted model delta
(``delta/<param>``), the mixture prior's sufficient statistics (``prior/n``, ``prior/v``) and its
weight (``weight``). The server only ever receives the element-wise sum over clients — from
:func:`plain_sum` in-process, or from secure aggregation, which has exactly the same signature —
and :func:`apply_sums` turns that sum into the next global model and prior.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.errors import ProtocolError
from fedvpa_secure.model.preference_model import PreferenceModel
from fedvpa_secure.model.prior import rebuild_prior

Update = dict[str, np.ndarray]
Aggregator = Callable[[Sequence[Update]], Update]

DELTA_PREFIX = "delta/"
PRIOR_N = "prior/n"
PRIOR_V = "prior/v"
PRIOR_M1 = "prior/m1"  # sum of clipped posterior means (d)
PRIOR_M2 = "prior/m2"  # sum of their outer products (d*d), for re-seeding the prototypes
PRIOR_LL = "prior/ll"  # likelihood posterior: sum of per-episode mean context log-lik (K)
# each episode's per-pair mean log-likelihood is clamped to [-LL_FLOOR, 0] before it is summed,
# which bounds one episode's share of prior/ll and the range the population mean can take
LL_FLOOR = 10.0
PRIOR_KEYS = {"n": PRIOR_N, "v": PRIOR_V, "m1": PRIOR_M1, "m2": PRIOR_M2, "ll": PRIOR_LL}
WEIGHT = "weight"
MAX_CLIENT_WEIGHT = 4096.0  # example counts are capped so one client cannot dominate the average


def plain_sum(updates: Sequence[Update]) -> Update:
    """Element-wise sum of updates with identical keys and shapes (the non-secure baseline)."""
    if not updates:
        raise ProtocolError("no client updates to aggregate")
    keys = sorted(updates[0])
    for u in updates[1:]:
        if sorted(u) != keys:
            raise ProtocolError("client updates have different tensor names; refusing to sum")
    return {k: np.sum([np.asarray(u[k], dtype=np.float64) for u in updates], axis=0) for k in keys}


def client_update(
    global_state: dict[str, torch.Tensor],
    local_model: PreferenceModel,
    weight: float,
    prior_stats: dict[str, torch.Tensor] | None,
) -> Update:
    """The weighted delta plus prior statistics (n, v, m1, m2) of one client, as float arrays."""
    w = float(min(weight, MAX_CLIENT_WEIGHT))
    update: Update = {}
    for name, value in local_model.trainable_state().items():
        delta = value.detach().cpu().float() - global_state[name].cpu().float()
        update[DELTA_PREFIX + name] = (w * delta).numpy()
    for short, key in PRIOR_KEYS.items():
        if prior_stats is not None and short in prior_stats:
            update[key] = prior_stats[short].detach().cpu().double().reshape(-1).numpy()
    update[WEIGHT] = np.array([w])
    return update


class ServerOptimizer:
    """Turns the mean client delta into the global step.

    ``avg`` is FedAvg (step = server_lr * mean delta). ``adam`` is FedAdam (Reddi et al. 2021,
    "Adaptive Federated Optimization"): the mean delta is a pseudo-gradient for a server-side
    Adam. Both read only the aggregate, so they work unchanged under secure aggregation.
    """

    def __init__(self, model: PreferenceModel, kind: str, lr: float) -> None:
        self.kind = kind
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.optimizer = (
            torch.optim.Adam(self.params.values(), lr=lr, betas=(0.9, 0.999), eps=1e-8)
            if kind == "adam"
            else None
        )
        self.lr = lr

    @torch.no_grad()
    def step(self, mean_delta: dict[str, torch.Tensor]) -> None:
        if self.optimizer is None:
            for name, delta in mean_delta.items():
                self.params[name].add_(self.lr * delta)
            return
        for name, p in self.params.items():
            p.grad = -mean_delta[name] if name in mean_delta else torch.zeros_like(p)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def apply_sums(
    model: PreferenceModel,
    sums: Update,
    variance_floor: float,
    server_optimizer: ServerOptimizer | None = None,
) -> None:
    """Global step from the summed deltas, and prior rebuild from summed statistics only."""
    total_weight = float(sums[WEIGHT][0])
    if not total_weight > 0:
        raise ProtocolError(f"aggregate weight is {total_weight}; no client contributed")
    params = dict(model.named_parameters())
    mean_delta = {}
    for key, value in sums.items():
        if key.startswith(DELTA_PREFIX):
            name = key[len(DELTA_PREFIX) :]
            p = params[name]
            mean_delta[name] = torch.as_tensor(value / total_weight, dtype=p.dtype, device=p.device)
    (server_optimizer or ServerOptimizer(model, "avg", 1.0)).step(mean_delta)
    if PRIOR_N in sums and model.spec.mixture_prior:
        log_pi, var = rebuild_prior(
            torch.as_tensor(sums[PRIOR_N], dtype=torch.float32),
            torch.as_tensor(sums[PRIOR_V], dtype=torch.float32),
            variance_floor,
        )
        model.log_pi.copy_(log_pi.to(model.log_pi.device))
        model.prior_var.copy_(var.to(model.prior_var.device))
    if PRIOR_LL in sums and PRIOR_N in sums and getattr(model, "likelihood_posterior", False):
        episodes = max(float(np.sum(sums[PRIOR_N])), 1.0)
        # a mean of values in [-LL_FLOOR, 0] lies there too; under user-level DP the noisy sums
        # can put the ratio outside (few users: small sum of n), and the E-step would then
        # send everyone to one component. Clamping is post-processing: no privacy cost.
        mean_ll = np.clip(np.asarray(sums[PRIOR_LL], np.float64) / episodes, -LL_FLOOR, 0.0)
        offset = torch.as_tensor(mean_ll, dtype=model.ll_offset.dtype)
        model.ll_offset.copy_((offset - offset.mean()).to(model.ll_offset.device))


@torch.no_grad()
def reseed_prototypes_from_sums(model: PreferenceModel, sums: Update, scale: float) -> bool:
    """Place the prototypes so that they split the population along its main axes of variation.

    Used once, when mixture-prior methods leave the N(0, I) warm-up. By then the encoder has
    separated the user types, but by a small distance next to the prototypes' norm s, so random
    prototypes would put every user in the same component. From SUMMED first and second moments
    of the posterior means (no per-client statistic) the server takes the top K-1 principal
    directions, puts a regular simplex of K points in that subspace, and adds one common offset
    orthogonal to it so that the prototypes stay mutually orthogonal with norm s (the state the
    orthogonality loss asks for). Equal-norm prototypes split space by hyperplanes through the
    origin, so the encoder's output bias is shifted once to centre the population on those axes.
    Returns False, changing nothing, if the sums are missing.
    """
    if PRIOR_M1 not in sums or PRIOR_M2 not in sums or model.prototypes is None:
        return False
    k, d = model.prototypes.shape
    count = float(np.sum(sums[PRIOR_N]))
    if count < 2:
        return False
    mean = np.asarray(sums[PRIOR_M1], dtype=np.float64) / count
    second = np.asarray(sums[PRIOR_M2], dtype=np.float64).reshape(d, d) / count
    cov = second - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh((cov + cov.T) / 2)
    order = np.argsort(eigval)[::-1]
    basis = eigvec[:, order[: k - 1]]  # d x (K-1): the population's main axes
    offset_dir = eigvec[:, order[k - 1]]  # orthogonal to them
    simplex = np.eye(k) - 1.0 / k  # K centred points spanning K-1 dimensions
    u, _, _ = np.linalg.svd(simplex, full_matrices=False)
    coords = simplex @ u[:, : k - 1]  # K x (K-1), a regular simplex
    coords /= np.linalg.norm(coords, axis=1, keepdims=True)
    radius = scale * np.sqrt((k - 1) / k)
    offset = scale / np.sqrt(k)
    protos = radius * coords @ basis.T + offset * offset_dir[None, :]
    model.prototypes.copy_(torch.as_tensor(protos, dtype=model.prototypes.dtype))
    if model.encoder is not None:
        shift = basis @ (basis.T @ mean)
        bias = model.encoder.mu.bias
        bias.sub_(torch.as_tensor(shift, dtype=bias.dtype, device=bias.device))
    if model.spec.mixture_prior:
        model.log_pi.fill_(-float(np.log(k)))
        model.prior_var.fill_(1.0)
    return True


def server_step(
    model: PreferenceModel,
    sums: Update,
    server_optimizer: ServerOptimizer,
    cfg: ExperimentConfig,
    round_index: int,
) -> None:
    """Everything the server does with one round's sums (the in-process and gRPC servers share it).

    The global step and prior rebuild, then, at the end of the prior warm-up, the one-time
    re-seeding of the prototypes for the mixture phase.
    """
    rounds = cfg.train.rounds
    if round_index < int(cfg.train.server_adam_start_fraction * rounds):
        server_optimizer = ServerOptimizer(model, "avg", 1.0)  # FedAvg until FedAdam starts
    apply_sums(model, sums, cfg.objective.variance_floor, server_optimizer)
    next_uses_mixture = cfg.objective.at_round(round_index + 1, rounds).use_mixture
    if (
        model.spec.mixture_prior
        # the likelihood posterior conditions the decoder on the prototypes themselves: moving
        # them would scramble what the decoder has learnt for each
        and model.encoder is not None
        and next_uses_mixture
        and not cfg.objective.at_round(round_index, rounds).use_mixture
    ):
        reseed_prototypes_from_sums(model, sums, cfg.objective.prior_scale)
