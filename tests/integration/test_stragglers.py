"""A client that goes quiet while training (a dead link looks exactly like a slow client: training
sends no heartbeat) holds the round for at most the straggler window, not the train deadline.
Control: with ``straggler_factor = 0`` the same round waits for the slow client."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from fedvpa_secure.server.coordinator import Hooks
from fedvpa_secure.server.settings import RoundSettings

from .fedkit import ToyLearner, ToyServer, federate, make_certs, start_toy_server, toy_clients

SLOW_S = 6.0


def slow_learner(slow: set[int]) -> type:
    """A toy learner class whose clients with an index in ``slow`` train for SLOW_S seconds."""

    class SlowLearner(ToyLearner):
        def train_round(self, global_state: dict, tau: float, model_version: str) -> dict:
            if self.index in slow:
                time.sleep(SLOW_S)
            return super().train_round(global_state, tau, model_version)

    return SlowLearner


class TimedToyServer(ToyServer):
    """Remembers when the round's sum was applied: the round's end, whatever the clients do."""

    applied_at: float = 0.0

    def hooks(self) -> Hooks:
        hooks = super().hooks()

        def apply(round_index: int, sums: dict, outcome: object) -> None:
            self.applied_at = time.monotonic()
            hooks.apply_sums(round_index, sums, outcome)

        return replace(hooks, apply_sums=apply)


def _round(tmp: Path, straggler_factor: float, slow: set[int]) -> tuple[int, float]:
    """One hardened secure round of 5 toy clients (threshold 4); (clients summed, seconds)."""
    certs, ids = make_certs(tmp / "certs", 5)
    rounds = RoundSettings(
        rounds=1,
        clients_per_round=5,
        min_survivors=3,
        train_deadline_s=60.0,
        stage_deadline_s=1.0,
        liveness_s=3.0,
        join_timeout_s=20.0,
        max_attempts=1,
        straggler_factor=straggler_factor,
    )
    toy = TimedToyServer()
    coordinator, server, port = start_toy_server(certs, rounds, toy)
    clients = toy_clients(certs, ids, port, tmp / "state", learner=slow_learner(slow))
    started = time.monotonic()
    # settle until the slow client has finished too, so no thread outlives its channel
    federate(coordinator, server, clients, settle_s=SLOW_S + 1.0)
    return int(toy.sums[0]["weight"][0]), toy.applied_at - started


def test_a_silent_trainer_is_dropped_after_the_straggler_window(tmp_path: Path) -> None:
    summed, seconds = _round(tmp_path / "a", straggler_factor=1.0, slow={4})
    assert summed == 4  # c004 left out
    assert seconds < SLOW_S  # the round did not wait for it


def test_control_without_the_straggler_rule_the_round_waits(tmp_path: Path) -> None:
    summed, seconds = _round(tmp_path / "b", straggler_factor=0.0, slow={4})
    assert summed == 5
    assert seconds >= SLOW_S


def test_the_window_waits_until_the_round_could_finish_without_the_stragglers(
    tmp_path: Path,
) -> None:
    """Two slow clients of five, threshold 4: three fast answers are a majority but not enough
    to finish the round, so the window never opens and the round completes with all five."""
    summed, seconds = _round(tmp_path / "c", straggler_factor=1.0, slow={3, 4})
    assert summed == 5
    assert seconds >= SLOW_S
