"""A federation client with ``experiment.dp`` trains with the learner's DP-SGD and ledger."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedvpa_secure.client.learner import ClientLearner
from fedvpa_secure.server.learner import ServerLearner, state_arrays
from fedvpa_secure.server.settings import experiment_from_dict
from privacy import PersistentAccountant


def test_dp_client_round_records_before_release(tmp_path: Path) -> None:
    cfg = experiment_from_dict(
        {
            "device": "cpu",
            "cache_dir": str(tmp_path / "cache"),
            "model": {"backbone": "tiny-causal", "max_length": 32},
            "train": {"rounds": 2, "local_steps": 1, "server_optimizer": "avg"},
            "data": {
                "protocol": "synthetic",
                "n_clients": 3,
                "n_eval_clients": 2,
                "pairs_per_client": 16,
                "eval_pairs_per_client": 16,
            },
            "dp": {"noise_multiplier": 1.0, "epsilon_max": 100.0},
        }
    )
    server = ServerLearner(cfg)
    client = ClientLearner(cfg, "c001", None)
    assert client.uses_dp
    client.open_dp(tmp_path / "state", "dp-run")
    update = client.train_round(state_arrays(server.model), server.tau(0), "0.0")
    assert np.isfinite(update["weight"]).all()
    ledgers = list((tmp_path / "state").rglob("*.ledger.jsonl"))
    assert len(ledgers) == 1
    acc = PersistentAccountant.load(ledgers[0])
    assert len(acc.ledger) == 1 and acc.epsilon > 0
