"""The server's side of the learner: the global model, the step from sums, evaluation, report.

The server never sees an individual update: :meth:`ServerLearner.apply` takes only the sums
(from secure aggregation or, in plain mode, :func:`plain_sum`) and calls the learner's
:func:`server_step`, which also rebuilds the mixture prior from the summed statistics.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.errors import AbortRound
from fedvpa_secure.model.backbone import pick_device
from fedvpa_secure.model.prior import tau_schedule
from fedvpa_secure.train.aggregation import (
    MAX_CLIENT_WEIGHT,
    WEIGHT,
    ServerOptimizer,
    Update,
    server_step,
)
from fedvpa_secure.train.data_setup import load_federated_data
from fedvpa_secure.train.evaluate import EvalEpisodes, evaluate
from fedvpa_secure.train.experiment import build_model
from fedvpa_secure.train.features import prepare_clients
from fedvpa_secure.train.federation import update_spec

log = logging.getLogger("fedvpa_secure.server")


def data_kwargs(cfg: ExperimentConfig) -> dict[str, Any]:
    d = cfg.data
    return {
        "eval_data_dir": d.eval_data_dir,
        "n_clients": d.n_clients,
        "n_eval_clients": d.n_eval_clients,
        "pairs_per_client": d.pairs_per_client,
        "eval_pairs_per_client": d.eval_pairs_per_client,
        "type_mix": d.type_mix,
        "max_pairs_per_subset": d.max_pairs_per_subset,
    }


def load_run_data(cfg: ExperimentConfig):
    """The run's federated data, partitioned exactly as the in-process experiment does."""
    flag = cfg.data.data_dir or ("synthetic" if cfg.data.protocol == "synthetic" else None)
    fed, _ = load_federated_data(flag, cfg.data.protocol, data_kwargs(cfg), cfg.train.seed)
    return fed


def checked_sums(sums: Update, survivors: int, *, dp: bool) -> Update:
    """The round's sums with a weight no single client can forge, or :class:`AbortRound`.

    Under DP (record or user level) every client's weight is 1 and the mean divides by the
    number of survivors, which the server knows, instead of by a summed weight in which one
    client could hide -3.99 and blow the mean up a hundredfold. Without DP the summed weight must
    lie where honest weights (each in [1, MAX_CLIENT_WEIGHT]) can put it. A non-finite sum is
    never applied.
    """
    bad = [k for k, v in sums.items() if not np.all(np.isfinite(v))]
    if bad:
        raise AbortRound(f"the round's sum is not finite in {bad[:3]}; the round is discarded")
    out = dict(sums)
    if dp:
        out[WEIGHT] = np.array([float(survivors)])
        return out
    weight = float(np.asarray(sums[WEIGHT]).reshape(-1)[0])
    if not survivors <= weight <= survivors * MAX_CLIENT_WEIGHT:
        raise AbortRound(
            f"the summed client weight {weight:.4g} is outside [{survivors}, "
            f"{survivors * MAX_CLIENT_WEIGHT:.4g}] for {survivors} survivors: a client sent a "
            "forged weight; the round is discarded"
        )
    return out


def state_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's full state as numpy arrays (what clients download)."""
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


class ServerLearner:
    """Global model, server optimizer and evaluation users for one run."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        fed = load_run_data(cfg)
        self.protocol = fed.protocol
        self.data_description = fed.description
        self.user_types = list(fed.user_types)
        prepared = prepare_clients(
            [], fed.eval_clients, self.user_types, cfg.model, cfg.cache_dir, self.device
        )
        self.model = build_model(cfg, prepared, len(self.user_types), self.device)
        self.optimizer = ServerOptimizer(
            self.model, cfg.train.server_optimizer, cfg.train.server_learning_rate
        )
        self.eval_clients = prepared.eval
        self._spec: dict[str, tuple[tuple[int, ...], str]] | None = None
        self.eval_episodes = EvalEpisodes.for_unseen_users(prepared.eval, cfg.train)

    def tau(self, round_index: int) -> float:
        c = self.cfg
        return tau_schedule(round_index, c.train.rounds, c.objective.tau_start, c.objective.tau_end)

    def update_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """name -> (shape, dtype) of a client's update (for the secure-aggregation layout).

        Derived by running the learner's own ``client_update`` on an evaluation user (public to
        the server), so the layout follows the learner when its update gains a statistic.
        """
        if self._spec is None:
            self._spec = update_spec(self.model, self.eval_clients[0], self.cfg, self.device)
        return dict(self._spec)

    def apply(self, sums: Update, round_index: int) -> None:
        """One server step from the SUMS only: the learner's own ``server_step`` (global step,
        prior rebuilt from the summed statistics, prototype re-seeding when the warm-up ends)."""
        server_step(self.model, sums, self.optimizer, self.cfg, round_index)

    def quick_metrics(self) -> dict[str, float]:
        acc = evaluate(self.model, self.eval_episodes, self.user_types, self.device, full=False)
        return {
            "eval_accuracy": float(acc["accuracy"]["overall"]),
            "eval_conflicting": float(acc["accuracy"]["conflicting"]),
        }

    def final_report(self) -> dict[str, Any]:
        return evaluate(self.model, self.eval_episodes, self.user_types, self.device, full=True)

    def save_optimizer(self, path: Path) -> None:
        opt = self.optimizer.optimizer
        torch.save({} if opt is None else opt.state_dict(), path)

    def load_optimizer(self, path: Path) -> None:
        opt = self.optimizer.optimizer
        if opt is not None and path.exists():
            opt.load_state_dict(torch.load(path, weights_only=True))
