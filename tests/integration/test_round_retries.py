"""A failed attempt's retry leaves out whoever would make it fail again (real gRPC, toy learner).

One client withholds its graph nonce in every attempt: the seed needs every member of U1, so
each attempt it is sampled into aborts. The coordinator leaves it out of the round's retries and
the retry completes without it. The control keeps it in the retry (the benching off), and the
round fails on every attempt - so the test can fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvpa_secure.client.runtime import FederatedClient
from fedvpa_secure.proto import federation_pb2 as pb
from fedvpa_secure.secagg.messages import KeyDirectory
from fedvpa_secure.server.coordinator import Coordinator
from fedvpa_secure.server.settings import RoundSettings
from fedvpa_secure.transport import serde

from .fedkit import ToyServer, federate, make_certs, start_toy_server, toy_clients

pytestmark = pytest.mark.integration

N = 5
SILENT = "c004"


class SilentAtGraphSeed(FederatedClient):
    """Never reveals its graph nonce: drops the key directory the server sends it."""

    def _on_secagg(self, task: pb.Task) -> None:
        if isinstance(serde.parse_secagg(task.payload), KeyDirectory):
            return
        super()._on_secagg(task)


def _federate(tmp: Path) -> tuple[ToyServer, Coordinator]:
    certs, ids = make_certs(tmp / "certs", N)
    rounds = RoundSettings(
        rounds=1,
        clients_per_round=N,
        min_survivors=3,
        train_deadline_s=10.0,
        stage_deadline_s=2.0,
        join_timeout_s=3.0,
        max_attempts=2,
    )
    toy = ToyServer()
    coordinator, server, port = start_toy_server(certs, rounds, toy)
    clients = toy_clients(
        certs,
        ids,
        port,
        tmp / "state",
        client_for=lambda cid: SilentAtGraphSeed if cid == SILENT else FederatedClient,
    )
    federate(coordinator, server, clients, settle_s=0.3)
    return toy, coordinator


def test_a_client_that_stalls_the_graph_seed_sits_out_the_retry(tmp_path: Path) -> None:
    toy, coordinator = _federate(tmp_path)
    assert coordinator.failed is None, coordinator.failed
    (outcome,) = coordinator.outcomes
    assert outcome.attempt == 1 and SILENT not in outcome.survivors
    assert len(outcome.survivors) == N - 1 and len(toy.sums) == 1


def test_control_without_benching_every_attempt_fails(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(Coordinator, "_bench_after_abort", lambda self: None)
    toy, coordinator = _federate(tmp_path)
    assert coordinator.failed is not None and "nonce" in coordinator.failed
    assert toy.sums == []
