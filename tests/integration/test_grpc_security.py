"""Real gRPC on loopback (port 0) with mTLS: full secure rounds, refusals and status codes.

The coordinator runs a toy learner here so that each test takes seconds; the process-level tests
with the real learner are in ``test_federation_processes.py``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fedvpa_secure.proto import federation_pb2 as pb
from fedvpa_secure.proto import federation_pb2_grpc as pb_grpc
from fedvpa_secure.secagg.messages import PROTOCOL_VERSION
from fedvpa_secure.server.settings import RoundSettings
from fedvpa_secure.transport import tls
from tests.integration.fedkit import (
    ToyServer,
    client_keys,
    make_certs,
    run_clients,
    start_toy_server,
)

pytestmark = pytest.mark.integration


def _rounds(**kw) -> RoundSettings:
    base = dict(
        rounds=1,
        clients_per_round=3,
        min_survivors=3,
        train_deadline_s=20.0,
        stage_deadline_s=10.0,
        liveness_s=3.0,
        join_timeout_s=20.0,
        max_attempts=1,
    )
    base.update(kw)
    return RoundSettings(**base)


def _stub(certs: Path, cid: str, port: int) -> pb_grpc.FederationStub:
    f = client_keys(certs, cid)
    channel = grpc.secure_channel(
        f"127.0.0.1:{port}",
        tls.channel_credentials(f.ca, f.cert, f.key),
        options=tls.channel_options(8 << 20),
    )
    return pb_grpc.FederationStub(channel)


def _run(coordinator) -> threading.Thread:
    t = threading.Thread(target=coordinator.run, daemon=True)
    t.start()
    return t


def test_secure_rounds_sum_exactly_over_grpc(tmp_path: Path) -> None:
    certs, ids = make_certs(tmp_path / "certs", 4)
    toy = ToyServer()
    coordinator, server, port = start_toy_server(certs, _rounds(rounds=2, clients_per_round=4), toy)
    try:
        driver = _run(coordinator)
        threads, clients = run_clients(certs, ids, port, tmp_path / "state")
        driver.join(120)
        for t in threads:
            t.join(20)
        assert coordinator.failed is None and len(toy.sums) == 2
        assert toy.sums[0]["weight"][0] == pytest.approx(4.0)
        # mean of deltas (i + 1) from w = 0 is 2.5; round 2 sums to zero around it
        np.testing.assert_allclose(toy.w, np.full(8, 2.5), atol=1e-5)
        assert all(c.rounds_done == 2 for c in clients)
        assert all(not t.is_alive() for t in threads), "clients exit on FINISHED"
    finally:
        server.stop(0)


def test_tls_is_required_and_ids_are_bound(tmp_path: Path) -> None:
    certs, _ids = make_certs(tmp_path / "certs", 3)
    _coordinator, server, port = start_toy_server(certs, _rounds(), ToyServer())
    try:
        request = pb.JoinRequest(client_id="c000", protocol_version=PROTOCOL_VERSION)
        plain = pb_grpc.FederationStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        with pytest.raises(grpc.RpcError) as err:
            plain.Join(request, timeout=5)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE

        other = tmp_path / "other"
        make_certs(other, 1)
        f = client_keys(other, "c000")
        rogue_channel = grpc.secure_channel(
            f"127.0.0.1:{port}",
            tls.channel_credentials(certs / "ca.pem", f.cert, f.key),  # trusts our server
            options=tls.channel_options(1 << 20),
        )
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.FederationStub(rogue_channel).Join(request, timeout=5)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE

        no_cert = grpc.secure_channel(
            f"127.0.0.1:{port}",
            tls.channel_credentials(certs / "ca.pem"),
            options=tls.channel_options(1 << 20),
        )
        with pytest.raises(grpc.RpcError) as err:
            pb_grpc.FederationStub(no_cert).Join(request, timeout=5)
        assert err.value.code() is grpc.StatusCode.UNAVAILABLE

        stub = _stub(certs, "c001", port)
        with pytest.raises(grpc.RpcError) as err:
            stub.Join(request, timeout=5)  # c001's certificate claiming c000
        assert err.value.code() is grpc.StatusCode.PERMISSION_DENIED
        assert (
            stub.Join(
                pb.JoinRequest(client_id="c001", protocol_version=PROTOCOL_VERSION), timeout=5
            ).run_id
            == "toy"
        )

        f1 = client_keys(certs, "c001")
        health_channel = grpc.secure_channel(
            f"127.0.0.1:{port}",
            tls.channel_credentials(f1.ca, f1.cert, f1.key),
            options=tls.channel_options(1 << 20),
        )
        health = health_pb2_grpc.HealthStub(health_channel)
        status = health.Check(health_pb2.HealthCheckRequest(service="fedvpa.v1.Federation"))
        assert status.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop(0)


def _upload(stub, cid, round_id, version, body: bytes, *, total=None, chunk=None, digest=None):
    header = pb.UploadHeader(
        client_id=cid,
        round_id=round_id,
        model_version=version,
        body=pb.UploadHeader.SECAGG,
        total_size=len(body) if total is None else total,
        sha256=digest if digest is not None else hashlib.sha256(body).digest(),
    )
    parts = [pb.Upload(header=header)]
    parts.append(pb.Upload(chunk=chunk or pb.Chunk(data=body, offset=0, total_size=len(body))))
    return stub.Submit(iter(parts), timeout=10)


def test_bad_messages_get_status_codes_and_the_round_completes(tmp_path: Path) -> None:
    certs, ids = make_certs(tmp_path / "certs", 4)
    toy = ToyServer()
    rounds = _rounds(clients_per_round=4, train_deadline_s=12.0)
    coordinator, server, port = start_toy_server(certs, rounds, toy, max_upload=1 << 20)
    try:
        driver = _run(coordinator)
        threads, _clients = run_clients(certs, ids[:3], port, tmp_path / "state")
        bad = _stub(certs, "c003", port)
        task = pb.Task(kind=pb.Task.WAIT)
        deadline = time.monotonic() + 30
        while task.kind != pb.Task.TRAIN and time.monotonic() < deadline:
            task = bad.Poll(pb.PollRequest(client_id="c003", wait_s=0.5), timeout=5)
        assert task.kind == pb.Task.TRAIN
        rid, ver = task.round_id, task.model_version
        codes = {}
        for name, kwargs in {
            "garbage": dict(body=b"\x00garbage\xff"),
            "bad digest": dict(body=b"abc", digest=b"x" * 32),
            "oversized": dict(body=b"abc", total=1 << 30),
            "huge message": dict(
                body=b"", chunk=pb.Chunk(data=b"\0" * (5 << 20), offset=0, total_size=5 << 20)
            ),
        }.items():
            with pytest.raises(grpc.RpcError) as err:
                _upload(bad, "c003", rid, ver, **kwargs)
            codes[name] = err.value.code()
        with pytest.raises(grpc.RpcError) as err:
            _upload(bad, "c000", rid, ver, b"abc")
        codes["impersonation"] = err.value.code()
        with pytest.raises(grpc.RpcError) as err:
            _upload(bad, "c003", "r99999-a000", ver, b"abc")
        codes["wrong round"] = err.value.code()
        assert codes == {
            "garbage": grpc.StatusCode.INVALID_ARGUMENT,
            "bad digest": grpc.StatusCode.INVALID_ARGUMENT,
            "oversized": grpc.StatusCode.RESOURCE_EXHAUSTED,
            "huge message": grpc.StatusCode.RESOURCE_EXHAUSTED,
            "impersonation": grpc.StatusCode.PERMISSION_DENIED,
            "wrong round": grpc.StatusCode.FAILED_PRECONDITION,
        }
        driver.join(90)
        for t in threads:
            t.join(20)
        assert coordinator.failed is None
        outcome = coordinator.outcomes[0]
        assert outcome.survivors == ["c000", "c001", "c002"]
        assert "c003" in outcome.dropped["ADVERTISE_KEYS"]
        assert toy.sums[0]["weight"][0] == pytest.approx(3.0)
        np.testing.assert_allclose(toy.w, np.full(8, 2.0), atol=1e-5)
    finally:
        server.stop(0)
