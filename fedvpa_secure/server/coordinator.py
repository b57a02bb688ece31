"""The round state machine of the real federation: sampling, stages, deadlines, retries.

One thread (:meth:`Coordinator.run`) drives rounds; gRPC handler threads only call
:meth:`poll`, :meth:`model_blob` and :meth:`submit`, which take the lock, check, and hand work
over through per-client mailboxes. A round:

1. wait until enough clients are connected, sample ``clients_per_round`` of them;
2. persist the next attempt number (a restart never reuses a round id or model version);
3. secure mode: run :class:`~fedvpa_secure.secagg.ServerSession` stage by stage, each stage closed
   when every asked client answered, was rejected, went silent (liveness) or the deadline passed;
   plain mode: collect clear-text updates (benchmarks and the equivalence test only);
4. apply the SUM with the learner, checkpoint atomically, evaluate.

With user-level DP (``user_dp``, :class:`~fedvpa_secure.server.user_dp.ServerUserDP`) the
round's SecAggConfig and noise plan come from the DP module, every TRAIN task carries the
client's noise share parameters, and once the survivor set U3 is fixed -- before any unmask
request leaves the server -- the round is checked against ``t_min`` and written to the ledger.

An aborted round (threshold lost) is retried as a new attempt with fresh keys and a new model
version; clients refuse to contribute twice to one model version.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedvpa_secure.errors import AbortRound, BudgetExceededError, ConfigError, ProtocolError
from fedvpa_secure.proto import federation_pb2 as pb
from fedvpa_secure.secagg import ClientRejected, ServerSession
from fedvpa_secure.secagg.messages import PROTOCOL_VERSION, Message
from fedvpa_secure.train.aggregation import plain_sum
from fedvpa_secure.transport import serde
from fedvpa_secure.transport.secure_update import (
    config_to_json,
    join_result,
    layout_for,
    secagg_config,
)

log = logging.getLogger("fedvpa_secure.server")


class NotInRound(ProtocolError):
    """A message for a round or stage that is not open for this client (FAILED_PRECONDITION)."""


@dataclass
class RoundOutcome:
    """What one successful round produced (for the round log)."""

    round: int
    attempt: int
    round_id: str
    model_version: str
    survivors: list[str]
    dropped: dict[str, list[str]]
    rejected: list[list[str]]
    seconds: float
    stage_seconds: dict[str, float] = field(default_factory=dict)
    secure: bool = True


@dataclass
class Hooks:
    """Callbacks into the learner, ledger and checkpoint store (the server wires them)."""

    global_state: Callable[[], dict[str, np.ndarray]]
    update_spec: Callable[[], dict[str, tuple[tuple[int, ...], str]]]
    tau: Callable[[int], float]
    apply_sums: Callable[[int, dict[str, np.ndarray], RoundOutcome], None]
    persist_attempt: Callable[[int, int], None]


class Coordinator:
    """Rounds over whatever clients are connected; thread-safe entry points for the servicer."""

    def __init__(
        self,
        *,
        registry: dict[str, bytes],
        rounds: Any,
        quant: Any,
        hooks: Hooks,
        start_round: int = 0,
        start_attempt: int = 0,
        seed: int = 0,
        user_dp: Any = None,
    ) -> None:
        self.registry = registry
        self.user_dp = user_dp
        self.settings = rounds
        self.quant = quant
        self.hooks = hooks
        self.round_index = start_round
        self.attempt = start_attempt
        self.seed = seed
        self._cv = threading.Condition()
        self._mailbox: dict[str, collections.deque[pb.Task]] = collections.defaultdict(
            collections.deque
        )
        self._last_seen: dict[str, float] = {}
        self._session: ServerSession | None = None
        self._plain: dict[str, dict[str, np.ndarray]] | None = None
        self._participants: frozenset[str] = frozenset()
        self._round_id = ""
        self._model_version = ""
        self._model_blob = b""
        self._model_hash = ""
        self._expected_spec: dict[str, tuple[tuple[int, ...], str]] = {}
        self.finished = False
        self.failed: str | None = None
        self.outcomes: list[RoundOutcome] = []
        self._stop = threading.Event()

    # -- servicer entry points (any thread) -----------------------------------------------------

    def join(self, client_id: str) -> None:
        """A client announced itself; it counts as connected once it polls (data is ready)."""
        log.info("client %s joined", client_id)

    def poll(self, client_id: str, wait_s: float) -> pb.Task:
        """The next task for ``client_id``, waiting up to ``wait_s`` for one."""
        deadline = time.monotonic() + max(0.0, min(wait_s, 30.0))
        with self._cv:
            while True:
                self._last_seen[client_id] = time.monotonic()
                box = self._mailbox.get(client_id)
                if box:
                    return box.popleft()
                if self.finished:
                    return pb.Task(kind=pb.Task.FINISHED, reason=self.failed or "")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return pb.Task(kind=pb.Task.WAIT)
                self._cv.wait(remaining)

    def model_blob(self, client_id: str, model_version: str) -> bytes:
        """The serialized global state of the current round (only for its participants)."""
        with self._cv:
            if client_id not in self._participants or model_version != self._model_version:
                raise NotInRound(f"model version {model_version!r:.40} is not open for this client")
            return self._model_blob

    def submit(self, client_id: str, header: pb.UploadHeader, body: bytes) -> None:
        """Route one client upload into the open round.

        Raises:
            NotInRound: wrong round, version or mode, or the client was not sampled.
            ProtocolError: the body is malformed (INVALID_ARGUMENT); ClientRejected from the
                secagg session is a ProtocolError too. The round continues either way.
        """
        with self._cv:
            self._last_seen[client_id] = time.monotonic()
            if header.round_id != self._round_id or client_id not in self._participants:
                raise NotInRound(f"round {header.round_id!r:.60} is not open for this client")
            if header.model_version != self._model_version:
                raise NotInRound(f"model version {header.model_version!r:.40} is not current")
            if self._session is not None:
                if header.body != pb.UploadHeader.SECAGG:
                    raise NotInRound("this round is secure: clear-text updates are refused")
                message = serde.parse_secagg(body)
                try:
                    self._session.receive(message, authenticated_sender=client_id)
                except ClientRejected:
                    raise
                except ProtocolError as err:  # the session is not collecting now
                    raise NotInRound(str(err)) from err
            else:
                if header.body != pb.UploadHeader.PLAIN or self._plain is None:
                    raise NotInRound("this round expects a plain update")
                if client_id in self._plain:
                    raise ProtocolError("this client already sent its update")
                bundle = pb.TensorBundle()
                try:
                    bundle.ParseFromString(body)
                except Exception as err:  # protobuf DecodeError
                    raise ProtocolError("undecodable tensor bundle") from err
                self._plain[client_id] = serde.bundle_to_arrays(
                    bundle, expected=self._expected_spec
                )
            self._cv.notify_all()

    def connected(self) -> list[str]:
        now = time.monotonic()
        with self._cv:
            return sorted(
                u for u, t in self._last_seen.items() if now - t <= self.settings.liveness_s
            )

    def stop(self) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()

    # -- the round loop (one thread) ------------------------------------------------------------

    def run(self, on_progress: Callable[[str], None] | None = None) -> None:
        """Run rounds until done; sets :attr:`finished` (and :attr:`failed` on failure)."""
        try:
            while self.round_index < self.settings.rounds and not self._stop.is_set():
                tries = 0
                while True:
                    tries += 1
                    try:
                        outcome = self._run_round()
                        break
                    except AbortRound as exc:
                        log.warning("round %d attempt failed: %s", self.round_index, exc)
                        self._broadcast_abort(str(exc))
                        if tries >= self.settings.max_attempts or self._stop.is_set():
                            raise
                self.outcomes.append(outcome)
                self.round_index += 1
                if on_progress is not None:
                    on_progress(f"round {self.round_index}/{self.settings.rounds} done")
        except (AbortRound, ConfigError, BudgetExceededError) as exc:
            self.failed = str(exc)
            log.error("federation stopped: %s", exc)
        finally:
            with self._cv:
                self.finished = True
                self._participants = frozenset()
                self._cv.notify_all()

    def _sample(self) -> list[str]:
        s = self.settings
        deadline = time.monotonic() + s.join_timeout_s
        while True:
            alive = [u for u in self.connected() if u in self.registry]
            if len(alive) >= s.clients_per_round:
                break
            if time.monotonic() >= deadline or self._stop.is_set():
                if len(alive) >= s.min_survivors:
                    break
                raise AbortRound(
                    f"only {len(alive)} clients connected after {s.join_timeout_s:.0f}s; "
                    f"need at least {s.min_survivors}"
                )
            with self._cv:
                self._cv.wait(0.2)
        rng = np.random.default_rng([self.seed, self.round_index, self.attempt])
        n = min(len(alive), s.clients_per_round)
        return sorted(rng.choice(alive, size=n, replace=False).tolist())

    def _run_round(self) -> RoundOutcome:
        started = time.perf_counter()
        chosen = self._sample()
        attempt = self.attempt
        self.attempt += 1
        self.hooks.persist_attempt(self.round_index, self.attempt)
        round_id = f"r{self.round_index:05d}-a{attempt:03d}"
        version = f"{self.round_index}.{attempt}"
        state = self.hooks.global_state()
        blob = serde.arrays_to_bundle(state).SerializeToString()
        spec = self.hooks.update_spec()
        secure = self.settings.secure and not (
            self.settings.alternate_plain and self.round_index % 2 == 1
        )
        task = pb.Task(
            kind=pb.Task.TRAIN,
            round_id=round_id,
            model_version=version,
            model_hash=serde.state_hash(state),
            round_index=self.round_index,
            tau=self.hooks.tau(self.round_index),
            secure=secure,
        )
        session = None
        plan = None
        if secure and self.user_dp is not None:
            config, plan = self.user_dp.round_config(len(chosen), spec, self.round_index)
            task.user_dp.CopyFrom(self.user_dp.share_message(plan))
        elif secure:
            config = secagg_config(
                len(chosen),
                threshold=self.settings.threshold,
                min_clients=self.settings.min_survivors,
                hardened=self.settings.hardened,
                delta_clip=self.quant.delta_clip,
                prior_clip=self.quant.prior_clip,
                stage_deadline_s=self.settings.stage_deadline_s,
            )
        if secure:
            layout = layout_for({k: v for k, v in spec.items() if k != "weight"}, config)
            session = ServerSession(config, layout, round_id, chosen, self.registry)
            task.secagg_config_json = config_to_json(config)
        with self._cv:
            self._mailbox.clear()  # tasks of an earlier attempt are void
            self._round_id, self._model_version = round_id, version
            self._model_blob, self._model_hash = blob, task.model_hash
            self._participants = frozenset(chosen)
            self._session = session
            self._plain = None if session is not None else {}
            self._expected_spec = {k: (shape, dtype) for k, (shape, dtype) in spec.items()}
        log.info("round %s: sampled %d clients (model %s)", round_id, len(chosen), version)
        stage_seconds: dict[str, float] = {}
        if session is None:
            sums, survivors, dropped = self._plain_round(task, chosen)
            rejected: list[list[str]] = []
        else:
            sums, survivors, dropped, rejected = self._secure_round(
                task, session, spec, stage_seconds, plan
            )
        outcome = RoundOutcome(
            round=self.round_index + 1,
            attempt=attempt,
            round_id=round_id,
            model_version=version,
            survivors=list(survivors),
            dropped=dropped,
            rejected=rejected,
            seconds=round(time.perf_counter() - started, 4),  # sampling -> sum available
            stage_seconds=stage_seconds,
            secure=secure,
        )
        with self._cv:
            self._participants = frozenset()
            self._session = None
            self._plain = None
        log.info("round %s: summed %d clients in %.2fs", round_id, len(survivors), outcome.seconds)
        self.hooks.apply_sums(self.round_index, sums, outcome)
        return outcome

    def _deliver(self, outbox: dict[str, Message], first: pb.Task | None, round_id: str) -> None:
        with self._cv:
            for u, message in outbox.items():
                payload = serde.message_to_proto(message).SerializeToString()
                if first is not None:
                    t = pb.Task()
                    t.CopyFrom(first)
                    t.payload = payload
                else:
                    t = pb.Task(kind=pb.Task.SECAGG, round_id=round_id, payload=payload)
                self._mailbox[u].append(t)
            self._cv.notify_all()

    def _wait_stage(
        self,
        pending: Callable[[], frozenset[str] | set[str]],
        deadline_s: float,
        liveness: bool = True,
    ) -> None:
        """Until nobody is pending, every pending client went silent, or the deadline passed.

        ``liveness=False`` for the stage that includes local training (clients do not poll
        while they train), where only the deadline counts.
        """
        deadline = time.monotonic() + deadline_s
        with self._cv:
            while not self._stop.is_set():
                waiting = pending()
                if not waiting:
                    return
                now = time.monotonic()
                if now >= deadline:
                    log.warning("stage deadline passed; %d clients did not answer", len(waiting))
                    return
                silent = [
                    u
                    for u in waiting
                    if now - self._last_seen.get(u, 0.0) > self.settings.liveness_s
                ]
                if liveness and len(silent) == len(waiting) and not self._mailbox_pending(waiting):
                    log.warning("%d pending clients went silent; closing the stage", len(silent))
                    return
                self._cv.wait(min(0.5, deadline - now))

    def _mailbox_pending(self, ids: Any) -> bool:
        return any(self._mailbox.get(u) for u in ids)

    def _secure_round(
        self,
        task: pb.Task,
        session: ServerSession,
        spec: dict[str, tuple[tuple[int, ...], str]],
        stage_seconds: dict[str, float],
        plan: Any = None,
    ) -> tuple[dict[str, np.ndarray], tuple[str, ...], dict[str, list[str]], list[list[str]]]:
        """Drive the secagg session stage by stage; with a DP plan, record before unmasking."""
        outbox = session.start()
        recorded = plan is None
        first: pb.Task | None = task
        deadline = self.settings.train_deadline_s
        while outbox:
            t0 = time.perf_counter()
            training = first is not None
            self._deliver(outbox, first, task.round_id)
            first = None
            self._wait_stage(session.pending, deadline, liveness=not training)
            deadline = self.settings.stage_deadline_s
            with self._cv:
                stage = session.stage.name
                outbox = session.close_stage()
            stage_seconds[stage] = round(time.perf_counter() - t0, 4)
            if not recorded and session.survivors:
                # U3 is fixed and no unmask request has left: the write-ahead point
                recorded = True
                self.user_dp.before_unmask(self.round_index, task.round_id, session.survivors, plan)
        result = session.result
        if result is None:  # pragma: no cover - close_stage raises instead
            raise AbortRound(f"round {task.round_id} produced no result")
        extras_shapes = {k: shape for k, (shape, _dtype) in spec.items() if k.startswith("prior/")}
        sums = join_result(result, extras_shapes)
        dropped = {k: list(v) for k, v in result.dropped.items()}
        rejected = [list(r) for r in result.rejected]
        return sums, result.survivors, dropped, rejected

    def _plain_round(
        self, task: pb.Task, chosen: list[str]
    ) -> tuple[dict[str, np.ndarray], tuple[str, ...], dict[str, list[str]]]:
        with self._cv:
            for u in chosen:
                self._mailbox[u].append(task)
            self._cv.notify_all()

        def pending() -> set[str]:
            return set(chosen) - set(self._plain or {})

        self._wait_stage(pending, self.settings.train_deadline_s, liveness=False)
        with self._cv:
            got = dict(self._plain or {})
        if len(got) < self.settings.min_survivors:
            raise AbortRound(f"only {len(got)} plain updates arrived")
        order = sorted(got)
        sums = plain_sum([got[u] for u in order])
        return sums, tuple(order), {"PLAIN": sorted(set(chosen) - set(got))}

    def _broadcast_abort(self, reason: str) -> None:
        with self._cv:
            for u in self._participants:
                self._mailbox[u].append(
                    pb.Task(kind=pb.Task.ABORT, round_id=self._round_id, reason=reason[:200])
                )
            self._participants = frozenset()
            self._session = None
            self._plain = None
            self._cv.notify_all()


def outcome_dict(outcome: RoundOutcome) -> dict[str, Any]:
    return dataclasses.asdict(outcome)


__all__ = ["PROTOCOL_VERSION", "Coordinator", "Hooks", "NotInRound", "RoundOutcome"]
