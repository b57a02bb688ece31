"""The learner end to end through the real CLI: synthetic quick test, lora mode, bad input."""

from __future__ import annotations

import json

import pytest

from fedvpa_secure.cli import main


def _run(tmp_path, *args: str) -> dict:
    out = tmp_path / "run"
    code = main(["experiment", "--out", str(out), "--cache-dir", str(tmp_path / "cache"), *args])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    for plot in report["plots"].values():
        assert (out / plot).stat().st_size > 0
    return report


@pytest.mark.slow
def test_synthetic_fedvpa_gp_separates_conflicting_users_and_monolithic_cannot(tmp_path):
    """METHOD.md's quick correctness test: >= 90% on controversial pairs vs <= 60% for BT."""
    common = ["--data", "synthetic", "--clients", "10", "--rounds", "40", "--seed", "0"]
    gp = _run(tmp_path / "gp", *common, "--method", "fedvpa-gp")
    mono = _run(tmp_path / "mono", *common, "--method", "monolithic")
    assert gp["accuracy"]["conflicting"] >= 0.90
    assert mono["accuracy"]["conflicting"] <= 0.60
    assert gp["latent"]["silhouette"] > 0.5
    assert gp["switching_accuracy"]["prediction_flip_rate"] > 0.3
    for key in ("overall", "conflicting", "per_type"):
        assert key in gp["accuracy"]
    assert len(gp["rounds"]) == 40 and gp["seconds"] > 0


@pytest.mark.slow
def test_lora_mode_trains_adapters_of_a_tiny_causal_lm(tmp_path):
    report = _run(
        tmp_path,
        "--data",
        "synthetic",
        "--mode",
        "lora",
        "--backbone",
        "tiny-causal",
        "--clients",
        "3",
        "--rounds",
        "2",
        "--pairs-per-client",
        "12",
        "--eval-clients",
        "2",
        "--eval-pairs-per-client",
        "12",
        "--context-size",
        "4",
        "--query-size",
        "2",
        "--local-steps",
        "2",
        "--method",
        "fedvpa-gp",
        "--max-length",
        "64",
    )
    assert report["timing"]["mode"] == "lora"
    assert len(report["rounds"]) == 2


@pytest.mark.slow
def test_lora_mode_runs_with_the_real_minilm(tmp_path):
    report = _run(
        tmp_path,
        "--data",
        "synthetic",
        "--mode",
        "lora",
        "--clients",
        "2",
        "--rounds",
        "2",
        "--pairs-per-client",
        "8",
        "--eval-clients",
        "2",
        "--eval-pairs-per-client",
        "8",
        "--context-size",
        "3",
        "--query-size",
        "2",
        "--local-steps",
        "1",
        "--episodes-per-step",
        "1",
        "--max-length",
        "64",
        "--method",
        "fedvpl",
    )
    assert report["timing"]["mode"] == "lora"


def test_hh_protocol_without_hh_data_is_a_clear_error(tmp_path, capsys):
    code = main(["experiment", "--data", "synthetic", "--protocol", "p3", "--out", str(tmp_path)])
    assert code == 2
    assert "needs HH-RLHF data" in capsys.readouterr().err


def test_missing_data_folder_is_a_clear_error(tmp_path, capsys):
    code = main(["experiment", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err


def test_bad_type_mix_is_a_clear_error(tmp_path, capsys):
    code = main(
        ["experiment", "--data", "synthetic", "--type-mix", "0.2,0.2", "--out", str(tmp_path)]
    )
    assert code == 2
    assert "type_mix" in capsys.readouterr().err


def test_synthetic_protocol_ignores_hh_rlhf_dir(monkeypatch):
    from fedvpa_secure.train.data_setup import load_federated_data

    monkeypatch.setenv("HH_RLHF_DIR", "/nonexistent/hh-rlhf")
    kwargs = {
        "n_clients": 2,
        "n_eval_clients": 2,
        "pairs_per_client": 8,
        "eval_pairs_per_client": 8,
        "type_mix": (0.5, 0.5),
    }
    data, cfg = load_federated_data(None, "synthetic", kwargs, 0)
    assert cfg.protocol == "synthetic" and data.protocol == "synthetic"
