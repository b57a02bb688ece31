"""A client's record-level accountant lives on disk: epsilon continues across rounds, restarts
and a killed process, never resets; a round that would cross the budget is refused up front."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from dp_testkit import frozen_client, tiny_config, tiny_model

from fedvpa_secure.errors import BudgetExceededError
from fedvpa_secure.train.dp_config import DPConfig
from fedvpa_secure.train.dp_round import (
    client_ledger_path,
    dp_client_round,
    open_client_accountant,
    round_event,
)
from fedvpa_secure.train.local import ClientState
from privacy import Ledger, make_accountant

CPU = torch.device("cpu")
DP = DPConfig(noise_multiplier=1.0, epsilon_max=50.0, prior_noise_multiplier=5.0)


def _round(run_dir: Path, client_id: str, round_index: int, dp: DPConfig = DP):
    cfg = tiny_config("fedvpa-gp", dp=dp, episodes_per_step=2)
    model = tiny_model(cfg, 0)
    acc = open_client_accountant(run_dir, "run", client_id, dp)  # a fresh object every round
    client = frozen_client(client_id)
    update, _ = dp_client_round(
        model,
        model.state_dict(),
        client,
        ClientState(),
        cfg,
        1.0,
        np.random.default_rng(round_index),
        CPU,
        acc,
        round_index,
        dp.noise_multiplier,
    )
    return acc, update


def test_epsilon_continues_across_reopen_and_matches_a_from_scratch_composition(tmp_path):
    a1, update = _round(tmp_path, "c0", 1)
    assert {"prior/n", "prior/v", "prior/m1", "prior/m2", "weight"} <= set(update)
    e1 = a1.epsilon
    a2, _ = _round(tmp_path, "c0", 2)
    assert a2.epsilon > e1 > 0
    reopened = open_client_accountant(tmp_path, "run", "c0", DP)
    assert reopened.epsilon == pytest.approx(a2.epsilon, rel=1e-9)
    # control: another client's ledger starts at zero, so the continuation comes from the ledger
    assert open_client_accountant(tmp_path, "run", "c1", DP).epsilon == 0.0
    # and the recorded rounds are exactly two client rounds composed from scratch
    cfg = tiny_config("fedvpa-gp", episodes_per_step=2)
    from fedvpa_secure.train.dp_local import sample_rate

    event = round_event(1.0, sample_rate([frozen_client()], cfg), cfg.train.local_steps, DP, True)
    scratch = make_accountant("rdp").compose(event, count=2).get_epsilon(DP.delta)
    assert reopened.epsilon == pytest.approx(scratch, rel=1e-6)


SCRIPT = """
import os, sys
sys.path.insert(0, {kit!r})
from pathlib import Path
from test_dp_budget_restart import _round
acc, _ = _round(Path({run!r}), "c0", int(sys.argv[1]))
print(repr(acc.epsilon), flush=True)
os._exit(9)  # killed: no clean shutdown, no atexit, nothing flushed by us
"""


def test_killed_client_restarts_with_its_epsilon(tmp_path):
    kit = str(Path(__file__).parent)
    code = SCRIPT.format(kit=kit, run=str(tmp_path))
    env = {**os.environ, "PYTHONPATH": kit + os.pathsep + os.environ.get("PYTHONPATH", "")}
    eps = []
    for r in (1, 2):
        out = subprocess.run(
            [sys.executable, "-c", code, str(r)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert out.returncode == 9, out.stderr[-2000:]
        eps.append(float(out.stdout.strip().splitlines()[-1]))
    assert eps[1] > eps[0] > 0  # the restarted client did not start from 0
    assert len(Ledger.open(client_ledger_path(tmp_path, "c0")).entries) == 2


def test_round_that_would_cross_the_budget_is_refused_before_training(tmp_path):
    probe, _ = _round(tmp_path / "probe", "c0", 1)
    one_round = probe.epsilon
    tight = DPConfig(noise_multiplier=1.0, epsilon_max=one_round * 1.01)
    acc, _ = _round(tmp_path, "c0", 1, tight)
    cfg = tiny_config("fedvpa-gp", dp=tight, episodes_per_step=2)
    model = tiny_model(cfg, 0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BudgetExceededError, match=r"client 'c0' refuses round 2: .*budget"):
        dp_client_round(
            model,
            before,
            frozen_client(),
            ClientState(),
            cfg,
            1.0,
            np.random.default_rng(0),
            CPU,
            acc,
            2,
            1.0,
        )
    assert len(Ledger.open(client_ledger_path(tmp_path, "c0")).entries) == 1  # nothing recorded
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # nothing trained
    # control: with room in the budget the same round runs
    roomy = DPConfig(noise_multiplier=1.0, epsilon_max=one_round * 3)
    _round(tmp_path / "roomy", "c0", 1, roomy)
    _round(tmp_path / "roomy", "c0", 2, roomy)


def test_no_budget_is_a_clear_error(tmp_path):
    with pytest.raises(BudgetExceededError, match="no privacy budget"):
        open_client_accountant(tmp_path, "run", "c0", DPConfig(noise_multiplier=1.0))
