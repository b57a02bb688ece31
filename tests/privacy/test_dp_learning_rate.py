"""DP-SGD at low epsilon stays finite (issue 4): the noise-capped DP learning rate and the guard.

With few episodes per client the expected batch B is tiny, and at low epsilon the noise
multiplier z is large, so one step at the plain learning rate adds noise of std
``lr * z * C / B`` to every coordinate, far above the weights' own scale: on the synthetic
protocol at eps 1 the loss reached 1e6 in the first round and NaN later. The DP path now caps
that per-step noise (``DPConfig.max_noise_step``) and stops with :class:`DPDivergedError` instead
of training on non-finite weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from dp_testkit import frozen_client, tiny_config, tiny_model

from fedvpa_secure.cli import main
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.train.dp_config import DEFAULT_MAX_NOISE_STEP, DPConfig
from fedvpa_secure.train.dp_local import (
    DPDivergedError,
    cap_learning_rates,
    noise_step,
    train_local_dp,
)
from fedvpa_secure.train.local import ClientState

CPU = torch.device("cpu")
CACHE = str(Path(__file__).resolve().parents[2] / ".cache" / "embeddings")
EPS1_NOISE = 60.4  # z that --dp-epsilon 1 calibrates for the default 40 rounds (prior z 80)


def _optimizer() -> torch.optim.Optimizer:
    head, lora = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    return torch.optim.SGD([{"params": [head], "lr": 0.1}, {"params": [lora], "lr": 5e-4}])


def test_noise_cap_lowers_only_the_rates_that_exceed_it() -> None:
    assert noise_step(0.1, 15.0, 1.0, 2) == pytest.approx(0.75)
    opt = _optimizer()
    rates = cap_learning_rates(opt, 15.0, 1.0, 2, max_noise_step=0.01)
    assert rates == pytest.approx([0.01 * 2 / 15.0, 5e-4])
    assert [g["lr"] for g in opt.param_groups] == rates
    assert cap_learning_rates(_optimizer(), 15.0, 1.0, 2, learning_rate=1e-3) == [1e-3, 5e-4]
    assert cap_learning_rates(_optimizer(), 0.0, 1.0, 2, max_noise_step=0.01) == [0.1, 5e-4]


def test_dp_learning_rate_fields_are_validated() -> None:
    assert DPConfig(target_epsilon=1.0).max_noise_step == DEFAULT_MAX_NOISE_STEP
    assert DPConfig(target_epsilon=1.0, max_noise_step=None).max_noise_step is None
    with pytest.raises(ConfigError, match="max_noise_step"):
        DPConfig(target_epsilon=1.0, max_noise_step=0.0)
    with pytest.raises(ConfigError, match="learning_rate"):
        DPConfig(target_epsilon=1.0, learning_rate=float("nan"))


def _train(z: float, clip: float, cap: float | None, steps: int = 1):
    cfg = tiny_config("monolithic", local_steps=steps)
    model = tiny_model(cfg, 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_local_dp(
        model,
        [frozen_client()],
        ClientState(),
        cfg,
        steps,
        1.0,
        np.random.default_rng(0),
        CPU,
        z,
        clip,
        "vmap",
        torch.Generator().manual_seed(1),
        max_noise_step=cap,
    )
    moved = torch.cat([(p.detach() - before[n]).reshape(-1) for n, p in model.named_parameters()])
    return result, moved


def test_the_cap_bounds_each_steps_noise() -> None:
    result, moved = _train(z=1e6, clip=1.0, cap=0.01)
    assert result.learning_rates[0] < 1e-7
    assert 0.005 < float(moved.std()) < 0.02  # the noise std of one step is the cap


def test_non_finite_weights_stop_training_with_a_clear_error() -> None:
    with pytest.raises(DPDivergedError, match=r"diverged at local step 1.*learning_rate"):
        _train(z=1e30, clip=1e10, cap=None)  # noise std 1e40 overflows float32


def test_dp_run_at_epsilon_1_on_synthetic_stays_finite(tmp_path: Path) -> None:
    # The default synthetic clients (64 pairs: two episodes, so B = 2 at q = 1) with the noise
    # that eps 1 needs over the default 40 rounds; three rounds are enough to diverge without
    # the cap (the loss was ~1e6 after one round at eps 4, which needs far less noise).
    argv = [
        "experiment",
        "--data",
        "synthetic",
        "--method",
        "fedvpa-gp",
        "--clients",
        "4",
        "--eval-clients",
        "2",
        "--rounds",
        "3",
        "--dp-epsilon",
        "1",
        "--noise-multiplier",
        str(EPS1_NOISE),
        "--prior-noise-multiplier",
        "80",
        "--device",
        "cpu",
        "--cache-dir",
        CACHE,
        "--out",
        str(tmp_path),
    ]
    torch.set_num_threads(1)
    assert main(argv) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    losses = [r["loss"] for r in report["rounds"]]
    assert all(math.isfinite(x) and x < 50 for x in losses), losses
    assert math.isfinite(report["accuracy"]["overall"])
    assert report["privacy"]["record_level"]["epsilon"] <= 1.0
    assert report["privacy"]["record_level"]["max_noise_step"] == DEFAULT_MAX_NOISE_STEP


def test_empirical_audit_cli_passes_the_noise_cap() -> None:
    import argparse

    from fedvpa_secure.commands.empirical import add_arguments, settings_from_args

    parser = argparse.ArgumentParser()
    parser.add_argument("path", nargs="?")
    parser.add_argument("--out")
    add_arguments(parser)
    base = ["--empirical", "--dp", "--out", "x"]
    caps = [
        settings_from_args(parser.parse_args([*base, *extra])).dp.max_noise_step
        for extra in ([], ["--max-noise-step", "none"], ["--max-noise-step", "0.05"])
    ]
    assert caps == [DEFAULT_MAX_NOISE_STEP, None, 0.05]
