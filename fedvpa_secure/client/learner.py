"""The client's side of the learner: its own data, the local model, one round's update.

Randomness per round is derived from (run seed, model version, client index), so a round is
reproducible (the equivalence test relies on it) while a retried round (a new model version)
trains with fresh randomness: two sums over the same updates would reveal their difference.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fedvpa_secure.client.shards import client_index, load_client_data
from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.data.types import ClientData
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.model.backbone import pick_device
from fedvpa_secure.train.aggregation import Update
from fedvpa_secure.train.experiment import build_model
from fedvpa_secure.train.features import prepare_clients
from fedvpa_secure.train.federation import client_round, update_spec
from fedvpa_secure.train.local import ClientState


def own_data(
    cfg: ExperimentConfig,
    client_id: str,
    data_dir: str | Path | None,
    user_type: str | None = None,
) -> tuple[ClientData, list[str]]:
    """This client's data: a shard or HH-RLHF folder, or regenerated deterministically."""
    from fedvpa_secure.server.learner import load_run_data

    if data_dir is not None:
        from fedvpa_secure.data import protocol_user_types

        shard = load_client_data(data_dir, client_id, cfg.data.protocol, user_type)
        return shard, list(protocol_user_types(cfg.data.protocol))
    fed = load_run_data(cfg)
    idx = client_index(client_id)
    if idx >= len(fed.train_clients):
        raise ConfigError(
            f"client {client_id!r} has index {idx} but the run has {len(fed.train_clients)} "
            "training clients"
        )
    return fed.train_clients[idx], list(fed.user_types)


def round_seed(seed: int, model_version: str, client_id: str) -> int:
    digest = hashlib.sha256(f"{seed}|{model_version}|{client_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class ClientLearner:
    """Local model and state for one client process."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        client_id: str,
        data_dir: str | Path | None,
        user_type: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.device = pick_device(cfg.device)
        data, user_types = own_data(cfg, client_id, data_dir, user_type)
        prepared = prepare_clients([data], [], user_types, cfg.model, cfg.cache_dir, self.device)
        self.tensors = prepared.train[0]
        self.model = build_model(cfg, prepared, len(user_types), self.device)
        self.state = ClientState()
        self.n_pairs = len(data.pairs)
        self.dp = getattr(cfg, "dp", None)
        self.accountant = None
        self.noise_multiplier: float | None = None
        self._spec: dict[str, tuple[tuple[int, ...], str]] | None = None

    @property
    def uses_dp(self) -> bool:
        return self.dp is not None

    def open_dp(self, state_dir: Path, run_id: str, min_noise_multiplier: float = 0.0) -> None:
        """Record-level DP-SGD (the learner's ``dp_round``): open this client's ledger and
        calibrate its noise for the whole run before any data is touched; the noise multiplier
        never goes below the client's own ``min_noise_multiplier``."""
        if self.dp is None:
            return
        from fedvpa_secure.train import dp_round
        from fedvpa_secure.train.dp_local import sample_rate

        self.accountant = dp_round.open_client_accountant(
            state_dir, run_id, self.client_id, self.dp
        )
        calibrated = dp_round.calibrate_client_noise(
            self.dp,
            sample_rate([self.tensors], self.cfg),
            self.cfg.train.local_steps,
            self.cfg.train.rounds,
            bool(self.model.spec.mixture_prior),
        )
        self.noise_multiplier = max(calibrated, float(min_noise_multiplier))

    def update_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """name -> (shape, dtype) of this client's update, derived as the server derives it
        (the learner's own ``client_update``), so the noise check knows the dimension before
        a round trains."""
        if self._spec is None:
            self._spec = update_spec(self.model, self.tensors, self.cfg, self.device)
        return dict(self._spec)

    def state_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {
            k: (tuple(v.shape), v.detach().cpu().numpy().dtype.newbyteorder("<").str)
            for k, v in self.model.state_dict().items()
        }

    def train_round(
        self, global_state: dict[str, np.ndarray], tau: float, model_version: str
    ) -> Update:
        seed = round_seed(self.cfg.train.seed, model_version, self.client_id)
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        state = {k: torch.from_numpy(v).to(self.device) for k, v in global_state.items()}
        # the per-round loss weights and prior warm-up, exactly as the in-process federation
        round_index = int(model_version.split(".")[0])
        cfg = replace(
            self.cfg, objective=self.cfg.objective.at_round(round_index, self.cfg.train.rounds)
        )
        if self.accountant is not None and self.noise_multiplier is not None:
            from fedvpa_secure.train.dp_round import dp_client_round

            # budget checked first, ledger written before the update leaves this process
            update, _dp_result = dp_client_round(
                self.model,
                state,
                self.tensors,
                self.state,
                cfg,
                tau,
                rng,
                self.device,
                self.accountant,
                len(self.accountant.ledger.entries) + 1,  # this client's count, not the server's
                self.noise_multiplier,
            )
            return update
        update, _result = client_round(
            self.model, state, self.tensors, self.state, cfg, tau, rng, self.device
        )
        return update
