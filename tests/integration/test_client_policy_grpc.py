"""A server that follows the wire format but chooses every field it sends, against real clients.

Each attack is a real coordinator behind a real mTLS gRPC server, configured as the attacker
wants, and 5 real ``FederatedClient`` threads. With the clients' default policy the attack gets
nothing: no round completes and no update (plain or noisy) reaches the server's sum. The control
runs the SAME server against clients whose policy allows what it asks, and the round completes
-- so each test would fail if the client's check were missing.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedvpa_secure.client.policy import PrivacyPolicy
from fedvpa_secure.client.runtime import Contributions, FederatedClient
from fedvpa_secure.server.coordinator import Coordinator
from fedvpa_secure.server.settings import DpSettings, RoundSettings
from fedvpa_secure.server.user_dp import ServerUserDP
from privacy import BudgetPolicy, PersistentAccountant

from .fedkit import ToyLearner, ToyServer, federate, make_certs, start_toy_server, toy_clients

pytestmark = pytest.mark.integration

N = 5
PLANNED_ROUNDS = 5  # what the server calibrates its noise for; one round is run
SAFE = PrivacyPolicy()


class DPToyLearner(ToyLearner):
    """The toy learner with a spec the user-level noise check can size itself from."""

    def update_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        update = self.train_round({"w": np.zeros(8, np.float32)}, 1.0, "0.0")
        return {k: (np.shape(v), np.asarray(v).dtype.str) for k, v in update.items()}


def _federate(
    tmp: Path,
    policy: PrivacyPolicy,
    *,
    secure: bool = True,
    hardened: bool = True,
    user_epsilon: float | None = 8.0,
    rounds: int = 1,
    toy: ToyServer | None = None,
    planned_rounds: int | None = None,
    server_budget: float | None = None,
) -> tuple[ToyServer, Coordinator, list[FederatedClient]]:
    """``rounds`` rounds of the server the attacker configured, against N clients with
    ``policy``. The server calibrates its noise for ``planned_rounds`` and stops at its own
    ledger's ``server_budget`` (both honest by default)."""
    certs, ids = make_certs(tmp / "certs", N)
    settings = RoundSettings(
        rounds=rounds,
        clients_per_round=N,
        min_survivors=3,
        hardened=hardened,
        secure=secure,
        train_deadline_s=8.0,
        stage_deadline_s=8.0,
        join_timeout_s=30.0,
        max_attempts=1,
    )
    dp = None
    if user_epsilon is not None:
        budget = user_epsilon if server_budget is None else server_budget
        ledger_path = tmp / "server.ledger.jsonl"
        ledger = PersistentAccountant.open(
            ledger_path,
            run_id="attack",
            actor="server",
            unit="user",
            budget=BudgetPolicy(budget, 1e-5),
            accountant="rdp",
        )
        dp = ServerUserDP(
            DpSettings(target_epsilon=user_epsilon, epsilon_max=budget, min_survivors=4),
            ledger,
            rounds=planned_rounds or max(PLANNED_ROUNDS, rounds),
            sample_rate=1.0,
            max_clients=N,
            hardened=hardened,
            stage_deadline_s=8.0,
        )
    toy = toy or ToyServer()
    # Join claims a secure federation; the tasks say what the attacker wants
    coordinator, server, port = start_toy_server(certs, settings, toy, user_dp=dp, join_secure=True)
    clients = toy_clients(certs, ids, port, tmp / "state", policy=policy, learner=DPToyLearner)
    federate(coordinator, server, clients)
    return toy, coordinator, clients


def _refused(toy: ToyServer, coordinator: Coordinator, field: str) -> None:
    assert toy.sums == [], "the attacker received a sum"
    assert coordinator.failed is not None
    # the clients told the server why: the round's failure names the declines and the field
    assert "clients declined" in coordinator.failed and field in coordinator.failed


def _accepted(toy: ToyServer, coordinator: Coordinator) -> None:
    assert coordinator.failed is None, coordinator.failed
    assert len(toy.sums) == 1


def test_an_honest_server_passes_the_default_policy(tmp_path: Path) -> None:
    toy, coordinator, clients = _federate(tmp_path, SAFE)
    _accepted(toy, coordinator)
    # each client recorded the round in its own user-level ledger, without amplification
    for c in clients:
        entries = list(c.user_ledger.ledger.entries)
        assert len(entries) == 1 and entries[0].event.sample_rate == 1.0
        assert 0 < c.user_ledger.epsilon <= SAFE.user_epsilon


def test_privacy_off_by_request_plain_round(tmp_path: Path) -> None:
    toy, coordinator, _ = _federate(tmp_path / "attack", SAFE, secure=False, user_epsilon=None)
    _refused(toy, coordinator, "secure")
    relaxed = replace(SAFE, allow_plain=True, require_user_dp=False)
    toy, coordinator, _ = _federate(tmp_path / "control", relaxed, secure=False, user_epsilon=None)
    _accepted(toy, coordinator)  # the raw updates reached the server: the attack worked
    raw = sum(np.full(8, i + 1, np.float32) for i in range(N))
    np.testing.assert_allclose(toy.sums[0]["delta/w"], raw)


def test_privacy_off_by_request_no_user_level_noise(tmp_path: Path) -> None:
    toy, coordinator, _ = _federate(tmp_path / "attack", SAFE, user_epsilon=None)
    _refused(toy, coordinator, "user_dp")
    toy, coordinator, _ = _federate(
        tmp_path / "control", replace(SAFE, require_user_dp=False), user_epsilon=None
    )
    _accepted(toy, coordinator)


def test_a_tiny_noise_plan_is_refused(tmp_path: Path) -> None:
    """The server plans epsilon 1000: each share's sigma is far below the client's floor."""
    toy, coordinator, _ = _federate(tmp_path / "attack", SAFE, user_epsilon=1000.0)
    _refused(toy, coordinator, "sigma")
    generous = replace(SAFE, user_epsilon=1000.0)
    toy, coordinator, _ = _federate(tmp_path / "control", generous, user_epsilon=1000.0)
    _accepted(toy, coordinator)


def test_hardened_mode_off_is_refused(tmp_path: Path) -> None:
    toy, coordinator, _ = _federate(tmp_path / "attack", SAFE, hardened=False)
    _refused(toy, coordinator, "hardened")
    lenient = replace(SAFE, require_hardened=False)
    toy, coordinator, _ = _federate(tmp_path / "control", lenient, hardened=False)
    _accepted(toy, coordinator)


class RelabellingServer(ToyServer):
    """Never moves the model, so every round asks for the same weights under a new version."""

    def hooks(self):
        hooks = super().hooks()
        apply = hooks.apply_sums

        def keep_model(round_index: int, sums: dict, outcome) -> None:
            w = self.w.copy()
            apply(round_index, sums, outcome)
            self.w = w

        return replace(hooks, apply_sums=keep_model)


def test_a_relabelled_model_gets_no_second_contribution(tmp_path: Path, monkeypatch) -> None:
    """Attack 9: the same model hash under version 1.1 after 0.0; the clients decline round 2."""
    toy, coordinator, _ = _federate(tmp_path / "attack", SAFE, rounds=2, toy=RelabellingServer())
    assert len(toy.sums) == 1, "the server got a second sum over the same model"
    assert coordinator.failed is not None and "model_hash" in coordinator.failed
    # control: without the content check the same server collects two sums of one model
    monkeypatch.setattr(Contributions, "has", lambda self, model_hash: False)
    toy, coordinator, _ = _federate(tmp_path / "control", SAFE, rounds=2, toy=RelabellingServer())
    assert coordinator.failed is None, coordinator.failed
    assert len(toy.sums) == 2


def test_a_server_running_past_the_clients_budget_is_refused(tmp_path: Path) -> None:
    """Attack 4: noise planned for 5 rounds at epsilon 8, then 7 rounds under the server's own
    (lying) budget of 100. Each client's own ledger, without amplification, stops it at 5."""
    lying = {"rounds": 7, "planned_rounds": PLANNED_ROUNDS, "server_budget": 100.0}
    toy, coordinator, clients = _federate(tmp_path / "attack", SAFE, **lying)
    assert len(toy.sums) == PLANNED_ROUNDS
    assert coordinator.failed is not None and "user-level budget" in coordinator.failed
    for c in clients:
        assert c.user_ledger.epsilon <= SAFE.user_epsilon
    # control: clients whose own budget allows it keep contributing past the plan
    generous = replace(SAFE, user_epsilon=100.0)
    toy, coordinator, clients = _federate(tmp_path / "control", generous, **lying)
    assert coordinator.failed is None, coordinator.failed
    assert len(toy.sums) == 7
    assert all(c.user_ledger.epsilon > SAFE.user_epsilon for c in clients)
