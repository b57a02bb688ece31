"""The thin gRPC servicer: authenticate, limit, validate, convert, delegate, map errors to codes.

Every handler first takes the client id from the verified mTLS certificate (never from the
message), refuses ids outside the registry, checks that any id the message claims is that id,
then delegates to the :class:`Coordinator`. Errors map to status codes and one log line:

==============================  ======================
unauthenticated peer            UNAUTHENTICATED
id mismatch / unregistered      PERMISSION_DENIED
malformed / rejected            INVALID_ARGUMENT
over a size or stream limit     RESOURCE_EXHAUSTED
stream past its deadline        DEADLINE_EXCEEDED
wrong round / stage             FAILED_PRECONDITION
==============================  ======================

One client must not be able to stall the server (SECURITY.md, issue 14), so:

* each client certificate may hold at most ``max_streams_per_peer`` calls at once, and the
  server as a whole ``max_streams`` (the gRPC server refuses beyond that, and has as many
  worker threads, so no call ever waits in a queue); the excess is refused at once;
* a Submit or FetchModel stream still running after ``stream_deadline_s`` is cut;
* an upload is admitted from its header alone - round, participant, secure-aggregation stage
  and declared size - before any chunk is read, and chunks past the declared size are refused
  as they arrive; the body is parsed before the coordinator lock is taken.

A rejected message never stops the round: the secagg session drops the offender and goes on.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import heapq
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator

import grpc

from fedvpa_secure.errors import ProtocolError
from fedvpa_secure.proto import federation_pb2 as pb
from fedvpa_secure.proto import federation_pb2_grpc as pb_grpc
from fedvpa_secure.secagg.messages import PROTOCOL_VERSION
from fedvpa_secure.server.coordinator import Coordinator, NotInRound
from fedvpa_secure.server.settings import LimitSettings
from fedvpa_secure.transport import tls
from fedvpa_secure.transport.chunking import UploadTooLarge, iter_chunks, reassemble

log = logging.getLogger("fedvpa_secure.server")


class PeerLimiter:
    """Counts the calls each client certificate holds open; refuses one over the limit.

    gRPC's own ``maximum_concurrent_rpcs`` bounds the server as a whole, but one client could
    take all of it; this bounds each client, so the others keep their share.
    """

    def __init__(self, per_peer: int) -> None:
        self.per_peer = per_peer
        self._lock = threading.Lock()
        self._open: collections.Counter[str] = collections.Counter()

    def acquire(self, peer: str) -> bool:
        """Take one slot of ``peer``; ``False`` (and nothing taken) when it holds them all."""
        with self._lock:
            if self._open[peer] >= self.per_peer:
                return False
            self._open[peer] += 1
            return True

    def release(self, peer: str) -> None:
        with self._lock:
            self._open[peer] -= 1
            if self._open[peer] <= 0:
                del self._open[peer]


class Watchdog:
    """Runs a callback when a deadline passes, unless disarmed first; one thread for all calls.

    A gRPC server has no deadline of its own: a handler blocked reading a stream that the client
    stopped sending on (or writing one it stopped reading) holds its worker thread for as long as
    the client likes. The callback cuts such a call, which wakes the blocked handler.
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._actions: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, seconds: float, action: Callable[[], None]) -> int:
        """Run ``action`` in ``seconds`` unless :meth:`disarm` is called first; returns a token."""
        with self._cv:
            token = next(self._ids)
            self._actions[token] = action
            heapq.heappush(self._heap, (time.monotonic() + seconds, token))
            if self._thread is None:  # the thread exits when nothing is armed
                self._thread = threading.Thread(
                    target=self._loop, name="fedvpa-stream-deadlines", daemon=True
                )
                self._thread.start()
            self._cv.notify()
            return token

    def disarm(self, token: int) -> None:
        with self._cv:
            self._actions.pop(token, None)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while self._heap and self._heap[0][1] not in self._actions:
                    heapq.heappop(self._heap)  # disarmed
                if not self._heap:
                    self._thread = None
                    return
                due, token = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cv.wait(wait)
                    continue
                heapq.heappop(self._heap)
                action = self._actions.pop(token)
            try:
                action()
            except Exception:  # a failed cut must not stop the other deadlines
                log.exception("cutting a stream past its deadline failed")


def cut_call(context: grpc.ServicerContext, code: grpc.StatusCode, detail: str) -> None:
    """End a call from outside its handler thread, telling the client ``code`` and ``detail``.

    ``context.abort`` only works in the handler's own thread (it raises there), and the public
    ``context.cancel`` reports CANCELLED, which a client cannot tell from its own cancellation.
    grpc's server call object cancels with a status; where a grpc release lacks it, fall back to
    the public cancel (the call is still cut, only the code differs).
    """
    call = getattr(getattr(context, "_rpc_event", None), "call", None)
    try:
        call.cancel(code.value[0], detail)  # type: ignore[union-attr]
    except (AttributeError, TypeError):
        context.cancel()
    except ValueError:  # the call finished between the deadline firing and this cut
        pass


class FederationServicer(pb_grpc.FederationServicer):
    """gRPC front of the coordinator."""

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        experiment: dict,
        run_id: str,
        secure: bool,
        max_upload_bytes: int,
        limits: LimitSettings | None = None,
    ) -> None:
        self._coordinator = coordinator
        self._experiment_json = json.dumps(experiment, sort_keys=True)
        self._run_id = run_id
        self._secure = secure
        self._max_upload = max_upload_bytes
        self._limits = limits or LimitSettings()
        self._peers = PeerLimiter(self._limits.max_streams_per_peer)
        self._watchdog = Watchdog()

    # -- helpers --------------------------------------------------------------------------------

    def _peer(self, context: grpc.ServicerContext, claimed: str) -> str:
        peer = tls.peer_client_id(context)
        if peer is None:
            self._fail(context, grpc.StatusCode.UNAUTHENTICATED, "no client certificate", "?")
        if peer not in self._coordinator.registry:
            self._fail(context, grpc.StatusCode.PERMISSION_DENIED, "client not registered", peer)
        if claimed != peer:
            self._fail(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "claimed client id is not the certificate's",
                peer,
            )
        return peer  # type: ignore[return-value]

    @staticmethod
    def _fail(
        context: grpc.ServicerContext, code: grpc.StatusCode, detail: str, who: str | None
    ) -> None:
        log.warning("rejected a request from %s: %s (%s)", who, detail, code.name)
        context.abort(code, detail)

    @contextlib.contextmanager
    def _slot(self, context: grpc.ServicerContext) -> Iterator[None]:
        """Hold one of the calling certificate's call slots for the body of the ``with``."""
        peer = tls.peer_client_id(context) or "?"
        if not self._peers.acquire(peer):
            self._fail(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"this client already holds {self._peers.per_peer} calls open (limits."
                "max_streams_per_peer); finish or cancel them before starting another",
                peer,
            )
        try:
            yield
        finally:
            self._peers.release(peer)

    @contextlib.contextmanager
    def _deadline(self, context: grpc.ServicerContext, what: str) -> Iterator[Callable[[], None]]:
        """Cut the call if the ``with`` body outlives ``stream_deadline_s``; yields a disarm."""
        seconds = self._limits.stream_deadline_s
        detail = (
            f"{what} ran past the server's deadline of {seconds:g}s (limits.stream_deadline_s); "
            "the client must send or read faster, or the operator raise the deadline"
        )

        def cut() -> None:
            log.warning(
                "cutting a %s stream of %s: deadline passed", what, tls.peer_client_id(context)
            )
            cut_call(context, grpc.StatusCode.DEADLINE_EXCEEDED, detail)

        token = self._watchdog.arm(seconds, cut)
        try:
            yield lambda: self._watchdog.disarm(token)
        finally:
            self._watchdog.disarm(token)

    # -- RPCs -----------------------------------------------------------------------------------

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinResponse:
        with self._slot(context):
            peer = self._peer(context, request.client_id)
            if request.protocol_version != PROTOCOL_VERSION:
                self._fail(
                    context,
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"protocol version {request.protocol_version} unsupported (server speaks "
                    f"{PROTOCOL_VERSION})",
                    peer,
                )
            self._coordinator.join(peer)
            return pb.JoinResponse(
                experiment_json=self._experiment_json,
                run_id=self._run_id,
                protocol_version=PROTOCOL_VERSION,
                secure=self._secure,
            )

    def Poll(self, request: pb.PollRequest, context: grpc.ServicerContext) -> pb.Task:
        with self._slot(context):
            peer = self._peer(context, request.client_id)
            return self._coordinator.poll(peer, request.wait_s)

    def FetchModel(
        self, request: pb.ModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
        with self._slot(context), self._deadline(context, "FetchModel"):
            peer = self._peer(context, request.client_id)
            try:
                blob = self._coordinator.model_blob(peer, request.model_version)
            except NotInRound as err:
                self._fail(context, grpc.StatusCode.FAILED_PRECONDITION, str(err), peer)
                return
            yield from iter_chunks(blob)

    def Submit(
        self, request_iterator: Iterator[pb.Upload], context: grpc.ServicerContext
    ) -> pb.SubmitAck:
        with self._slot(context), self._deadline(context, "Submit") as body_read:
            try:
                return self._submit(request_iterator, context, body_read)
            except grpc.RpcError:
                # the stream was cut (deadline) or cancelled, or grpc refused a message over
                # its size limit: the call already carries its status, nothing more to send
                log.info("a Submit stream of %s ended early", tls.peer_client_id(context))
                return pb.SubmitAck(accepted=False)

    def _submit(
        self,
        request_iterator: Iterator[pb.Upload],
        context: grpc.ServicerContext,
        body_read: Callable[[], None],
    ) -> pb.SubmitAck:
        """Header, admission, body (bounded), digest, then hand over to the coordinator."""
        who = tls.peer_client_id(context)
        first = next(request_iterator, None)
        if first is None:
            self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, "empty upload", who)
        if first.WhichOneof("part") != "header":  # type: ignore[union-attr]
            self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, "upload without a header", who)
        header = first.header  # type: ignore[union-attr]
        peer = self._peer(context, header.client_id)
        try:
            admission = self._coordinator.admit(peer, header, max_bytes=self._max_upload)
            body = reassemble(
                _body_chunks(request_iterator),
                expected_size=int(header.total_size),
                max_size=admission.max_bytes,
            )
            body_read()  # parsing is bounded by the size limits, not by the client's pace
            if hashlib.sha256(body).digest() != header.sha256:
                raise ProtocolError("upload digest does not match its body")
            self._coordinator.submit(peer, header, body, admission)
        except UploadTooLarge as err:
            self._fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(err), peer)
        except NotInRound as err:
            self._fail(context, grpc.StatusCode.FAILED_PRECONDITION, str(err), peer)
        except ProtocolError as err:  # includes secagg ClientRejected
            self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, str(err)[:500], peer)
        return pb.SubmitAck(accepted=True)


def _body_chunks(request_iterator: Iterator[pb.Upload]) -> Iterator[pb.Chunk]:
    """The chunks after an upload's header; anything else in the stream is refused."""
    for part in request_iterator:
        if part.WhichOneof("part") != "chunk":
            raise ProtocolError("an upload may carry one header, then only chunks")
        yield part.chunk
