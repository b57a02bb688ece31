"""Persistent accountant: epsilon survives restarts, budgets refuse before any state change."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from privacy_testkit import rewrite_consistently

from privacy.accountants import compute_epsilon
from privacy.budget import BudgetPolicy, PersistentAccountant
from privacy.errors import (
    BudgetExceeded,
    InvalidParameterError,
    LedgerConfigError,
    LedgerIntegrityError,
)
from privacy.events import ComposedEvent, GaussianEvent, SampledGaussianEvent

DELTA = 1e-5
ROUND = ComposedEvent((SampledGaussianEvent(1.0, 0.01, 50), GaussianEvent(20.0)))


def open_client(path: Path, epsilon_max: float = 10.0, **overrides) -> PersistentAccountant:
    options = {
        "run_id": "run-1",
        "actor": "client-7",
        "unit": "record",
        "budget": BudgetPolicy(epsilon_max, DELTA),
        "accountant": "rdp",
    }
    options.update(overrides)
    return PersistentAccountant.open(path, **options)


def test_epsilon_continues_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "client-7.ledger.jsonl"
    first = open_client(path)
    for r in range(3):
        first.record(ROUND, round=r)
    eps_before_restart = first.epsilon
    del first

    resumed = open_client(path)  # a new process: state comes only from the ledger
    assert resumed.epsilon == pytest.approx(eps_before_restart, rel=1e-12)
    for r in range(3, 5):
        resumed.record(ROUND, round=r)
    assert resumed.epsilon == pytest.approx(compute_epsilon([ROUND] * 5, DELTA), rel=1e-9)
    assert len(resumed.ledger) == 5


def test_control_a_fresh_accountant_would_reset_epsilon(tmp_path: Path) -> None:
    # What the persistent accountant prevents: a new per-round accountant starts from zero.
    persistent = open_client(tmp_path / "client-7.ledger.jsonl")
    for r in range(3):
        persistent.record(ROUND, round=r)
    fresh = open_client(tmp_path / "elsewhere" / "client-7.ledger.jsonl")
    assert fresh.epsilon == 0.0
    fresh.record(ROUND, round=2)
    assert fresh.epsilon < persistent.epsilon


def test_crash_and_resume_give_the_same_epsilon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "client-7.ledger.jsonl"
    acc = open_client(path)
    acc.record(ROUND, round=0)

    def crash(*_args, **_kwargs):
        raise OSError("killed")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        acc.record(ROUND, round=1)
    monkeypatch.undo()
    assert acc.epsilon == pytest.approx(compute_epsilon(ROUND, DELTA))  # not composed
    resumed = open_client(path)
    assert resumed.epsilon == pytest.approx(compute_epsilon(ROUND, DELTA))
    resumed.record(ROUND, round=1)
    assert resumed.epsilon == pytest.approx(compute_epsilon([ROUND, ROUND], DELTA), rel=1e-9)


def test_budget_refusal_happens_before_any_state_change(tmp_path: Path) -> None:
    one, two = compute_epsilon(ROUND, DELTA), compute_epsilon([ROUND, ROUND], DELTA)
    acc = open_client(tmp_path / "client-7.ledger.jsonl", epsilon_max=(one + two) / 2)
    assert acc.check_next(ROUND) == pytest.approx(one)  # control: the first round fits
    acc.record(ROUND, round=0)
    file_before = acc.ledger.path.read_bytes()

    with pytest.raises(BudgetExceeded) as info:
        acc.check_next(ROUND)
    with pytest.raises(BudgetExceeded):
        acc.record(ROUND, round=1)

    err = info.value
    assert err.epsilon_now == pytest.approx(one)
    assert err.epsilon_after == pytest.approx(two)
    assert err.epsilon_max == pytest.approx((one + two) / 2)
    assert "budget" in str(err) and f"{two:.4g}" in str(err)
    assert acc.ledger.path.read_bytes() == file_before
    assert acc.epsilon == pytest.approx(one)
    assert len(acc.ledger) == 1
    assert open_client(acc.ledger.path, epsilon_max=(one + two) / 2).epsilon == pytest.approx(one)


def test_smaller_event_still_fits_after_a_refusal(tmp_path: Path) -> None:
    one, two = compute_epsilon(ROUND, DELTA), compute_epsilon([ROUND, ROUND], DELTA)
    acc = open_client(tmp_path / "client-7.ledger.jsonl", epsilon_max=(one + two) / 2)
    acc.record(ROUND, round=0)
    with pytest.raises(BudgetExceeded):
        acc.record(ROUND, round=1)
    small = GaussianEvent(200.0)
    acc.record(small, round=1)
    assert acc.remaining >= 0


def test_reopening_with_other_parameters_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "client-7.ledger.jsonl"
    open_client(path).record(ROUND, round=0)
    with pytest.raises(LedgerConfigError, match="epsilon_max"):
        open_client(path, epsilon_max=20.0)
    with pytest.raises(LedgerConfigError, match="accountant"):
        open_client(path, accountant="prv")
    with pytest.raises(LedgerConfigError, match="actor"):
        open_client(path, actor="client-8")


def test_load_uses_genesis_parameters(tmp_path: Path) -> None:
    path = tmp_path / "client-7.ledger.jsonl"
    open_client(path, accountant="pld").record(ROUND, round=0)
    loaded = PersistentAccountant.load(path)
    assert loaded.accountant_name == "pld"
    assert loaded.budget == BudgetPolicy(10.0, DELTA)
    assert loaded.epsilon == pytest.approx(compute_epsilon(ROUND, DELTA, "pld"))


def test_forged_epsilon_is_caught_on_replay(tmp_path: Path) -> None:
    path = tmp_path / "client-7.ledger.jsonl"
    acc = open_client(path)
    for r in range(2):
        acc.record(ROUND, round=r)

    def understate(body: list[dict]) -> None:
        body[-1]["epsilon_after"] = 0.1

    rewrite_consistently(path, understate)
    with pytest.raises(LedgerIntegrityError, match="replayed epsilon"):
        open_client(path)


@pytest.mark.parametrize(
    ("epsilon_max", "delta"), [(0.0, 1e-5), (-1.0, 1e-5), (float("inf"), 1e-5), (1.0, 0.0)]
)
def test_budget_policy_validation(epsilon_max: float, delta: float) -> None:
    with pytest.raises(InvalidParameterError):
        BudgetPolicy(epsilon_max, delta)
