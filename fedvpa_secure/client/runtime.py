"""The client process's loop: join, poll, train, mask, upload; survive server restarts.

Every TRAIN task is first checked against the client's own privacy policy
(:mod:`fedvpa_secure.client.policy`): a task that asks for less (no masking, weaker secure
aggregation, too little user-level noise, a round beyond the client's own budget) is declined
before the model is fetched or the data is used, and the client tells the server why.

Contributions are recorded in ``STATE_DIR/contributions.json`` by model hash *before* a masked
input (or a plain update) leaves the process, so after any crash or server restart the client
still refuses to contribute twice to the same model, whatever version label it comes with.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from fedvpa_secure.client.policy import (
    PolicyViolation,
    check_secagg,
    check_user_dp,
    record_dp_config,
)
from fedvpa_secure.client.preflight import (
    check_client_id,
    check_server_address,
    check_user_type,
    dial_target,
)
from fedvpa_secure.client.privacy_hook import open_client_ledger, open_user_ledger
from fedvpa_secure.client.settings import ClientSettings
from fedvpa_secure.client.user_dp import check_share, check_weight, noisy_layout, privatize
from fedvpa_secure.errors import AbortRound, FedVPAError, ProtocolError
from fedvpa_secure.proto import federation_pb2 as pb
from fedvpa_secure.proto import federation_pb2_grpc as pb_grpc
from fedvpa_secure.secagg import ClientSession, ClientStage, SecAggConfig
from fedvpa_secure.secagg.messages import PROTOCOL_VERSION, MaskedInputRequest, Message, Stage
from fedvpa_secure.server.settings import experiment_from_dict
from fedvpa_secure.transport import serde, tls
from fedvpa_secure.transport.chunking import iter_chunks, reassemble
from fedvpa_secure.transport.pki import load_identity, load_registry
from fedvpa_secure.transport.secure_update import config_from_json, layout_for, split_update
from privacy import BudgetExceeded, DistributedNoiseEvent, PrivacyError

log = logging.getLogger("fedvpa_secure.client")

MAX_MODEL_BYTES = 1 << 30
EXIT_AT_ENV = "FEDVPA_TEST_CLIENT_EXIT_AT"
MODEL_VERSION_RE = re.compile(r"[0-9]{1,9}\.[0-9]{1,9}")
"""The coordinator's "round.attempt"; anything else is a malformed task."""
"""Test seam: a stage name (e.g. ``MASKED_INPUT``) at which the process dies (a killed client)."""
MAX_GRPC_MESSAGE = 4 * 1024 * 1024


class Contributions:
    """The models this client has contributed to, keyed by model HASH, persisted atomically.

    Keyed on content, not on the server-chosen version label: a server that relabels the same
    weights as a new version and asks again would otherwise get two sums over different subsets
    of (nearly) the same updates, whose difference isolates a client.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: dict[str, str] = {}  # model hash -> the version label it came with
        if path.exists():
            self._seen = dict(json.loads(path.read_text()))

    def has(self, model_hash: str) -> bool:
        return model_hash in self._seen

    def version_of(self, model_hash: str) -> str | None:
        """The version label the model came with when this client contributed to it."""
        return self._seen.get(model_hash)

    def add(self, model_hash: str, model_version: str) -> None:
        self._seen[model_hash] = model_version
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as handle:
            json.dump(self._seen, handle, indent=1, sort_keys=True)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)


def upload(
    stub: pb_grpc.FederationStub,
    client_id: str,
    round_id: str,
    model_version: str,
    body_kind: int,
    body: bytes,
    timeout: float = 60.0,
) -> pb.SubmitAck:
    """Send one body as a header followed by 512 KiB chunks."""
    header = pb.UploadHeader(
        client_id=client_id,
        round_id=round_id,
        model_version=model_version,
        body=body_kind,
        total_size=len(body),
        sha256=hashlib.sha256(body).digest(),
    )

    def parts():
        yield pb.Upload(header=header)
        for chunk in iter_chunks(body):
            yield pb.Upload(chunk=chunk)

    return stub.Submit(parts(), timeout=timeout)


class FederatedClient:
    """One client of the federation (one process)."""

    def __init__(
        self,
        server: str,
        client_id: str,
        settings: ClientSettings,
        *,
        data_dir: str | Path | None = None,
        user_type: str | None = None,
        device: str | None = None,
        learner: Any = None,
        connect_timeout_s: float | None = None,
    ) -> None:
        self.server = server
        self.client_id = client_id
        self.settings = settings
        self.data_dir = data_dir
        self.user_type = user_type
        self.device = device or settings.device
        server = dial_target(*check_server_address(server))
        check_user_type(user_type)
        self.identity = load_identity(settings.identity)
        self.registry = load_registry(settings.registry)
        check_client_id(client_id, self.registry, settings.cert)
        self.connect_timeout_s = connect_timeout_s or settings.reconnect_s
        self.contributions = Contributions(settings.state_dir / "contributions.json")
        self.channel = grpc.secure_channel(
            server,
            tls.channel_credentials(settings.ca, settings.cert, settings.key),
            options=tls.channel_options(MAX_GRPC_MESSAGE),
        )
        self.stub = pb_grpc.FederationStub(self.channel)
        self.learner: Any = learner  # injected in benchmarks/tests; else built on join
        self.ledger: Any = None
        self.user_ledger: Any = None
        self._round_event: DistributedNoiseEvent | None = None
        self._session: ClientSession | None = None
        self._pending_input: tuple[Any, Any, float] | None = None
        self._task: pb.Task | None = None
        self.rounds_done = 0

    # -- connection -----------------------------------------------------------------------------

    def _call(self, fn, *args, reconnect_s: float | None = None, first: bool = False, **kwargs):
        """Retry while the server is unreachable (restarting, a link down), saying so, for up to
        ``reconnect_s`` (default: the config's). On the ``first`` contact a certificate that
        fails verification ends the client at once (it will not get better by waiting); later
        it is logged and retried, since a clock or a certificate can be fixed mid-run."""
        window = self.settings.reconnect_s if reconnect_s is None else reconnect_s
        start = time.monotonic()
        delay, next_note = 0.2, 0.0
        while True:
            try:
                return fn(*args, **kwargs)
            except grpc.RpcError as err:
                if err.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                ):
                    raise
                tls_problem = tls.tls_failure(err.details() or "")
                if tls_problem and first:
                    raise ProtocolError(f"server {self.server}: {tls_problem}") from err
                waited = time.monotonic() - start
                if waited >= window:
                    raise
                if waited >= next_note:
                    log.log(
                        logging.WARNING if tls_problem else logging.INFO,
                        "client %s: server %s not reachable (%s); retrying for up to %.0f s more",
                        self.client_id,
                        self.server,
                        tls_problem or err.code().name,
                        window - waited,
                    )
                    next_note = waited + 10.0
                time.sleep(delay)
                delay = min(2.0, delay * 1.5)

    def join(self) -> None:
        policy = self.settings.policy
        for line in policy.describe():  # before anything is sent: what this client accepts
            log.info("client %s policy: %s", self.client_id, line)
        log.info("client %s: connecting to %s", self.client_id, self.server)
        resp = self._call(
            self.stub.Join,
            pb.JoinRequest(client_id=self.client_id, protocol_version=PROTOCOL_VERSION),
            timeout=10.0,
            reconnect_s=self.connect_timeout_s,
            first=True,
        )
        if not resp.secure and not policy.allow_plain:
            raise PolicyViolation("secure", False, "true: this client never uploads unmasked")
        cfg = experiment_from_dict(json.loads(resp.experiment_json))
        # the server's DP-SGD settings, tightened by the policy, BEFORE the data is loaded
        overrides: dict[str, Any] = {"device": self.device, "dp": record_dp_config(policy, cfg.dp)}
        if self.settings.cache_dir:
            overrides["cache_dir"] = self.settings.cache_dir
        cfg = replace(cfg, **overrides)
        from fedvpa_secure.client.learner import ClientLearner

        if self.learner is None:
            self.learner = ClientLearner(cfg, self.client_id, self.data_dir, self.user_type)
        if getattr(self.learner, "uses_dp", False):
            # DP-SGD: the learner's accountant is this client's record-level ledger
            self.learner.open_dp(
                self.settings.state_dir, resp.run_id, policy.record_min_noise_multiplier
            )
        else:
            self.ledger = open_client_ledger(self.settings, self.client_id, resp.run_id)
        self.user_ledger = open_user_ledger(self.settings, self.client_id)
        self.learner.update_spec()  # the update's shapes, once, before any task is seen
        log.info(
            "client %s joined run %s (secure=%s); user-level epsilon spent so far %.4g of %g",
            self.client_id,
            resp.run_id,
            resp.secure,
            self.user_ledger.epsilon,
            policy.user_epsilon,
        )

    def run(self) -> int:
        """Join and serve rounds until the server says FINISHED; returns an exit status."""
        self.join()
        while True:
            task = self._call(
                self.stub.Poll,
                pb.PollRequest(client_id=self.client_id, wait_s=self.settings.poll_wait_s),
                timeout=self.settings.poll_wait_s + 10.0,
            )
            if task.kind == pb.Task.FINISHED:
                log.info(
                    "client %s: federation finished after %d rounds",
                    self.client_id,
                    self.rounds_done,
                )
                return 0
            try:
                self._handle(task)
            except PolicyViolation as exc:
                log.warning("client %s declined round %s: %s", self.client_id, task.round_id, exc)
                self._decline(task, str(exc))
                self._drop()
            except AbortRound as exc:
                log.warning("client %s aborted round %s: %s", self.client_id, task.round_id, exc)
                self._drop()
            except (FedVPAError, PrivacyError) as exc:  # a malformed task: sit the round out
                reason = f"malformed task: {exc}"
                log.warning(
                    "client %s declined round %s: %s", self.client_id, task.round_id, reason
                )
                self._decline(task, reason)
                self._drop()
            except grpc.RpcError as err:
                log.warning(
                    "client %s: server refused %s: %s %s",
                    self.client_id,
                    task.round_id,
                    err.code().name,
                    err.details(),
                )
                self._drop()

    def close(self) -> None:
        self.channel.close()

    # -- tasks ----------------------------------------------------------------------------------

    def _drop(self) -> None:
        self._session = None
        self._pending_input = None
        self._task = None
        self._round_event = None

    def _decline(self, task: pb.Task, reason: str) -> None:
        """Tell the server this client sits the round out and why (it logs the reason)."""
        try:
            upload(
                self.stub,
                self.client_id,
                task.round_id,
                task.model_version,
                pb.UploadHeader.DECLINE,
                reason.encode("utf-8")[:2000],
                timeout=10.0,
            )
        except grpc.RpcError as err:  # the server may not listen for it; declining still holds
            log.info("client %s: the server did not take the decline: %s", self.client_id, err)

    def _handle(self, task: pb.Task) -> None:
        if task.kind == pb.Task.WAIT:
            return
        if task.kind == pb.Task.ABORT:
            if self._task is not None and task.round_id == self._task.round_id:
                log.info(
                    "client %s: round %s abandoned by the server", self.client_id, task.round_id
                )
                self._drop()
            return
        if task.kind == pb.Task.TRAIN:
            self._on_train(task)
        elif task.kind == pb.Task.SECAGG:
            self._on_secagg(task)

    def _fetch_model(self, task: pb.Task) -> dict:
        chunks = self.stub.FetchModel(
            pb.ModelRequest(client_id=self.client_id, model_version=task.model_version),
            timeout=120.0,
        )
        blob = reassemble(chunks, expected_size=None, max_size=MAX_MODEL_BYTES)
        bundle = pb.TensorBundle()
        bundle.ParseFromString(blob)
        arrays = serde.bundle_to_arrays(bundle, expected=self.learner.state_spec())
        if serde.state_hash(arrays) != task.model_hash:
            raise AbortRound("the downloaded model does not match the announced model hash")
        return arrays

    def _admit(self, task: pb.Task) -> tuple[SecAggConfig | None, DistributedNoiseEvent | None]:
        """Check the task against the policy and the budgets; raises :class:`PolicyViolation`.

        Runs before the model is fetched and before the learner touches the data.
        """
        policy = self.settings.policy
        user_dp = task.user_dp if task.HasField("user_dp") else None
        if not task.secure:
            if not policy.allow_plain:
                raise PolicyViolation("secure", False, "true: this client never uploads unmasked")
            if policy.require_user_dp or user_dp is not None:
                raise PolicyViolation("secure", False, "true: user-level noise needs masking")
            return None, None
        config = config_from_json(task.secagg_config_json)
        check_secagg(policy, config)
        if user_dp is not None:
            check_share(user_dp, task.round_id)
        dim = 0 if user_dp is None else layout_for(self.learner.update_spec(), config).user_size
        event = check_user_dp(policy, user_dp, config, dim)
        if event is not None:
            try:
                self.user_ledger.check_next(event)
            except BudgetExceeded as err:
                log.info(
                    "client %s: user-level ledger %s", self.client_id, self.user_ledger.ledger.path
                )
                raise PolicyViolation(  # the reason goes to the server: no local path in it
                    "user-level budget",
                    f"epsilon {err.epsilon_after:.4g} after this round",
                    f"<= {policy.user_epsilon:g} (this client's own user-level ledger)",
                ) from err
        return config, event

    def _on_train(self, task: pb.Task) -> None:
        self._drop()
        if not MODEL_VERSION_RE.fullmatch(task.model_version):
            raise AbortRound(f"model version {task.model_version!r:.40} is not ROUND.ATTEMPT")
        if self.contributions.has(task.model_hash):
            raise PolicyViolation(
                "model_hash",
                task.model_hash[:16],
                "a model this client has not contributed to yet (it already did, under version "
                f"{self.contributions.version_of(task.model_hash)!r:.40}; now labelled "
                f"{task.model_version!r:.40})",
            )
        config, event = self._admit(task)
        weights = self._fetch_model(task)
        update = self.learner.train_round(weights, task.tau, task.model_version)
        if config is None:
            self._upload_plain(task, update)
            return
        user_dp = task.user_dp if task.HasField("user_dp") else None
        if user_dp is not None:  # user-level DP: clip the whole update, noise before masking
            update = privatize(update, user_dp)
        tensors, extras, weight = split_update(update)
        check_weight(weight)
        layout = layout_for(serde.spec_of({**tensors, **extras}), config)
        if user_dp is not None:
            if event is None or layout.user_size != event.dim:
                raise AbortRound("the update's size differs from the one the noise was checked for")
            layout = noisy_layout(layout, user_dp)
            log.info(
                "client %s: round %s clipped to %g, %s noise share sigma %.4g before masking "
                "(noise multiplier %.3g)",
                self.client_id,
                task.round_id,
                user_dp.clip_norm,
                user_dp.noise,
                user_dp.local_sigma,
                event.effective_noise_multiplier,
            )
        self._session = ClientSession(
            self.client_id,
            self.identity,
            self.registry,
            config,
            layout,
            task.round_id,
            model_version=task.model_version,
        )
        self._pending_input = (tensors, extras, weight)
        self._round_event = event
        self._task = task
        self._answer(serde.parse_secagg(task.payload))

    def _upload_plain(self, task: pb.Task, update: Any) -> None:
        """A clear-text update: only when the policy allows plain rounds (checked in _admit)."""
        check_weight(float(np.asarray(update["weight"]).reshape(-1)[0]))
        self.contributions.add(task.model_hash, task.model_version)
        body = serde.arrays_to_bundle(update).SerializeToString()
        upload(
            self.stub,
            self.client_id,
            task.round_id,
            task.model_version,
            pb.UploadHeader.PLAIN,
            body,
        )
        self.rounds_done += 1

    def _on_secagg(self, task: pb.Task) -> None:
        if self._session is None or self._task is None or task.round_id != self._task.round_id:
            return  # a stale message of a round this client is not in
        self._answer(serde.parse_secagg(task.payload))

    def _answer(self, message: Message) -> None:
        session, current = self._session, self._task
        if session is None or current is None:
            return
        if os.environ.get(EXIT_AT_ENV) == Stage(message.stage).name:  # test seam: die mid-round
            log.warning("client %s: exiting at %s (%s)", self.client_id, EXIT_AT_ENV, message.stage)
            os._exit(137)
        if isinstance(message, MaskedInputRequest) and session.stage is ClientStage.SHARED:
            if self.contributions.has(current.model_hash):
                raise AbortRound(f"already contributed to model {current.model_hash[:16]}")
            self.contributions.add(current.model_hash, current.model_version)
            if self._round_event is not None:  # write-ahead: recorded before the noise leaves
                self.user_ledger.record(
                    self._round_event,
                    round=len(self.user_ledger.ledger.entries) + 1,  # its own count
                    clipping_norm=float(current.user_dp.clip_norm),
                    label=f"distributed noise share, {current.round_id}",
                )
            tensors, extras, weight = self._pending_input  # type: ignore[misc]
            session.provide_input(tensors, extras=extras, weight=weight)
            self._pending_input = None
        try:
            reply = session.handle(message)
        except (ProtocolError, FedVPAError) as exc:
            raise AbortRound(str(exc)) from exc
        body = serde.message_to_proto(reply).SerializeToString()
        upload(
            self.stub,
            self.client_id,
            current.round_id,
            current.model_version,
            pb.UploadHeader.SECAGG,
            body,
        )
        if session.stage is ClientStage.DONE:
            self.rounds_done += 1
            log.info("client %s: round %s done", self.client_id, current.round_id)
            self._drop()
