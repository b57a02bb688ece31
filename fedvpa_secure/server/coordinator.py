"""The round state machine of the real federation: sampling, stages, deadlines, retries.

One thread (:meth:`Coordinator.run`) drives rounds; gRPC handler threads only call
:meth:`poll`, :meth:`model_blob`, :meth:`admit` and :meth:`submit`, which take the lock, check, and
hand work over through per-client mailboxes (uploads are parsed before the lock is taken). A round:

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedvpa_secure.errors import AbortRound, BudgetExceededError, ConfigError, ProtocolError
from fedvpa_secure.proto import federation_pb2 as pb
from fedvpa_secure.secagg import ClientRejected, ServerSession
from fedvpa_secure.secagg.messages import PROTOCOL_VERSION, Message, MessageLimits, Stage
from fedvpa_secure.secagg.server import EXPECTED_MESSAGE, ServerStage
from fedvpa_secure.train.aggregation import MAX_CLIENT_WEIGHT, WEIGHT, plain_sum
from fedvpa_secure.transport import serde
from fedvpa_secure.transport.chunking import UploadTooLarge, check_declared_size
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
    declined: dict[str, str] = field(default_factory=dict)
    """Sampled clients whose own privacy policy refused the task -> the reason each gave."""


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
        self._declined: dict[str, str] = {}
        self._contributed: set[str] = set()  # sent a masked input or plain update this attempt
        self._benched: set[str] = set()  # left out of the current round's later attempts
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

    def admit(self, client_id: str, header: pb.UploadHeader, *, max_bytes: int) -> Admission:
        """Decide from the upload's header alone whether its body may be read, and up to what size.

        Called before the first chunk is read, so that a client that is not in the open round,
        that the secure-aggregation session expects nothing from (it already answered this
        stage, or was dropped or rejected earlier in the round), or that declares more bytes
        than this round or stage can need, costs the server no reading, buffering or parsing.

        Args:
            client_id: the authenticated peer.
            header: the upload's first message.
            max_bytes: the transport's own limit (``max_message_mb``).

        Raises:
            NotInRound: wrong round, version or body kind, not sampled, or not expected now.
            UploadTooLarge: the declared size exceeds what the round or stage can need.
            ProtocolError: the client already sent its plain update this round.
        """
        with self._cv:
            self._last_seen[client_id] = time.monotonic()
            if header.round_id != self._round_id or client_id not in self._participants:
                raise NotInRound(f"round {header.round_id!r:.60} is not open for this client")
            if header.model_version != self._model_version:
                raise NotInRound(f"model version {header.model_version!r:.40} is not current")
            if header.body == pb.UploadHeader.DECLINE:
                if client_id in self._declined:
                    raise ProtocolError("this client already declined this round")
                need = MAX_DECLINE_BYTES
            elif self._session is not None:
                need = self._secagg_need(client_id, header, self._session)
            else:
                need = self._plain_need(client_id, header)
            limit = min(max_bytes, need)
            check_declared_size(int(header.total_size), limit)
            return Admission(
                round_id=self._round_id,
                session=self._session,
                stage=None if self._session is None else self._session.stage,
                spec=self._expected_spec,
                max_bytes=limit,
            )

    def submit(
        self,
        client_id: str,
        header: pb.UploadHeader,
        body: bytes,
        admission: Admission | None = None,
    ) -> None:
        """Route one client upload into the open round.

        The body is parsed and checked before the coordinator lock is taken (a large or
        adversarial body must not stall every other client's poll), then handed over under the
        lock after re-checking that the round, and for secure rounds the stage, are still the
        ones the header was admitted for.

        Args:
            admission: what :meth:`admit` returned for ``header`` before the body was read;
                ``None`` admits it here (in-process callers that already hold the body).

        Raises:
            NotInRound: wrong round, version or mode, the client was not sampled, or the round
                or stage closed while the body was in flight.
            UploadTooLarge: the body exceeds what the round or stage can need.
            ProtocolError: the body is malformed or a plain update is not finite or has an
                out-of-range weight (INVALID_ARGUMENT); ClientRejected from the secagg session
                is a ProtocolError too. The round continues either way.
        """
        if admission is None:
            admission = self.admit(client_id, header, max_bytes=len(body))
        check_declared_size(len(body), admission.max_bytes)
        if header.body == pb.UploadHeader.DECLINE:
            self._record_decline(client_id, body, admission)
            return
        if admission.session is not None:
            message = serde.parse_secagg(body)
            with self._cv:
                self._check_still_open(admission)
                try:
                    admission.session.receive(message, authenticated_sender=client_id)
                except ClientRejected:
                    raise
                except ProtocolError as err:  # the session is not collecting now
                    raise NotInRound(str(err)) from err
                if admission.stage is ServerStage.COLLECT_MASKED:
                    self._contributed.add(client_id)
                self._cv.notify_all()
            return
        update = parse_plain_update(body, admission.spec)
        with self._cv:
            self._check_still_open(admission)
            if self._plain is None:  # pragma: no cover - _check_still_open covers it
                raise NotInRound("this round expects no plain update now")
            if client_id in self._plain:
                raise ProtocolError("this client already sent its update")
            self._plain[client_id] = update
            self._contributed.add(client_id)
            self._cv.notify_all()

    def _record_decline(self, client_id: str, body: bytes, admission: Admission) -> None:
        """A sampled client's policy refused the task: log why and stop waiting for it.

        The round goes on with the others (a secure round drops it at the stage it skips, as
        it would a client that went silent, but without waiting out the deadline).
        """
        reason = printable_reason(body)
        with self._cv:
            if admission.round_id != self._round_id:
                raise NotInRound(f"round {admission.round_id!r:.60} is over")
            self._declined[client_id] = reason
            self._cv.notify_all()
        log.warning(
            "round %s: client %s declined the task: %s", admission.round_id, client_id, reason
        )

    def _secagg_need(self, client_id: str, header: pb.UploadHeader, session: ServerSession) -> int:
        """The most bytes the session's current stage can need from ``client_id`` (lock held)."""
        if header.body != pb.UploadHeader.SECAGG:
            raise NotInRound("this round is secure: clear-text updates are refused")
        expected = _UPLOAD_OF_STAGE.get(session.stage)
        if expected is None:
            raise NotInRound(f"round {session.round_id!r} is {session.stage.value}: not collecting")
        if client_id not in session.pending():
            raise NotInRound(
                f"the secure-aggregation session expects nothing from this client at "
                f"{session.stage.value}: it already answered, or was dropped or rejected "
                "earlier in this round; wait for the next round"
            )
        return secagg_upload_limit(session, expected)

    def _plain_need(self, client_id: str, header: pb.UploadHeader) -> int:
        """The most bytes a plain update of this round can need (lock held)."""
        if header.body != pb.UploadHeader.PLAIN or self._plain is None:
            raise NotInRound("this round expects a plain update")
        if client_id in self._plain:
            raise ProtocolError("this client already sent its update")
        return plain_bundle_bytes(self._expected_spec) + PLAIN_SLACK_BYTES

    def _check_still_open(self, admission: Admission) -> None:
        """Refuse a body whose round or stage closed while it was read and parsed (lock held)."""
        same_round = admission.round_id == self._round_id and admission.session is self._session
        if admission.session is None:
            still_open = same_round and self._plain is not None
        else:
            still_open = same_round and admission.session.stage is admission.stage
        if not still_open:
            raise NotInRound(
                f"round {admission.round_id!r:.60} moved on while this upload was in flight; "
                "wait for the next task"
            )

    def _bench_after_abort(self) -> None:
        """Leave out of the retry whoever would make it fail again, before it is sampled.

        A retry trains the same model (same hash): clients that already sent a masked input or
        plain update for it refuse a second contribution (SECURITY.md, "Operational rules"), a
        client that declined will decline again, and a member of U1 that gave no valid graph nonce
        aborted the attempt for everyone (the seed needs every member) and could do so again.
        """
        with self._cv:
            benched = set(self._contributed) | set(self._declined)
            session = self._session
            if session is not None:
                benched |= set(session.dropped.get(Stage.GRAPH_SEED.name, ()))
                benched |= {r.client_id for r in session.rejections if r.fatal}
            self._benched |= benched
            self._contributed = set()
        if benched:
            log.warning(
                "round %d: %d clients sit out its retries (contributed to this model, declined, "
                "or stalled the graph seed): %s",
                self.round_index,
                len(benched),
                ", ".join(sorted(benched)[:10]),
            )

    def _with_declines(self, exc: AbortRound) -> AbortRound:
        """Name the clients whose policy refused the round in its abort reason, if any."""
        with self._cv:
            declined = dict(self._declined)
        if not declined:
            return exc
        reasons = "; ".join(f"{u}: {r[:160]}" for u, r in sorted(declined.items())[:3])
        more = f" (and {len(declined) - 3} more)" if len(declined) > 3 else ""
        return AbortRound(f"{exc} - {len(declined)} clients declined: {reasons}{more}")

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
                        self._bench_after_abort()
                        failure = self._with_declines(exc)
                        log.warning("round %d attempt failed: %s", self.round_index, failure)
                        self._broadcast_abort(str(failure))
                        if tries >= self.settings.max_attempts or self._stop.is_set():
                            if failure is exc:
                                raise
                            raise failure from exc
                self.outcomes.append(outcome)
                self.round_index += 1
                self._benched = set()  # a new model: everyone may contribute again
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
            alive = [u for u in self.connected() if u in self.registry and u not in self._benched]
            if len(alive) >= s.clients_per_round:
                break
            if time.monotonic() >= deadline or self._stop.is_set():
                if len(alive) >= s.min_survivors:
                    break
                sitting_out = f" ({len(self._benched)} more sit out this round's retries)"
                raise AbortRound(
                    f"only {len(alive)} clients connected after {s.join_timeout_s:.0f}s"
                    f"{sitting_out if self._benched else ''}; need at least {s.min_survivors}"
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
            self._declined = {}
            self._contributed = set()
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
            outcome.declined = dict(self._declined)
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
        quorum: int = 0,
    ) -> None:
        """Until nobody is pending, every pending client went silent, or the deadline passed.

        ``liveness=False`` for the stage that includes local training (clients do not poll
        while they train): there the deadline counts, and the straggler window
        (:meth:`_straggler_window`) once ``quorum`` clients (what the round needs to finish)
        and half of those asked have really answered.
        """
        start = time.monotonic()
        deadline = start + deadline_s
        with self._cv:
            asked = set(pending())
            window_open = False
            while not self._stop.is_set():
                waiting = pending()
                if not waiting:
                    return
                now = time.monotonic()
                answered = len(asked - set(waiting) - self._declined.keys())
                if not (liveness or window_open) and self._quorum_reached(
                    answered, len(asked), quorum
                ):
                    window_open = True
                    deadline = min(deadline, now + self._straggler_window(now - start))
                    log.info(
                        "%d of %d clients answered in %.1f s; the rest get %.1f s more",
                        answered,
                        len(asked),
                        now - start,
                        deadline - now,
                    )
                if now >= deadline:
                    why = "straggler window closed" if window_open else "stage deadline passed"
                    log.warning("%s; %d clients did not answer", why, len(waiting))
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

    def _quorum_reached(self, answered: int, asked: int, quorum: int) -> bool:
        """Whether the straggler window opens: the rule is on, and enough real answers (not
        declines) are in for the round to finish without the stragglers."""
        return self.settings.straggler_factor > 0 and answered >= max(quorum, (asked + 1) // 2)

    def _straggler_window(self, elapsed: float) -> float:
        """How long the remaining clients get: ``straggler_factor`` times as long again as the
        stage has taken, at least ``stage_deadline_s``. A client whose link died mid-training
        looks exactly like a slow one, so without this the round waits for the train deadline."""
        return max(self.settings.stage_deadline_s, self.settings.straggler_factor * elapsed)

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
            self._wait_stage(
                lambda: session.pending() - self._declined.keys(),
                deadline,
                liveness=not training,
                quorum=max(
                    session.config.threshold,
                    self.settings.min_survivors,
                    0 if plan is None else plan.min_survivors,
                ),
            )
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
            return set(chosen) - set(self._plain or {}) - self._declined.keys()

        self._wait_stage(
            pending,
            self.settings.train_deadline_s,
            liveness=False,
            quorum=self.settings.min_survivors,
        )
        with self._cv:
            got = dict(self._plain or {})
        if len(got) < self.settings.min_survivors:
            raise AbortRound(f"only {len(got)} plain updates arrived")
        order = sorted(got)
        with np.errstate(over="ignore", invalid="ignore"):  # check_finite_sum reports it
            sums = plain_sum([got[u] for u in order])
        check_finite_sum(sums, task.round_id)
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


# -- upload admission and plain-update checks (SECURITY.md, issue 14) ---------------------------


@dataclass(frozen=True)
class Admission:
    """What an upload's header was admitted for; its body must fit it and find it still open."""

    round_id: str
    session: ServerSession | None
    stage: ServerStage | None
    spec: dict[str, tuple[tuple[int, ...], str]]
    max_bytes: int


_UPLOAD_OF_STAGE: Mapping[ServerStage, type[Message]] = EXPECTED_MESSAGE
"""The one message a client may send while the session collects at each stage: the session's
own map, so that a stage added to the protocol is admitted here with no change."""

PROTO_FRAMING_SLACK = 4096
"""Protobuf framing (field names, map-entry tags) on top of the secagg wire-size estimate: the
library's limits count only the fields' contents. Measured at most 0.76 of the limit for
every honest message of 3-12 client rounds, so limit * 5/4 + this leaves wide room."""

MAX_DECLINE_BYTES = 4096
"""A decline carries only the client's human-readable reason."""

PLAIN_SLACK_BYTES = 1024
"""Room over the exact size of an honest plain bundle, for an encoder that writes a shape
unpacked or orders fields differently; it is not room for a larger tensor."""


def secagg_upload_limit(session: ServerSession, expected: type[Message]) -> int:
    """The largest serialized ``expected`` message the session would still accept this round.

    The secure-aggregation library refuses larger messages only after they are parsed; the
    same limit, with protobuf framing on top, refuses them before a byte is read.
    """
    config = session.config
    limits = MessageLimits.for_round(
        config.n_clients, config.degree, session.layout.size, config.max_message_factor
    )
    limit = limits.limit(expected)
    return limit + limit // 4 + PROTO_FRAMING_SLACK


def plain_bundle_bytes(spec: dict[str, tuple[tuple[int, ...], str]]) -> int:
    """The exact serialized size of an honest plain update of ``spec`` (a TensorBundle)."""
    total = 0
    for name, (shape, dtype) in spec.items():
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        nbytes = count * np.dtype(dtype).itemsize
        tensor = pb.Tensor(name=name, shape=list(shape), dtype=dtype).ByteSize()
        if nbytes:
            tensor += 1 + _varint_bytes(nbytes) + nbytes
        total += 1 + _varint_bytes(tensor) + tensor
    return total


def _varint_bytes(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def printable_reason(body: bytes, limit: int = 500) -> str:
    """A client-supplied reason made safe for one log line: decoded, control characters out."""
    text = body.decode("utf-8", errors="replace")
    return "".join(c if c.isprintable() else " " for c in text)[:limit]


def parse_plain_update(
    body: bytes, spec: dict[str, tuple[tuple[int, ...], str]]
) -> dict[str, np.ndarray]:
    """Decode a plain update and refuse one that would wreck the round's sum.

    A NaN or infinity in any tensor makes the whole sum, and so the next global model,
    non-finite; a weight outside [0, MAX_CLIENT_WEIGHT] lets one client outvote every other
    (secure rounds cap the weight inside the protocol; plain rounds must check it here).

    Raises:
        ProtocolError: undecodable, not the round's spec, a non-finite value, or a bad weight.
    """
    bundle = pb.TensorBundle()
    try:
        bundle.ParseFromString(body)
    except Exception as err:  # protobuf DecodeError
        raise ProtocolError("undecodable tensor bundle") from err
    update = serde.bundle_to_arrays(bundle, expected=spec)
    for name, values in update.items():
        if values.dtype.kind in "fc" and not np.all(np.isfinite(values)):
            raise ProtocolError(
                f"plain update tensor {name!r:.64} holds NaN or infinite values; the client "
                "must send a finite update (its training diverged or the update is forged)"
            )
    weight = update.get(WEIGHT)
    if weight is not None and not np.all((weight >= 0) & (weight <= MAX_CLIENT_WEIGHT)):
        raise ProtocolError(
            f"plain update weight {weight.reshape(-1)[:1].tolist()} is outside [0, "
            f"{MAX_CLIENT_WEIGHT}]; the client must cap its example count at MAX_CLIENT_WEIGHT"
        )
    return update


def check_finite_sum(sums: dict[str, np.ndarray], round_id: str) -> None:
    """Refuse to apply a plain sum that is not finite (finite updates can still overflow).

    Raises:
        AbortRound: some summed tensor holds NaN or infinity; the attempt is discarded.
    """
    bad = sorted(k for k, v in sums.items() if not np.all(np.isfinite(v)))
    if bad:
        raise AbortRound(
            f"round {round_id}: the plain sum is not finite in {bad[:3]}; the attempt is "
            "discarded and nothing is applied"
        )


__all__ = [
    "PROTOCOL_VERSION",
    "Admission",
    "Coordinator",
    "Hooks",
    "NotInRound",
    "RoundOutcome",
    "UploadTooLarge",
]
