"""server.toml validation and atomic checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedvpa_secure.errors import ConfigError
from fedvpa_secure.server.checkpoint import CheckpointStore, RunState
from fedvpa_secure.server.settings import load_server_settings

BASE = """
registry = "certs/registry.json"
[tls]
cert = "s.pem"
key = "s.key"
ca = "ca.pem"
"""


def test_settings_resolve_paths_and_nested_experiment(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text(
        BASE + "[rounds]\nclients_per_round = 4\n[experiment.train]\nrounds = 7\nseed = 3\n"
    )
    s = load_server_settings(path)
    assert s.registry == tmp_path / "certs" / "registry.json"
    assert s.rounds.clients_per_round == 4 and s.experiment.train.rounds == 7
    assert s.checkpoints == tmp_path / "run" / "checkpoints"


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ("[rounds]\nmin_survivors = 2\n", "min_survivors"),
        ("[rounds]\nclients_per_round = 3\nmin_survivors = 4\n", "clients_per_round"),
        ("[rounds]\nbogus = 1\n", "unknown key"),
        # a top-level typo used to leave the whole table at its defaults, silently
        ("[round]\nclients_per_round = 4\n", "'round' -> did you mean 'rounds'"),
        ("[limits]\nstream_deadline = 5\n", "did you mean 'stream_deadline_s'"),
        ("certs = 'x'\n", r"server config \[tls\] has unknown key"),  # BASE ends in [tls]
        ("[experiment]\nmethod = 'nope'\n", "method"),
        (
            "[experiment]\nmethod = 'fedvpl'\n[experiment.model]\nposterior = 'likelihood'\n",
            "needs prototypes",
        ),
    ],
)
def test_bad_settings_name_the_field(tmp_path: Path, extra: str, match: str) -> None:
    path = tmp_path / "server.toml"
    path.write_text(BASE + extra)
    with pytest.raises(ConfigError, match=match):
        load_server_settings(path)


def test_checkpoint_round_trip_and_state(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path / "ck")
    assert store.load_state() == RunState()
    weights = {"w": np.arange(4, dtype=np.float32), "log_pi": np.zeros(2, np.float32)}
    name = store.save_round(1, weights, lambda d: (d / "extra.txt").write_text("x"))
    back = store.load_weights(name)
    assert np.array_equal(back["w"], weights["w"])
    assert (store.root / name / "prior.safetensors").exists()
    assert (store.root / name / "extra.txt").exists()
    assert not [p for p in store.root.iterdir() if p.name.startswith(".")], "temp dirs left"
    store.save_state(RunState(completed_rounds=1, next_attempt=2, latest=name))
    assert store.load_state().next_attempt == 2


def test_a_top_level_typo_is_named_with_the_key_it_resembles(tmp_path: Path) -> None:
    path = tmp_path / "server.toml"
    path.write_text('run_idd = "r1"\n' + BASE)
    with pytest.raises(ConfigError, match="'run_idd' -> did you mean 'run_id'"):
        load_server_settings(path)
    path.write_text('run_id = "r1"\n' + BASE)  # control: the key spelled right is taken
    assert load_server_settings(path).run_id == "r1"
