"""One client must neither stall the server nor wreck a round (SECURITY.md, issue 14).

Real gRPC on loopback with mTLS certificates, a toy learner behind the coordinator, and raw stubs
playing the attacker. Every attack runs with a control that shows it would have worked without
the defence: the same bytes against relaxed limits, or against a round that can need them.

How "the server never read it" is shown: the attacker's request stream is a :class:`Feed` that
counts the chunks gRPC took from it. The client library takes the next chunk only after the
previous one went out, so a server that answers while the feed holds its chunks back decided
from the header alone; a server that reads waits for them.
"""

from __future__ import annotations

import collections
import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.proto import federation_pb2 as pb
from fedvpa_secure.proto import federation_pb2_grpc as pb_grpc
from fedvpa_secure.secagg import messages as sm
from fedvpa_secure.secagg.messages import PROTOCOL_VERSION
from fedvpa_secure.server.coordinator import Coordinator, Hooks
from fedvpa_secure.server.serve import start_grpc
from fedvpa_secure.server.settings import LimitSettings, QuantSettings, RoundSettings, TlsFiles
from fedvpa_secure.train.aggregation import MAX_CLIENT_WEIGHT, plain_sum
from fedvpa_secure.transport import serde, tls
from fedvpa_secure.transport.chunking import CHUNK_BYTES, iter_chunks
from fedvpa_secure.transport.pki import load_registry
from tests.integration.fedkit import client_settings, make_certs, run_clients

pytestmark = pytest.mark.integration

PARTICIPANTS = ("c000", "c001", "c002")  # a plain round samples exactly these (they poll)
OUTSIDER = "c003"  # registered, never polls before the round, so never sampled
DEFENDED = LimitSettings(stream_deadline_s=1.5, max_streams_per_peer=4, max_streams=16)
RELAXED = LimitSettings(stream_deadline_s=60.0, max_streams_per_peer=16, max_streams=16)


class Federation:
    """A coordinator with a toy learner of ``dim`` weights behind a real mTLS gRPC server."""

    def __init__(
        self,
        tmp: Path,
        *,
        limits: LimitSettings,
        dim: int = 8,
        secure: bool = False,
        clients: int = 4,
        max_upload: int = 64 << 20,
    ) -> None:
        self.certs, self.ids = make_certs(tmp / "certs", clients)
        self.tmp = tmp
        self.dim = dim
        self.spec = {
            "delta/w": ((dim,), "<f4"),
            "prior/n": ((2,), "<f8"),
            "prior/v": ((2,), "<f8"),
            "weight": ((1,), "<f8"),
        }
        self.sums: list[dict[str, np.ndarray]] = []
        rounds = RoundSettings(
            rounds=1,
            clients_per_round=len(PARTICIPANTS) + (1 if secure else 0),
            min_survivors=3,
            secure=secure,
            train_deadline_s=30.0,
            stage_deadline_s=10.0,
            liveness_s=5.0,
            join_timeout_s=30.0,
            max_attempts=1,
        )
        self.coordinator = Coordinator(
            registry=load_registry(self.certs / "registry.json"),
            rounds=rounds,
            quant=QuantSettings(delta_clip=16.0, prior_clip=16.0),
            hooks=Hooks(
                global_state=lambda: {"w": np.zeros(dim, np.float32)},
                update_spec=lambda: dict(self.spec),
                tau=lambda r: 1.0,
                apply_sums=lambda r, sums, outcome: self.sums.append(sums),
                persist_attempt=lambda r, a: None,
            ),
        )
        self.server, self.port = start_grpc(
            self.coordinator,
            address="127.0.0.1:0",
            tls_files=TlsFiles(
                self.certs / "server.pem", self.certs / "server.key", self.certs / "ca.pem"
            ),
            experiment=ExperimentConfig().to_dict(),
            run_id="robustness",
            secure=secure,
            max_upload_bytes=max_upload,
            limits=limits,
        )
        self.driver = threading.Thread(target=self.coordinator.run, daemon=True)
        self.driver.start()
        self._channels: list[grpc.Channel] = []

    def stub(self, cid: str) -> pb_grpc.FederationStub:
        f = client_settings(self.certs, cid, self.tmp / "state")
        channel = grpc.secure_channel(
            f"127.0.0.1:{self.port}",
            tls.channel_credentials(f.ca, f.cert, f.key),
            options=tls.channel_options(8 << 20),
        )
        self._channels.append(channel)
        return pb_grpc.FederationStub(channel)

    def open_round(self, ids: tuple[str, ...] = PARTICIPANTS) -> dict[str, pb.Task]:
        """Poll as ``ids`` until each holds the round's TRAIN task."""
        stubs = {cid: self.stub(cid) for cid in ids}
        tasks: dict[str, pb.Task] = {}
        deadline = time.monotonic() + 20
        while len(tasks) < len(ids) and time.monotonic() < deadline:
            for cid in set(ids) - set(tasks):
                task = stubs[cid].Poll(pb.PollRequest(client_id=cid, wait_s=0.2), timeout=5)
                if task.kind == pb.Task.TRAIN:
                    tasks[cid] = task
        assert len(tasks) == len(ids), "the round did not open"
        return tasks

    def update(self, index: int, **edits: np.ndarray) -> dict[str, np.ndarray]:
        """An honest plain update of client ``index``, with ``edits`` swapped in."""
        honest = {
            "delta/w": np.full(self.dim, index + 1, np.float32),
            "prior/n": np.array([1.0, 2.0]),
            "prior/v": np.array([0.5, 0.25]),
            "weight": np.array([1.0]),
        }
        return {**honest, **edits}

    def close(self) -> None:
        self.coordinator.stop()
        self.server.stop(0)
        for channel in self._channels:
            channel.close()


class Feed:
    """A Submit request stream: a header, then (once ``gate`` opens) chunks; counts the pulls."""

    def __init__(
        self,
        header: pb.UploadHeader,
        chunks: list[pb.Chunk],
        gate: threading.Event | None = None,
    ) -> None:
        self.header = header
        self.chunks = chunks
        self.gate = gate
        self.pulled = 0

    def __iter__(self) -> Iterator[pb.Upload]:
        yield pb.Upload(header=self.header)
        if self.gate is not None:
            self.gate.wait(30)
        for chunk in self.chunks:
            self.pulled += 1
            yield pb.Upload(chunk=chunk)


def _header(cid: str, task: pb.Task, body: bytes, *, kind=pb.UploadHeader.PLAIN, total=None):
    return pb.UploadHeader(
        client_id=cid,
        round_id=task.round_id,
        model_version=task.model_version,
        body=kind,
        total_size=len(body) if total is None else total,
        sha256=hashlib.sha256(body).digest(),
    )


def _feed(cid: str, task: pb.Task, body: bytes, **kw) -> Feed:
    gate = kw.pop("gate", None)
    return Feed(_header(cid, task, body, **kw), list(iter_chunks(body)), gate)


def _bundle(update: dict[str, np.ndarray]) -> bytes:
    return serde.arrays_to_bundle(update).SerializeToString()


def _code(call) -> grpc.StatusCode:
    """The status of a call: ``call`` is a future, or a function making the call (OK: returned)."""
    try:
        call.result() if isinstance(call, grpc.Future) else call()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def _submit(stub: pb_grpc.FederationStub, feed: Feed, timeout: float = 10) -> grpc.StatusCode:
    return _code(lambda: stub.Submit(iter(feed), timeout=timeout))


def _refused_unread(stub: pb_grpc.FederationStub, cid: str, task: pb.Task, body: bytes, **kw):
    """Submit with every chunk held back: the server must answer from the header alone."""
    gate = threading.Event()
    feed = _feed(cid, task, body, gate=gate, **kw)
    call = stub.Submit.future(iter(feed), timeout=10)
    try:
        call.exception(timeout=3)
    except grpc.FutureTimeoutError:
        pytest.fail(f"{cid}: the server waited for the body instead of answering the header")
    finally:
        gate.set()
    assert feed.pulled == 0, cid
    return _code(call)


# -- 1. stalled streams ---------------------------------------------------------------------------


@pytest.mark.parametrize("defended", [True, False], ids=["defended", "control-relaxed"])
def test_stalled_submit_streams_do_not_starve_other_clients(tmp_path: Path, defended: bool) -> None:
    fed = Federation(tmp_path, limits=DEFENDED if defended else RELAXED)
    gate = threading.Event()
    try:
        tasks = fed.open_round()
        attacker = fed.stub("c000")
        body = _bundle(fed.update(0))
        feeds = [_feed("c000", tasks["c000"], body, gate=gate) for _ in range(16)]
        started = time.monotonic()
        calls = [attacker.Submit.future(iter(f), timeout=30) for f in feeds]
        time.sleep(0.5)  # every admitted stream now blocks its handler reading the body

        outsider = fed.stub(OUTSIDER)
        t0 = time.monotonic()
        join = _code(
            lambda: outsider.Join(
                pb.JoinRequest(client_id=OUTSIDER, protocol_version=PROTOCOL_VERSION), timeout=3
            )
        )
        poll = _code(lambda: outsider.Poll(pb.PollRequest(client_id=OUTSIDER), timeout=3))
        answered_in = time.monotonic() - t0

        if not defended:  # the attack works: the pool is full, the honest client is refused
            assert join in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED)
            assert poll in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED)
            assert not any(c.done() for c in calls), "every stalled stream is still held"
            return
        assert join is grpc.StatusCode.OK and poll is grpc.StatusCode.OK
        assert answered_in < 1.0, f"the honest client waited {answered_in:.2f}s"
        codes = collections.Counter(_code(c) for c in calls)
        cut_after = time.monotonic() - started
        assert codes == {
            grpc.StatusCode.RESOURCE_EXHAUSTED: 12,  # over the per-peer limit: refused at once
            grpc.StatusCode.DEADLINE_EXCEEDED: 4,  # admitted, stalled, cut by the server
        }
        assert cut_after < 10, "the server, not the 30 s client timeout, cut the streams"
        cut = [c for c in calls if _code(c) is grpc.StatusCode.DEADLINE_EXCEEDED]
        assert all("stream_deadline_s" in c.exception().details() for c in cut)
        assert all(f.pulled == 0 for f in feeds)
        # the attacker's slots are free again (once the cut handlers return): its upload goes in
        deadline = time.monotonic() + 3
        while True:
            code = _submit(attacker, _feed("c000", tasks["c000"], body))
            if code is not grpc.StatusCode.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert code is grpc.StatusCode.OK
    finally:
        gate.set()
        fed.close()


@pytest.mark.parametrize("defended", [True, False], ids=["defended", "control-relaxed"])
def test_a_stalled_model_download_is_cut(tmp_path: Path, defended: bool) -> None:
    """A client that stops reading FetchModel is cut too (the model outgrows every buffer)."""
    fed = Federation(tmp_path, limits=DEFENDED if defended else RELAXED, dim=8 << 20)
    try:
        task = fed.open_round()["c000"]
        stream = fed.stub("c000").FetchModel(
            pb.ModelRequest(client_id="c000", model_version=task.model_version), timeout=30
        )
        first = next(stream)
        assert first.total_size > 16 * CHUNK_BYTES
        time.sleep(2.5)  # past the defended deadline, reading nothing
        if not defended:  # control: the same slow reader gets the whole model
            received = len(first.data) + sum(len(c.data) for c in stream)
            assert received == first.total_size
            return
        with pytest.raises(grpc.RpcError) as err:
            for _chunk in stream:
                pass
        assert err.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "stream_deadline_s" in err.value.details()
    finally:
        fed.close()


# -- 2. refused from the header alone -------------------------------------------------------------


def test_uploads_from_outside_the_session_are_refused_from_the_header(tmp_path: Path) -> None:
    """A non-participant, and a participant the secagg session rejected, are refused unread."""
    fed = Federation(tmp_path, limits=DEFENDED, secure=True, clients=5)
    threads, clients = run_clients(fed.certs, list(PARTICIPANTS), fed.port, tmp_path / "state")
    try:
        task = fed.open_round(("c003",))["c003"]
        bad = fed.stub("c003")
        forged = sm.AdvertiseKeys(
            **sm.header(sm.AdvertiseKeys, task.round_id, "c003"),
            cipher_public=b"short",
            mask_public=b"keys",
            nonce_commitment=b"x",
            signature=b"y",
        )
        body = serde.message_to_proto(forged).SerializeToString()
        secagg = pb.UploadHeader.SECAGG

        def refused_unread(cid: str, **kw) -> grpc.StatusCode:
            return _refused_unread(fed.stub(cid), cid, task, body, kind=secagg, **kw)

        # c004 is registered but not in the round; it declares a terabyte
        assert refused_unread("c004", total=1 << 40) is grpc.StatusCode.FAILED_PRECONDITION
        # control: a participant's upload is read (and this one is rejected for its content)
        gate = threading.Event()
        feed = _feed("c003", task, body, kind=secagg, gate=gate)
        call = bad.Submit.future(iter(feed), timeout=10)
        time.sleep(0.5)
        assert not call.done(), "the server waits for a participant's body"
        gate.set()
        assert _code(call) is grpc.StatusCode.INVALID_ARGUMENT and feed.pulled == 1
        # the session rejected c003: from now on its header alone is enough to refuse it
        assert refused_unread("c003") is grpc.StatusCode.FAILED_PRECONDITION
        assert refused_unread("c003", total=1 << 40) is grpc.StatusCode.FAILED_PRECONDITION

        fed.driver.join(60)
        for t in threads:
            t.join(20)
        assert fed.coordinator.failed is None
        assert fed.coordinator.outcomes[0].survivors == list(PARTICIPANTS)
        assert fed.sums[0]["weight"][0] == pytest.approx(3.0)
    finally:
        for c in clients:
            c.close()
        fed.close()


# -- 3. oversized uploads -------------------------------------------------------------------------


@pytest.mark.parametrize("dim", [8, 2 << 20], ids=["defended", "control-round-needs-it"])
def test_an_oversized_upload_is_refused_before_it_is_buffered(tmp_path: Path, dim: int) -> None:
    """One 8 MiB upload: refused unread by a round that cannot need it, read by one that can."""
    fed = Federation(tmp_path, limits=DEFENDED, dim=dim)
    try:
        tasks = fed.open_round()
        stub = fed.stub("c000")
        big = _bundle(fed.update(0, **{"delta/w": np.ones(2 << 20, np.float32)}))
        assert len(big) > 8 << 20
        if dim != 8:  # control: a round whose update is this large reads all of it
            feed = _feed("c000", tasks["c000"], big)
            assert _submit(stub, feed, timeout=20) is grpc.StatusCode.OK
            assert feed.pulled == len(feed.chunks) > 16
            return
        code = _refused_unread(stub, "c000", tasks["c000"], big)
        assert code is grpc.StatusCode.RESOURCE_EXHAUSTED

        # an honest header, then a stream that runs on past it: cut at the first excess chunk
        honest = _bundle(fed.update(0))
        flood = pb.Chunk(data=b"\0" * CHUNK_BYTES, offset=0, total_size=len(honest))
        feed = Feed(_header("c000", tasks["c000"], honest), [flood] * 32)
        assert _submit(stub, feed, timeout=20) is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert feed.pulled <= 4, f"the server read {feed.pulled} of 32 flood chunks"

        # control: the honest upload of the same client is read to its end and accepted
        feed = _feed("c000", tasks["c000"], honest)
        assert stub.Submit(iter(feed), timeout=5).accepted and feed.pulled == len(feed.chunks)
    finally:
        fed.close()


# -- 4. poisoned plain updates --------------------------------------------------------------------


POISON = {
    "nan delta": {"delta/w": np.full(8, np.nan, np.float32)},
    "inf prior": {"prior/n": np.array([np.inf, 1.0])},
    "nan weight": {"weight": np.array([np.nan])},
    "negative weight": {"weight": np.array([-1.0])},
    "oversized weight": {"weight": np.array([2 * MAX_CLIENT_WEIGHT])},
}


def _wrecks(update: dict[str, np.ndarray], honest: list[dict[str, np.ndarray]]) -> bool:
    """Whether summing ``update`` as sent makes the round's sum non-finite, or gives its sender a
    share of the weight no capped client can have (all others honest with weight 1)."""
    total = plain_sum([update, *honest])
    if not all(np.all(np.isfinite(v)) for v in total.values()):
        return True
    share = update["weight"][0] / total["weight"][0]
    return not 0 <= share <= MAX_CLIENT_WEIGHT / (MAX_CLIENT_WEIGHT + len(honest))


def test_poisoned_plain_updates_are_refused_and_the_sum_stays_finite(tmp_path: Path) -> None:
    fed = Federation(tmp_path, limits=DEFENDED)
    try:
        tasks = fed.open_round()
        attacker = fed.stub("c000")
        honest = [fed.update(1), fed.update(2)]
        for name, edit in POISON.items():
            poisoned = fed.update(0, **edit)
            assert _wrecks(poisoned, honest), name  # control: summed as sent, it would
            feed = _feed("c000", tasks["c000"], _bundle(poisoned))
            with pytest.raises(grpc.RpcError) as err:
                attacker.Submit(iter(feed), timeout=5)
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, name
        # the refusals cost the attacker nothing but its poison; the cap itself is accepted
        capped = fed.update(0, weight=np.array([MAX_CLIENT_WEIGHT]))
        assert not _wrecks(capped, honest)
        for cid, update in (("c000", capped), ("c001", fed.update(1)), ("c002", fed.update(2))):
            feed = _feed(cid, tasks[cid], _bundle(update))
            assert fed.stub(cid).Submit(iter(feed), timeout=5).accepted
        fed.driver.join(20)
        assert fed.coordinator.failed is None and len(fed.sums) == 1
        assert all(np.all(np.isfinite(v)) for v in fed.sums[0].values())
        assert fed.sums[0]["weight"][0] == MAX_CLIENT_WEIGHT + 2
        np.testing.assert_allclose(fed.sums[0]["delta/w"], np.full(8, 6.0))
    finally:
        fed.close()


def test_a_plain_sum_that_overflows_is_never_applied(tmp_path: Path) -> None:
    """Each update finite, their sum not: the coordinator checks the sum before applying it."""
    fed = Federation(tmp_path, limits=DEFENDED)
    try:
        tasks = fed.open_round()
        huge = {cid: fed.update(i, **{"prior/n": np.array([1e308, 1.0])}) for i, cid in
                enumerate(PARTICIPANTS)}  # fmt: skip
        with np.errstate(over="ignore"):  # control: the sum as it would have been applied
            assert not np.all(np.isfinite(plain_sum(list(huge.values()))["prior/n"]))
        for cid, update in huge.items():
            feed = _feed(cid, tasks[cid], _bundle(update))
            assert fed.stub(cid).Submit(iter(feed), timeout=5).accepted
        fed.driver.join(20)
        assert fed.sums == [], "a non-finite sum reached the learner"
        assert "not finite" in (fed.coordinator.failed or "")
    finally:
        fed.close()
