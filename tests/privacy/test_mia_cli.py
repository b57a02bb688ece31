"""``fedvpa-secure mia RUN_DIR`` against the model an experiment published (model.safetensors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedvpa_secure.cli import main
from fedvpa_secure.config import DataConfig, ExperimentConfig, TrainConfig
from fedvpa_secure.data import build_federated_data
from fedvpa_secure.errors import DataError
from fedvpa_secure.train.experiment import run_experiment
from fedvpa_secure.train.model_io import MODEL_FILE, load_global_model, published_state

REPO = Path(__file__).resolve().parents[2]
CACHE = str(REPO / ".cache" / "embeddings")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    data_cfg = DataConfig(
        n_clients=4, n_eval_clients=4, pairs_per_client=16, eval_pairs_per_client=16
    )
    cfg = ExperimentConfig(
        device="cpu",
        cache_dir=CACHE,
        train=TrainConfig(rounds=3, local_steps=3, context_size=8, query_size=4),
        data=data_cfg,
    )
    data = build_federated_data(
        "synthetic", None, n_clients=4, pairs_per_client=16, n_eval_clients=4, seed=0
    )
    run_experiment(cfg, data, out)
    return out


def test_experiment_publishes_its_global_model(run_dir: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(run_dir / MODEL_FILE))
    assert "decoder.net.0.weight" in state or any(k.startswith("decoder.") for k in state)
    assert not any(k.startswith("backbone.") for k in state)


def test_mia_writes_its_report(capsys, run_dir: Path, tmp_path: Path) -> None:
    code = main(["mia", str(run_dir), "--reference-models", "2", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads((tmp_path / "mia.json").read_text())
    for level, members in (("record", 4 * 8), ("user", 4)):
        for attack in ("loss", "lira"):
            s = report[level][attack]
            assert 0.0 <= s["auc"] <= 1.0 and s["auc_se"] > 0
            assert {"tpr_at_fpr_0.01", "tpr_at_fpr_0.001"} <= set(s)
            assert s["n_members"] == members
    assert "record loss" in out
    assert (tmp_path / "mia_roc.png").read_bytes()[:4] == b"\x89PNG"


def test_mia_needs_a_run_directory(capsys, tmp_path: Path) -> None:
    assert main(["mia", str(tmp_path)]) == 2
    assert "report.json" in capsys.readouterr().err


def test_a_mismatched_model_file_is_refused(run_dir: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(run_dir / MODEL_FILE))
    state.pop(sorted(state)[0])
    save_file(state, str(tmp_path / MODEL_FILE))

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(2))

    with pytest.raises(DataError, match="does not match"):
        load_global_model(Tiny(), tmp_path / MODEL_FILE)  # type: ignore[arg-type]
    assert published_state(Tiny())["w"].shape == (2,)  # type: ignore[arg-type]
