"""The server side of one round, as an explicit state machine.

The coordinator drives a :class:`ServerSession` with three calls: :meth:`~ServerSession.start`
(the advertise requests), :meth:`~ServerSession.receive` for every inbound message, and
:meth:`~ServerSession.close_stage` when a stage's deadline passes or every expected client has
answered; that returns the next stage's messages, by client. The server moves through
:class:`ServerStage` along :data:`SERVER_TRANSITIONS` only.

:meth:`~ServerSession.receive` validates a message completely - type, size, header, fields, then
stage-specific structure, then (last) cryptographic checks - before it stores anything. An illegal
message raises :class:`~fedvpa_secure.secagg.errors.ClientRejected` naming the offender; the
offender is out of the round and the round goes on without it (as if it had dropped). Only too few
survivors, a member of U1 missing from the graph-seed stage (the seed needs every member's nonce,
:mod:`.graph`), or a failed integrity check on the rebuilt secrets or the decoded sum, aborts the
round: :class:`~fedvpa_secure.errors.AbortRound`, with no partial output.

Memory: masked inputs are kept until the masked-input stage closes (a late complaint can still
exclude a client whose input has arrived), then summed in place into one uint32 vector.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

import numpy as np

from fedvpa_secure.errors import AbortRound, ConfigError, IntegrityError, ProtocolError
from fedvpa_secure.secagg import envelope, graph, kdf, keys, masking, messages, shamir
from fedvpa_secure.secagg.client import KIND_KEY, KIND_SEED
from fedvpa_secure.secagg.commitments import matches, secret_commitment, share_commitment
from fedvpa_secure.secagg.config import SecAggConfig
from fedvpa_secure.secagg.errors import ClientRejected
from fedvpa_secure.secagg.layout import Layout
from fedvpa_secure.secagg.log import LOGGER
from fedvpa_secure.secagg.messages import (
    SERVER_ID,
    AdvertiseKeys,
    AdvertiseRequest,
    ConsistencyRequest,
    ConsistencySignature,
    GraphReveal,
    KeyDirectory,
    MaskedInput,
    MaskedInputRequest,
    Message,
    RevealDirectory,
    ShareKeys,
    Stage,
    UnmaskRequest,
    UnmaskShares,
    header,
)


class ServerStage(enum.Enum):
    """Which messages the server is collecting."""

    NEW = "new"
    COLLECT_KEYS = "collect-keys"
    COLLECT_REVEALS = "collect-graph-reveals"
    COLLECT_SHARES = "collect-shares"
    COLLECT_MASKED = "collect-masked-inputs"
    COLLECT_SIGNATURES = "collect-signatures"
    COLLECT_UNMASK = "collect-unmask-shares"
    FINISHED = "finished"
    ABORTED = "aborted"


SERVER_TRANSITIONS: Mapping[ServerStage, frozenset[ServerStage]] = {
    ServerStage.NEW: frozenset({ServerStage.COLLECT_KEYS, ServerStage.ABORTED}),
    ServerStage.COLLECT_KEYS: frozenset({ServerStage.COLLECT_REVEALS, ServerStage.ABORTED}),
    ServerStage.COLLECT_REVEALS: frozenset({ServerStage.COLLECT_SHARES, ServerStage.ABORTED}),
    ServerStage.COLLECT_SHARES: frozenset({ServerStage.COLLECT_MASKED, ServerStage.ABORTED}),
    ServerStage.COLLECT_MASKED: frozenset(
        {ServerStage.COLLECT_SIGNATURES, ServerStage.COLLECT_UNMASK, ServerStage.ABORTED}
    ),
    ServerStage.COLLECT_SIGNATURES: frozenset({ServerStage.COLLECT_UNMASK, ServerStage.ABORTED}),
    ServerStage.COLLECT_UNMASK: frozenset({ServerStage.FINISHED, ServerStage.ABORTED}),
    ServerStage.FINISHED: frozenset(),
    ServerStage.ABORTED: frozenset(),
}
"""Legal transitions; COLLECT_MASKED -> COLLECT_UNMASK skips consistency (not hardened)."""

EXPECTED_MESSAGE: Mapping[ServerStage, type[Message]] = {
    ServerStage.COLLECT_KEYS: AdvertiseKeys,
    ServerStage.COLLECT_REVEALS: GraphReveal,
    ServerStage.COLLECT_SHARES: ShareKeys,
    ServerStage.COLLECT_MASKED: MaskedInput,
    ServerStage.COLLECT_SIGNATURES: ConsistencySignature,
    ServerStage.COLLECT_UNMASK: UnmaskShares,
}
"""The one client message each collecting stage accepts (the transport admits uploads by it)."""


@dataclass(frozen=True)
class AggregateResult:
    """The output of a successful round: the decoded sum over the survivors U3, and bookkeeping.

    Attributes:
        round_id: the round.
        tensors: name -> float64 sum of the survivors' (clipped, quantised) tensors, original shape.
        extras: name -> float64 sum of the extra vectors.
        weight: sum of the survivors' capped weights.
        count: number of inputs in the sum (always ``len(survivors)``; checked).
        survivors: U3, the clients whose inputs are in the sum.
        dropped: stage name -> clients that did not answer that stage or were rejected in it.
        rejected: (client, stage, reason) for every rejected message.
        ring_sum: the raw sum in Z_(2^32) (what the server decoded).
    """

    round_id: str
    tensors: dict[str, np.ndarray]
    extras: dict[str, np.ndarray]
    weight: float
    count: int
    survivors: tuple[str, ...]
    dropped: dict[str, tuple[str, ...]] = field(default_factory=dict)
    rejected: tuple[tuple[str, str, str], ...] = ()
    ring_sum: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32), repr=False)


@dataclass
class _Revealed:
    seeds: dict[str, shamir.Share] = field(default_factory=dict)
    keys: dict[str, shamir.Share] = field(default_factory=dict)


class ServerSession:
    """The server's state for one round.

    Args:
        config: the round configuration.
        layout: the update layout.
        round_id: a fresh id (never reuse one: a retry is a new round with fresh keys).
        participants: the sampled client ids (exactly ``config.n_clients``).
        registry: client id -> raw Ed25519 identity public key (registered out of band).
        spent_keys: public keys seen in earlier rounds; advertising one again is refused.
        workers: threads for unmasking (``None``: all usable CPUs, at most 8).
    """

    def __init__(
        self,
        config: SecAggConfig,
        layout: Layout,
        round_id: str,
        participants: Sequence[str],
        registry: Mapping[str, bytes],
        *,
        spent_keys: AbstractSet[bytes] = frozenset(),
        workers: int | None = None,
    ) -> None:
        if not messages.is_valid_id(round_id):
            raise ConfigError(f"invalid round id {round_id!r}")
        ids = list(participants)
        if len(set(ids)) != len(ids) or len(ids) != config.n_clients:
            raise ConfigError(
                f"participants: {len(set(ids))} distinct ids given, config.n_clients is "
                f"{config.n_clients}"
            )
        for u in ids:
            if not messages.is_valid_id(u) or u not in registry:
                raise ConfigError(f"participant {u!r} is not a registered, valid client id")
        self.config = config
        self.layout = layout
        self.round_id = round_id
        self.participants = tuple(sorted(ids))
        self._registry = {u: registry[u] for u in ids}
        self._spent_keys = frozenset(spent_keys)
        self._workers = workers
        self._config_digest = config.digest()
        self._limits = messages.MessageLimits.for_round(
            config.n_clients, config.degree, layout.size, config.max_message_factor
        )
        self._t = int(config.threshold)  # type: ignore[arg-type]
        self._t_share = config.share_threshold()
        self.stage = ServerStage.NEW
        self.result: AggregateResult | None = None
        self.abort_reason: str | None = None
        self.rejections: list[ClientRejected] = []
        self.dropped: dict[str, tuple[str, ...]] = {}
        self.timings: dict[str, float] = {}
        self.unmask_streams = 0
        self._asked: frozenset[str] = frozenset()
        self._banned: set[str] = set()
        self._answers: dict[str, Message] = {}
        # round state
        self._keys: dict[str, tuple[bytes, bytes, bytes, bytes]] = {}
        self._directory_payload = b""
        self._u1: tuple[str, ...] = ()
        self._nbrs: dict[str, frozenset[str]] = {}
        self._points: dict[str, int] = {}
        self._session_id = b""
        self._share_commitments: dict[str, dict[str, tuple[bytes, bytes]]] = {}
        self._secret_commitments: dict[str, bytes] = {}
        self._u2: tuple[str, ...] = ()
        self._delivered: dict[str, frozenset[str]] = {}
        self._u3: tuple[str, ...] = ()
        self._views: dict[str, frozenset[str]] = {}
        self._acc: np.ndarray | None = None
        self._lists: dict[str, tuple[frozenset[str], frozenset[str]]] = {}
        self._revealed: dict[str, _Revealed] = {}

    def __repr__(self) -> str:
        return f"ServerSession(round={self.round_id!r}, stage={self.stage.name})"

    # -- public API ------------------------------------------------------------------------------

    @property
    def session_id(self) -> bytes:
        """The session id (empty before the advertise stage closes)."""
        return self._session_id

    @property
    def neighbourhoods(self) -> Mapping[str, frozenset[str]]:
        """The graph over U1 (empty before the graph-seed stage closes)."""
        return self._nbrs

    @property
    def survivors(self) -> tuple[str, ...]:
        """U3 (empty before the masked-input stage closes)."""
        return self._u3

    def pending(self) -> frozenset[str]:
        """Clients asked in this stage that have neither answered nor been rejected."""
        return self._asked - set(self._answers) - self._banned

    def start(self) -> dict[str, Message]:
        """Open the round: one advertise request per participant."""
        self._transition(ServerStage.COLLECT_KEYS)
        request = AdvertiseRequest(
            **header(AdvertiseRequest, self.round_id, SERVER_ID),
            config_digest=self._config_digest,
            layout_digest=self.layout.digest,
        )
        self._open(self.participants)
        LOGGER.info("round %s: opened with %d clients", self.round_id, len(self.participants))
        return {u: request for u in self.participants}

    def receive(self, message: object, *, authenticated_sender: str | None = None) -> None:
        """Validate and store one client message.

        Args:
            message: the inbound message (untrusted).
            authenticated_sender: the peer id the transport authenticated (the mTLS certificate's
                client id); when given, the message's ``sender`` must equal it. The gRPC layer
                must always pass it; without it the claimed sender is trusted (in-process use).

        Raises:
            ClientRejected: the message is illegal; its sender is out of the round.
            ProtocolError: the server is not collecting messages now.
        """
        expected = EXPECTED_MESSAGE.get(self.stage)
        if expected is None:
            raise ProtocolError(f"round {self.round_id!r} is {self.stage.value}: not collecting")
        claimed = getattr(message, "sender", None)
        sender = authenticated_sender if authenticated_sender is not None else claimed
        offender = sender if messages.is_valid_id(sender) else "<unidentified>"
        started = time.perf_counter()
        try:
            messages.validate(
                message, expected=expected, round_id=self.round_id, limits=self._limits
            )
            if authenticated_sender is not None and claimed != authenticated_sender:
                raise ProtocolError(f"sender field {claimed!r:.40} is not the authenticated peer")
            if offender in self._answers:
                raise ProtocolError("this client already answered this stage")
            if offender not in self._asked or offender in self._banned:
                raise ProtocolError("this client is not expected at this stage")
            self._handle(message)  # type: ignore[arg-type]
        except (ProtocolError, IntegrityError) as exc:
            member = offender in self._asked and offender not in self._answers
            rejection = ClientRejected(
                self.round_id,
                offender,
                expected.STAGE.name,
                str(exc),
                fatal=member and expected is GraphReveal,
            )
            if member:
                self._banned.add(offender)
            self.rejections.append(rejection)
            LOGGER.warning("%s", rejection)
            raise rejection from exc
        finally:
            self._time(f"receive {expected.STAGE.name}", started)
        self._answers[offender] = message  # type: ignore[assignment]

    def close_stage(self) -> dict[str, Message]:
        """End the current stage and return the next stage's messages, by client.

        Returns an empty dict when the round has finished; :attr:`result` then holds the sum.

        Raises:
            AbortRound: too few clients remain, a member of U1 gave no valid graph nonce, or a
                rebuilt secret or the decoded sum fails its check. The session is ``ABORTED`` and
                produces no output.
        """
        closers = {
            ServerStage.COLLECT_KEYS: self._close_keys,
            ServerStage.COLLECT_REVEALS: self._close_reveals,
            ServerStage.COLLECT_SHARES: self._close_shares,
            ServerStage.COLLECT_MASKED: self._close_masked,
            ServerStage.COLLECT_SIGNATURES: self._close_signatures,
            ServerStage.COLLECT_UNMASK: self._close_unmask,
        }
        closer = closers.get(self.stage)
        if closer is None:
            raise ProtocolError(f"round {self.round_id!r} is {self.stage.value}: nothing to close")
        stage_name = EXPECTED_MESSAGE[self.stage].STAGE.name
        self.dropped[stage_name] = tuple(sorted(self._asked - set(self._answers)))
        started = time.perf_counter()
        try:
            return closer()
        except AbortRound as exc:
            self._abort(str(exc))
            raise
        except (ProtocolError, IntegrityError) as exc:
            reason = f"round {self.round_id!r} aborted at {stage_name}: {exc}"
            self._abort(reason)
            raise AbortRound(reason) from exc
        finally:
            self._time(f"close {stage_name}", started)

    # -- machinery ----------------------------------------------------------------------------

    def _time(self, key: str, started: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - started

    def _transition(self, target: ServerStage) -> None:
        if target not in SERVER_TRANSITIONS[self.stage]:
            raise ProtocolError(f"illegal server transition {self.stage.name} -> {target.name}")
        self.stage = target

    def _open(self, asked: Sequence[str]) -> None:
        self._asked = frozenset(asked)
        self._answers = {}

    def _abort(self, reason: str) -> None:
        self.stage = ServerStage.ABORTED
        self.abort_reason = reason
        self._acc = None
        self._answers = {}
        self._revealed = {}
        LOGGER.error("%s", reason)

    def _need(self, count: int, what: str, threshold: int | None = None) -> None:
        t = self._t if threshold is None else threshold
        if count < t:
            raise AbortRound(
                f"round {self.round_id!r} aborted: {count} {what}, below the threshold {t}"
            )

    def _msg(self, message_type: type[Message], **fields: object) -> Message:
        return message_type(**header(message_type, self.round_id, SERVER_ID), **fields)

    def _handle(self, m: Message) -> None:
        if isinstance(m, AdvertiseKeys):
            self._check_keys(m)
        elif isinstance(m, GraphReveal):
            self._check_reveal(m)
        elif isinstance(m, ShareKeys):
            self._check_shares(m)
        elif isinstance(m, MaskedInput):
            self._check_masked(m)
        elif isinstance(m, ConsistencySignature):
            self._check_signature(m)
        elif isinstance(m, UnmaskShares):
            self._check_unmask(m)

    # -- stage 0: advertise keys ------------------------------------------------------------------

    def _check_keys(self, m: AdvertiseKeys) -> None:
        c, s = m.cipher_public, m.mask_public
        if c == s:
            raise ProtocolError("uses one public key for both purposes")
        taken = {k for a in self._answers.values() for k in (a.cipher_public, a.mask_public)}  # type: ignore[attr-defined]
        if c in taken or s in taken or c in self._spent_keys or s in self._spent_keys:
            raise ProtocolError("reuses a public key (another client's or an earlier round's)")
        if not (keys.is_valid_public_key(c) and keys.is_valid_public_key(s)):
            raise ProtocolError("advertises an all-zero or small-order public key")
        payload = keys.advertisement_payload(
            self.round_id,
            m.sender,
            self._config_digest,
            self.layout.digest,
            c,
            s,
            m.nonce_commitment,
        )
        if not keys.verify(self._registry[m.sender], m.signature, payload):
            raise ProtocolError("the key signature does not verify under the registered identity")

    def _close_keys(self) -> dict[str, Message]:
        answers: dict[str, AdvertiseKeys] = self._answers  # type: ignore[assignment]
        u1 = tuple(sorted(answers))
        self._need(len(u1), "clients advertised keys")
        self._keys = {
            u: (a.cipher_public, a.mask_public, a.nonce_commitment, a.signature)
            for u, a in answers.items()
        }
        self._u1 = u1
        self._points = {u: i + 1 for i, u in enumerate(u1)}
        degree = graph.neighbour_count(len(u1), self.config.degree)
        self._need(degree + 1, "parties in every neighbourhood", self._t_share)
        self._session_id = kdf.session_id(
            version=messages.PROTOCOL_VERSION,
            round_id=self.round_id,
            config_digest=self._config_digest,
            layout_digest=self.layout.digest,
            keys={u: k[:2] for u, k in self._keys.items()},
        )
        self._directory_payload = keys.directory_payload(
            self._session_id, {u: k[2] for u, k in self._keys.items()}
        )
        directory = self._msg(KeyDirectory, keys=dict(self._keys))
        self._transition(ServerStage.COLLECT_REVEALS)
        self._open(u1)
        LOGGER.info("round %s: U1 has %d clients", self.round_id, len(u1))
        return {u: directory for u in u1}

    # -- stage 1: graph seed ---------------------------------------------------------------------

    def _check_reveal(self, m: GraphReveal) -> None:
        committed = self._keys[m.sender][2]
        if not matches(committed, graph.nonce_commitment(self.round_id, m.sender, m.nonce)):
            raise ProtocolError("its graph nonce does not match the commitment it advertised")
        if not keys.verify(self._registry[m.sender], m.signature, self._directory_payload):
            raise ProtocolError("the directory signature does not verify on the key directory")

    def _close_reveals(self) -> dict[str, Message]:
        answers: dict[str, GraphReveal] = self._answers  # type: ignore[assignment]
        missing = sorted(set(self._u1) - set(answers))
        if missing:
            # Honest clients abort without every nonce (else the server could re-roll the graph
            # by dropping one), so continuing would only waste their work.
            raise AbortRound(
                f"round {self.round_id!r} aborted: {len(missing)} members of U1 gave no valid "
                f"graph nonce ({missing[:5]}); the graph seed needs every member's, so a retry "
                "needs a fresh round id"
            )
        seed = graph.graph_seed(self.round_id, {u: a.nonce for u, a in answers.items()})
        self._nbrs = graph.neighbourhoods(self._u1, self.config.degree, seed)
        reveals = self._msg(
            RevealDirectory, reveals={u: (a.nonce, a.signature) for u, a in answers.items()}
        )
        self._transition(ServerStage.COLLECT_SHARES)
        self._open(self._u1)
        LOGGER.info("round %s: the graph seed is fixed by %d nonces", self.round_id, len(answers))
        return {u: reveals for u in self._u1}

    # -- stage 2: share keys ---------------------------------------------------------------------

    def _check_shares(self, m: ShareKeys) -> None:
        sender = m.sender
        nbrs = self._nbrs[sender]
        if set(m.envelopes) != nbrs:
            missing = sorted(nbrs - set(m.envelopes))[:5]
            extra = sorted(set(m.envelopes) - nbrs)[:5]
            raise ProtocolError(
                f"envelopes must go to its neighbours: missing {missing}, extra {extra}"
            )
        if set(m.share_commitments) != nbrs | {sender}:
            raise ProtocolError("share commitments must cover its neighbours and itself")
        for receiver, env in m.envelopes.items():
            plain = envelope.bundle_length(sender, receiver, shamir.SHARE_BYTES)
            if len(env) != envelope.envelope_length(sender, receiver, plain):
                raise ProtocolError(f"the envelope for {receiver!r} has the wrong length")
            head, _ = envelope.parse_header(env)
            expected = (messages.PROTOCOL_VERSION, int(Stage.SHARE_KEYS), self._session_id)
            if (head.version, head.stage, head.session_id) != expected or (
                head.sender,
                head.receiver,
            ) != (sender, receiver):
                raise ProtocolError(
                    f"the envelope header for {receiver!r} is for another session or pair"
                )

    def _close_shares(self) -> dict[str, Message]:
        answers: dict[str, ShareKeys] = self._answers  # type: ignore[assignment]
        u2 = tuple(sorted(answers))
        self._need(len(u2), "clients shared their keys")
        self._u2 = u2
        self._share_commitments = {u: dict(a.share_commitments) for u, a in answers.items()}
        self._secret_commitments = {u: a.secret_commitment for u, a in answers.items()}
        out: dict[str, Message] = {}
        for v in u2:
            inbox = {u: answers[u].envelopes[v] for u in u2 if v in self._nbrs[u]}
            self._delivered[v] = frozenset(inbox)
            out[v] = self._msg(MaskedInputRequest, envelopes=inbox)
        self._transition(ServerStage.COLLECT_MASKED)
        self._open(u2)
        LOGGER.info("round %s: U2 has %d clients", self.round_id, len(u2))
        return out

    # -- stage 3: masked input --------------------------------------------------------------------

    def _check_masked(self, m: MaskedInput) -> None:
        size = self.layout.size
        if m.dtype != messages.MASKED_DTYPE:
            raise ProtocolError(
                f"masked input dtype {m.dtype!r:.20}, expected {messages.MASKED_DTYPE!r}"
            )
        if m.length != size or len(m.payload) != 4 * size:
            raise ProtocolError(
                f"masked input has length {m.length} and {len(m.payload)} bytes, expected {size} "
                f"and {4 * size}"
            )
        if len(set(m.rejected)) != len(m.rejected):
            raise ProtocolError("the refused-senders list repeats a client")
        strangers = sorted(set(m.rejected) - self._delivered[m.sender])
        if strangers:
            raise ProtocolError(f"refuses shares it was never sent, from {strangers[:5]}")

    def _close_masked(self) -> dict[str, Message]:
        answers: dict[str, MaskedInput] = self._answers  # type: ignore[assignment]
        accused: dict[str, list[str]] = {}
        for v, a in answers.items():
            for u in a.rejected:
                accused.setdefault(u, []).append(v)
        for u, accusers in sorted(accused.items()):
            LOGGER.warning(
                "round %s: client %s is excluded: its shares failed authentication at %s",
                self.round_id,
                u,
                ", ".join(sorted(accusers)),
            )
            if u in answers:
                self.rejections.append(
                    ClientRejected(
                        self.round_id,
                        u,
                        Stage.SHARE_KEYS.name,
                        f"its share envelopes failed authentication at {sorted(accusers)[:5]}",
                    )
                )
        u3 = tuple(sorted(set(answers) - set(accused)))
        self._need(len(u3), "masked inputs from clients in good standing")
        self._views = {v: self._delivered[v] - set(answers[v].rejected) for v in u3}
        acc = np.zeros(self.layout.size, dtype=np.uint32)
        for u in u3:
            np.add(acc, np.frombuffer(answers[u].payload, dtype="<u4"), out=acc)
        self._acc = acc
        self._u3 = u3
        self._answers = {}
        if self.config.hardened:
            request = self._msg(ConsistencyRequest, survivors=u3)
            self._transition(ServerStage.COLLECT_SIGNATURES)
            self._open(u3)
            out: dict[str, Message] = {u: request for u in u3}
        else:
            self._transition(ServerStage.COLLECT_UNMASK)
            out = self._unmask_requests(u3, {})
        LOGGER.info("round %s: U3 has %d clients", self.round_id, len(u3))
        return out

    # -- stage 4: consistency ---------------------------------------------------------------------

    def _check_signature(self, m: ConsistencySignature) -> None:
        payload = keys.consistency_payload(self._session_id, self._u3)
        if not keys.verify(self._registry[m.sender], m.signature, payload):
            raise ProtocolError("the consistency signature does not verify on the survivor list")

    def _close_signatures(self) -> dict[str, Message]:
        answers: dict[str, ConsistencySignature] = self._answers  # type: ignore[assignment]
        u4 = tuple(sorted(answers))
        self._need(len(u4), "consistency signatures")
        signatures = {u: answers[u].signature for u in u4}
        self._transition(ServerStage.COLLECT_UNMASK)
        LOGGER.info("round %s: U4 has %d clients", self.round_id, len(u4))
        return self._unmask_requests(u4, signatures)

    def _unmask_requests(
        self, asked: tuple[str, ...], signatures: dict[str, bytes]
    ) -> dict[str, Message]:
        survivors = set(self._u3)
        out: dict[str, Message] = {}
        self._lists = {}
        for v in asked:
            view = self._views[v]
            alive = frozenset((view | {v}) & survivors)
            dead = frozenset(view - survivors)
            self._lists[v] = (alive, dead)
            out[v] = self._msg(
                UnmaskRequest,
                survivors=self._u3,
                alive=tuple(sorted(alive)),
                dead=tuple(sorted(dead)),
                signatures=dict(signatures),
            )
        self._open(asked)
        return out

    # -- stage 5: unmask ------------------------------------------------------------------------

    def _check_unmask(self, m: UnmaskShares) -> None:
        holder = m.sender
        alive, dead = self._lists[holder]
        if set(m.self_mask_shares) != alive or set(m.key_shares) != dead:
            raise ProtocolError("must reveal exactly one share per neighbour, as listed")
        revealed = _Revealed()
        for kind, given, into in (
            (KIND_SEED, m.self_mask_shares, revealed.seeds),
            (KIND_KEY, m.key_shares, revealed.keys),
        ):
            for owner, data in given.items():
                context = shamir.share_context(self._session_id, owner, kind)
                share = shamir.decode_share(data, context)
                if share.x != self._points[holder]:
                    raise ProtocolError(f"revealed a share of {owner!r} for another point")
                committed = self._share_commitments[owner][holder][0 if kind == KIND_SEED else 1]
                actual = share_commitment(self._session_id, owner, holder, kind, data)
                if not matches(committed, actual):
                    raise ProtocolError(f"revealed a share of {owner!r} that fails its commitment")
                into[owner] = share
        self._revealed[holder] = revealed

    def _close_unmask(self) -> dict[str, Message]:
        answers = self._answers
        u5 = sorted(answers)
        self._need(len(u5), "clients revealed their shares")
        started = time.perf_counter()
        seeds: dict[str, bytes] = {}
        for u in self._u3:
            shares = [self._revealed[h].seeds[u] for h in u5 if u in self._revealed[h].seeds]
            self._need(len(shares), f"shares of the self-mask seed of {u!r}", self._t_share)
            seed = shamir.reconstruct(shares, self._t_share)
            if not matches(
                self._secret_commitments[u], secret_commitment(self._session_id, u, seed)
            ):
                raise IntegrityError(f"the rebuilt self-mask seed of {u!r} fails its commitment")
            seeds[u] = seed
        partners: dict[str, list[str]] = {}
        for v in self._u3:
            for d in self._views[v] - set(self._u3):
                partners.setdefault(d, []).append(v)
        dead_keys: dict[str, bytes] = {}
        for d in sorted(partners):
            shares = [self._revealed[h].keys[d] for h in u5 if d in self._revealed[h].keys]
            self._need(
                len(shares), f"shares of the mask key of dropped client {d!r}", self._t_share
            )
            secret = shamir.reconstruct(shares, self._t_share)
            if keys.mask_public_from_private(secret) != self._keys[d][1]:
                raise IntegrityError(f"the rebuilt mask key of {d!r} fails its public-key check")
            dead_keys[d] = secret
        self._time("unmask: rebuild secrets", started)
        acc = self._acc
        if acc is None:  # pragma: no cover - guarded by the stage
            raise ProtocolError("no masked sum")
        started = time.perf_counter()
        streams = masking.server_streams(
            self._session_id, seeds, dead_keys, partners, {u: k[1] for u, k in self._keys.items()}
        )
        self._time("unmask: derive stream keys", started)
        self.unmask_streams = len(streams)
        started = time.perf_counter()
        masking.apply(acc, streams, algorithm=self.config.keystream, workers=self._workers)
        self._time("unmask: regenerate keystreams", started)
        started = time.perf_counter()
        n = len(self._u3)
        bad = self.layout.out_of_range_groups(acc, n)
        if bad:
            raise AbortRound(
                f"round {self.round_id!r} aborted: the decoded sum of groups {bad} is beyond what "
                f"{n} clients can produce (a faulty client or a failed unmasking)"
            )
        decoded = self.layout.decode(acc)
        self._time("unmask: check and decode", started)
        self.result = AggregateResult(
            round_id=self.round_id,
            tensors=decoded.tensors,
            extras=decoded.extras,
            weight=decoded.weight,
            count=decoded.count,
            survivors=self._u3,
            dropped=dict(self.dropped),
            rejected=tuple((r.client_id, r.stage, r.reason) for r in self.rejections),
            ring_sum=acc,
        )
        self._acc = None
        self._revealed = {}
        self._transition(ServerStage.FINISHED)
        LOGGER.info(
            "round %s: finished; %d inputs summed, %d streams removed",
            self.round_id,
            n,
            len(streams),
        )
        return {}
