"""The thin gRPC servicer: authenticate, validate, convert, delegate, map errors to status codes.

Every handler first takes the client id from the verified mTLS certificate (never from the
message), refuses ids outside the registry, checks that any id the message claims is that id,
then delegates to the :class:`Coordinator`. Errors map to status codes and one log line:

==========================  ======================
unauthenticated peer        UNAUTHENTICATED
id mismatch / unregistered  PERMISSION_DENIED
malformed / rejected        INVALID_ARGUMENT
over the size limit         RESOURCE_EXHAUSTED
wrong round / stage         FAILED_PRECONDITION
==========================  ======================

A rejected message never stops the round: the secagg session drops the offender and goes on.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator

import grpc

from fedvpa_secure.errors import ProtocolError
from fedvpa_secure.proto import federation_pb2 as pb
from fedvpa_secure.proto import federation_pb2_grpc as pb_grpc
from fedvpa_secure.secagg.messages import PROTOCOL_VERSION
from fedvpa_secure.server.coordinator import Coordinator, NotInRound
from fedvpa_secure.transport import tls
from fedvpa_secure.transport.chunking import iter_chunks, reassemble

log = logging.getLogger("fedvpa_secure.server")


class TooLarge(ProtocolError):
    """An upload beyond the configured size limit."""


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
    ) -> None:
        self._coordinator = coordinator
        self._experiment_json = json.dumps(experiment, sort_keys=True)
        self._run_id = run_id
        self._secure = secure
        self._max_upload = max_upload_bytes

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

    # -- RPCs -----------------------------------------------------------------------------------

    def Join(self, request: pb.JoinRequest, context: grpc.ServicerContext) -> pb.JoinResponse:
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
        peer = self._peer(context, request.client_id)
        return self._coordinator.poll(peer, request.wait_s)

    def FetchModel(
        self, request: pb.ModelRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.Chunk]:
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
        peer = tls.peer_client_id(context)
        try:
            first = next(request_iterator)
        except StopIteration:
            self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, "empty upload", peer)
        if first.WhichOneof("part") != "header":
            self._fail(context, grpc.StatusCode.INVALID_ARGUMENT, "upload without a header", peer)
        header = first.header
        peer = self._peer(context, header.client_id)
        code = grpc.StatusCode.INVALID_ARGUMENT
        try:
            if header.total_size > self._max_upload:
                raise TooLarge(f"upload of {header.total_size} bytes exceeds {self._max_upload}")
            chunks = (u.chunk for u in request_iterator if u.WhichOneof("part") == "chunk")
            body = reassemble(chunks, expected_size=header.total_size, max_size=self._max_upload)
            if hashlib.sha256(body).digest() != header.sha256:
                raise ProtocolError("upload digest does not match its body")
            self._coordinator.submit(peer, header, body)
        except TooLarge as err:
            self._fail(context, grpc.StatusCode.RESOURCE_EXHAUSTED, str(err), peer)
        except NotInRound as err:
            self._fail(context, grpc.StatusCode.FAILED_PRECONDITION, str(err), peer)
        except ProtocolError as err:  # includes secagg ClientRejected
            self._fail(context, code, str(err)[:500], peer)
        return pb.SubmitAck(accepted=True)
