"""`experiment` takes the measured HH settings where a flag is not given (config.PROTOCOL_DEFAULTS).

p1, p2 and p3 share the learner recipe and differ in sizes, which must fit the project's
HH-RLHF copy. An explicit flag always wins, the synthetic protocol keeps the dataclass
defaults, and a default that cannot apply to a method (the likelihood posterior without
prototypes, or under DP) falls back instead of failing; an explicit one that cannot apply
fails with the reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from learner_kit import HH_RLHF as REAL

from fedvpa_secure.cli import build_parser
from fedvpa_secure.commands.experiment import config_from_args, data_kwargs
from fedvpa_secure.config import (
    PROTOCOL_DEFAULTS,
    DataConfig,
    ExperimentConfig,
    protocol_defaults,
)
from fedvpa_secure.data import split_folder
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.train.data_setup import load_federated_data

BASE = ExperimentConfig()


def _config(protocol: str, *flags: str) -> ExperimentConfig:
    args = build_parser("experiment").parse_args(["experiment", "--out", "unused", *flags])
    return config_from_args(args, DataConfig(protocol=protocol))


@pytest.mark.parametrize(("protocol", "eval_context"), [("p1", 128), ("p2", 160), ("p3", 256)])
def test_hh_protocols_without_flags_run_the_measured_recipe(
    protocol: str, eval_context: int
) -> None:
    cfg = _config(protocol, "--method", "fedvpa-gp")
    want = PROTOCOL_DEFAULTS[protocol]
    for group in ("model", "objective", "train"):
        for name, value in want[group].items():
            assert getattr(getattr(cfg, group), name) == value, f"{group}.{name}"
    assert cfg.model.head == "linear" and cfg.model.domain_gate
    assert cfg.model.posterior == "likelihood"
    assert cfg.train.evaluation_context_size == eval_context


@pytest.mark.parametrize("method", ["monolithic", "oracle", "fedvpl", "central-vpl"])
def test_methods_without_prototypes_keep_the_encoder_under_the_recipe(method: str) -> None:
    cfg = _config("p3", "--method", method)
    assert cfg.model.posterior == "encoder"
    assert cfg.model.head == "linear" and cfg.model.domain_gate  # same features as FedVPA-GP


def test_explicit_flags_win_over_the_recipe() -> None:
    cfg = _config(
        "p3",
        "--head",
        "mlp",
        "--no-domain-gate",
        "--posterior",
        "encoder",
        "--context-size",
        "16",
        "--eval-context-size",
        "0",
        "--beta",
        "0.01",
        "--server-optimizer",
        "avg",
    )
    assert (cfg.model.head, cfg.model.domain_gate, cfg.model.posterior) == ("mlp", False, "encoder")
    assert cfg.train.context_size == 16 and cfg.train.evaluation_context_size == 16
    assert cfg.objective.beta == 0.01 and cfg.train.server_optimizer == "avg"


def test_other_protocols_keep_the_dataclass_defaults() -> None:
    cfg = _config("synthetic", "--method", "fedvpa-gp")
    assert cfg.model == BASE.model
    assert cfg.objective == BASE.objective
    assert cfg.train.context_size == BASE.train.context_size
    assert cfg.train.server_optimizer == BASE.train.server_optimizer
    assert protocol_defaults("synthetic", "model") == {}


def test_dp_falls_back_to_the_encoder_and_an_explicit_likelihood_says_why() -> None:
    cfg = _config("p3", "--method", "fedvpa-gp", "--dp-epsilon", "8")
    assert cfg.model.posterior == "encoder" and cfg.dp is not None
    with pytest.raises(ConfigError, match="does not run under record-level DP-SGD"):
        _config("p3", "--method", "fedvpa-gp", "--dp-epsilon", "8", "--posterior", "likelihood")


def test_data_sizes_left_out_take_the_protocol_defaults() -> None:
    args = build_parser("experiment").parse_args(["experiment", "--out", "x", "--clients", "5"])
    given = data_kwargs(args)
    assert given["n_clients"] == 5 and "pairs_per_client" not in given
    merged = DataConfig(protocol="p3", **{**protocol_defaults("p3", "data"), **given})
    assert merged.n_clients == 5  # the flag
    assert merged.pairs_per_client == PROTOCOL_DEFAULTS["p3"]["data"]["pairs_per_client"]
    assert merged.eval_pairs_per_client == PROTOCOL_DEFAULTS["p3"]["data"]["eval_pairs_per_client"]


@pytest.fixture(scope="module")
def real_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The README's split of the project's HH-RLHF copy (`fedvpa-secure split`, 30%, seed 0)."""
    if not REAL.is_dir():
        pytest.skip(f"no HH-RLHF folder at {REAL}")
    root = tmp_path_factory.mktemp("hh-split")
    split_folder(REAL, root / "train", root / "eval", 0.3, 0)
    return root / "train", root / "eval"


@pytest.mark.parametrize("protocol", ["p1", "p2", "p3"])
def test_hh_defaults_fit_the_projects_data(protocol: str, real_split: tuple[Path, Path]) -> None:
    """The documented command, flags left out, builds every client it asks for on this data."""
    train_dir, eval_dir = real_split
    want = PROTOCOL_DEFAULTS[protocol]["data"]
    fed, cfg = load_federated_data(str(train_dir), protocol, {"eval_data_dir": str(eval_dir)}, 0)
    assert (cfg.n_clients, cfg.n_eval_clients) == (want["n_clients"], want["n_eval_clients"])
    train_sizes = [len(c.pairs) for c in fed.train_clients]
    eval_sizes = [len(c.pairs) for c in fed.eval_clients]
    assert train_sizes == [want["pairs_per_client"]] * want["n_clients"]
    assert eval_sizes == [want["eval_pairs_per_client"]] * want["n_eval_clients"]
    # the control: twice the training clients at these sizes is more than the data holds
    with pytest.raises(ConfigError, match="lower the number of clients or pairs per client"):
        load_federated_data(
            str(train_dir),
            protocol,
            {"eval_data_dir": str(eval_dir), "n_clients": 2 * want["n_clients"]},
            0,
        )
