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

from fedvpa_secure.errors import ProtocolError
from fedvpa_secure.model.preference_model import PreferenceModel
from fedvpa_secure.model.prior import rebuild_prior

Update = dict[str, np.ndarray]
Aggregator = Callable[[Sequence[Update]], Update]

DELTA_PREFIX = "delta/"
PRIOR_N = "prior/n"
PRIOR_V = "prior/v"
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
    prior_n: torch.Tensor | None,
    prior_v: torch.Tensor | None,
) -> Update:
    """The weighted delta plus prior statistics of one client, as float arrays."""
    w = float(min(weight, MAX_CLIENT_WEIGHT))
    update: Update = {}
    for name, value in local_model.trainable_state().items():
        delta = value.detach().cpu().float() - global_state[name].cpu().float()
        update[DELTA_PREFIX + name] = (w * delta).numpy()
    if prior_n is not None and prior_v is not None:
        update[PRIOR_N] = prior_n.detach().cpu().double().numpy()
        update[PRIOR_V] = prior_v.detach().cpu().double().numpy()
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
