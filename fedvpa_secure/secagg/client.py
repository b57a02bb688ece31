"""The client side of one round, as an explicit state machine.

A :class:`ClientSession` moves through :class:`ClientStage` along :data:`CLIENT_TRANSITIONS` only.
:meth:`ClientSession.handle` is a function of (session state, inbound server message) to (new
state, reply): it first checks the message is the one legal type for the current stage and
validates it structurally (:func:`messages.validate`), then runs the stage's checks, and only then
any cryptography. Any failure moves the session to ``ABORTED`` for good, drops its secrets and
raises :class:`~fedvpa_secure.errors.AbortRound`: a client never continues after a server message
it cannot account for, and never answers a stage twice.

The client-side abort checks are those of the hardened protocol (Bonawitz et al. 2017, Sec. 6 and
Fig. 4; Google's federated-compute SecAgg client), on by default:

* graph seed: every advertised key and graph-nonce commitment is signed for this round by a
  registered identity (no substituted or replayed keys), all keys are distinct, the client's own
  keys and commitment are unchanged, U1 has at least t members and a neighbourhood of the configured
  degree reaches t-1; only then does it sign the directory and reveal its nonce;
* round 1: *every* member of U1 revealed a nonce matching its commitment and signed the same
  directory (else the server could drop or swap a nonce and re-roll the graph); only then does it
  derive the seed and recompute its neighbourhood, whose keys must be valid;
* round 2: envelopes come only from its neighbours and are for this session (else abort); an
  envelope that fails authentication is refused and its sender reported, not used;
* round 3: the survivor list is canonical, contains the client and >= t members, and lists no
  neighbour whose shares it refused; it is signed;
* round 4: >= t valid signatures on exactly the list it signed; the alive and dead lists are
  disjoint, free of duplicates, do not name it dead, stay inside its U2 view, and agree with the
  signed list. Then it reveals exactly one share per neighbour.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from collections.abc import Set as AbstractSet

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedvpa_secure.errors import AbortRound, IntegrityError, ProtocolError
from fedvpa_secure.secagg import envelope, graph, kdf, keys, masking, messages, shamir
from fedvpa_secure.secagg.commitments import secret_commitment, share_commitment
from fedvpa_secure.secagg.config import SecAggConfig
from fedvpa_secure.secagg.errors import InvalidUpdateError
from fedvpa_secure.secagg.layout import Layout
from fedvpa_secure.secagg.log import LOGGER
from fedvpa_secure.secagg.messages import (
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
from fedvpa_secure.secagg.rng import RandomBytes, resolve_rng

KIND_SEED = "b"
KIND_KEY = "sk"


class ClientStage(enum.Enum):
    """Where a client is in the round (which stage it has answered last)."""

    READY = "ready"
    ADVERTISED = "advertised"
    REVEALED = "revealed"
    SHARED = "shared"
    MASKED = "masked"
    SIGNED = "signed"
    DONE = "done"
    ABORTED = "aborted"


CLIENT_TRANSITIONS: Mapping[ClientStage, frozenset[ClientStage]] = {
    ClientStage.READY: frozenset({ClientStage.ADVERTISED, ClientStage.ABORTED}),
    ClientStage.ADVERTISED: frozenset({ClientStage.REVEALED, ClientStage.ABORTED}),
    ClientStage.REVEALED: frozenset({ClientStage.SHARED, ClientStage.ABORTED}),
    ClientStage.SHARED: frozenset({ClientStage.MASKED, ClientStage.ABORTED}),
    ClientStage.MASKED: frozenset({ClientStage.SIGNED, ClientStage.DONE, ClientStage.ABORTED}),
    ClientStage.SIGNED: frozenset({ClientStage.DONE, ClientStage.ABORTED}),
    ClientStage.DONE: frozenset({ClientStage.ABORTED}),
    ClientStage.ABORTED: frozenset(),
}
"""Legal transitions. DONE -> ABORTED happens when the server asks again after the last stage."""


class ClientSession:
    """One client's state for one round.

    Args:
        client_id: this client's id (the id in its mTLS certificate later).
        identity: the client's long-term Ed25519 key (registered out of band).
        registry: every registered client id -> its raw 32-byte Ed25519 public key.
        config: the round configuration (its hash must match the server's).
        layout: the update layout (its hash must match the server's).
        round_id: the round id; a retry is a new round id with fresh keys.
        model_version: the model version this update was computed from.
        spent_versions: versions this client already contributed to; contributing again would let
            two sums over different subsets reveal a difference, so it is refused.
        rng: test seam: an injected byte source, refused unless ``insecure_rng`` is True.
        insecure_rng: opens the test seam.
        workers: threads for masking (``None``: all usable CPUs, at most 8).
    """

    def __init__(
        self,
        client_id: str,
        identity: Ed25519PrivateKey,
        registry: Mapping[str, bytes],
        config: SecAggConfig,
        layout: Layout,
        round_id: str,
        *,
        model_version: str = "",
        spent_versions: AbstractSet[str] = frozenset(),
        rng: RandomBytes | None = None,
        insecure_rng: bool = False,
        workers: int | None = None,
    ) -> None:
        if not messages.is_valid_id(client_id):
            raise ProtocolError(f"invalid client id {client_id!r}")
        if not messages.is_valid_id(round_id):
            raise ProtocolError(f"invalid round id {round_id!r}")
        if not isinstance(identity, Ed25519PrivateKey):
            raise ProtocolError("identity must be an Ed25519 private key")
        if registry.get(client_id) != keys.identity_public_bytes(identity):
            raise ProtocolError(f"client {client_id!r} is not registered with this identity key")
        if model_version in spent_versions:
            raise ProtocolError(
                f"client {client_id!r} already contributed to model version {model_version!r}; "
                "refusing to contribute twice"
            )
        self.client_id = client_id
        self.round_id = round_id
        self.config = config
        self.layout = layout
        self.model_version = model_version
        self._spent = frozenset(spent_versions)
        self._identity = identity
        self._registry = dict(registry)
        self._rng = resolve_rng(rng, insecure_rng=insecure_rng)
        self._workers = workers
        self._config_digest = config.digest()
        self._limits = messages.MessageLimits.for_round(
            config.n_clients, config.degree, layout.size, config.max_message_factor
        )
        self.stage = ClientStage.READY
        self.abort_reason: str | None = None
        self.contributed_version: str | None = None
        self._input: np.ndarray | None = None
        self._keys: keys.RoundKeys | None = None
        self._nonce: bytes | None = None
        self._commitment = b""
        self._directory: dict[str, tuple[bytes, bytes, bytes, bytes]] = {}
        self._directory_payload = b""
        self._session_id = b""
        self._neighbours: frozenset[str] = frozenset()
        self._points: dict[str, int] = {}
        self._seed: bytes | None = None
        self._own_shares: tuple[bytes, bytes] | None = None
        self._held: dict[str, tuple[bytes, bytes]] = {}
        self._view: frozenset[str] = frozenset()
        self._signed: tuple[str, ...] | None = None

    def __repr__(self) -> str:
        return (
            f"ClientSession({self.client_id!r}, round={self.round_id!r}, stage={self.stage.name})"
        )

    # -- public API ------------------------------------------------------------------------------

    @property
    def session_id(self) -> bytes:
        """The session id (empty before the key directory arrives)."""
        return self._session_id

    @property
    def neighbours(self) -> frozenset[str]:
        """This client's neighbourhood, as it recomputed it (empty before round 1)."""
        return self._neighbours

    @property
    def view(self) -> frozenset[str]:
        """The neighbours whose shares this client accepted (its U2 view; empty before round 2)."""
        return self._view

    def provide_input(
        self,
        tensors: Mapping[str, np.ndarray],
        *,
        extras: Mapping[str, np.ndarray] | None = None,
        weight: float = 1.0,
    ) -> None:
        """Quantise this client's update; must be called once, before round 2.

        Raises:
            InvalidUpdateError: the update does not match the layout or is not finite.
            ProtocolError: called twice, or after round 2.
        """
        if self._input is not None or self.stage in (
            ClientStage.MASKED,
            ClientStage.SIGNED,
            ClientStage.DONE,
            ClientStage.ABORTED,
        ):
            raise ProtocolError(f"client {self.client_id!r}: input already provided or too late")
        self._input = self.layout.quantize(tensors, self._rng, extras=extras, weight=weight)

    def handle(self, message: object) -> Message:
        """Process one server message and return the reply.

        Raises:
            AbortRound: the message is illegal here, malformed, or fails a check; the session is
                then ``ABORTED`` and holds no secrets.
        """
        expected = self._expected()
        try:
            if expected is None:
                raise AbortRound(
                    f"client {self.client_id!r} already {self.stage.value}: refusing a further "
                    f"{type(message).__name__} (a server must never ask twice)"
                )
            messages.validate(
                message, expected=expected, round_id=self.round_id, limits=self._limits
            )
            return self._dispatch(message)  # type: ignore[arg-type]
        except AbortRound as exc:
            self._abort(str(exc))
            raise
        except (ProtocolError, IntegrityError, InvalidUpdateError, ValueError) as exc:
            reason = f"client {self.client_id!r} aborts at {self.stage.value}: {exc}"
            self._abort(reason)
            raise AbortRound(reason) from exc

    # -- machinery ----------------------------------------------------------------------------

    def _expected(self) -> type[Message] | None:
        return {
            ClientStage.READY: AdvertiseRequest,
            ClientStage.ADVERTISED: KeyDirectory,
            ClientStage.REVEALED: RevealDirectory,
            ClientStage.SHARED: MaskedInputRequest,
            ClientStage.MASKED: ConsistencyRequest if self.config.hardened else UnmaskRequest,
            ClientStage.SIGNED: UnmaskRequest,
        }.get(self.stage)

    def _dispatch(self, message: Message) -> Message:
        if isinstance(message, AdvertiseRequest):
            return self._on_advertise(message)
        if isinstance(message, KeyDirectory):
            return self._on_directory(message)
        if isinstance(message, RevealDirectory):
            return self._on_reveals(message)
        if isinstance(message, MaskedInputRequest):
            return self._on_masked_input(message)
        if isinstance(message, ConsistencyRequest):
            return self._on_consistency(message)
        if isinstance(message, UnmaskRequest):
            return self._on_unmask(message)
        raise ProtocolError(f"unexpected message {type(message).__name__}")  # pragma: no cover

    def _transition(self, target: ClientStage) -> None:
        if target not in CLIENT_TRANSITIONS[self.stage]:
            raise ProtocolError(f"illegal client transition {self.stage.name} -> {target.name}")
        self.stage = target

    def _wipe(self) -> None:
        self._input = None
        self._keys = None
        self._nonce = None
        self._seed = None
        self._own_shares = None
        self._held = {}

    def _abort(self, reason: str) -> None:
        if self.stage is not ClientStage.ABORTED:
            self.stage = ClientStage.ABORTED
            self.abort_reason = reason
            LOGGER.warning("%s", reason)
        self._wipe()

    def _fail(self, reason: str) -> AbortRound:
        return AbortRound(f"client {self.client_id!r} aborts at {self.stage.value}: {reason}")

    def _reply(self, message_type: type[Message], **fields: object) -> Message:
        return message_type(**header(message_type, self.round_id, self.client_id), **fields)

    def _x(self, client_id: str) -> int:
        return self._points[client_id]

    # -- round 0 ---------------------------------------------------------------------------------

    def _on_advertise(self, m: AdvertiseRequest) -> Message:
        if m.config_digest != self._config_digest or m.layout_digest != self.layout.digest:
            raise self._fail("the server's config or layout hash differs from mine")
        self._keys = keys.generate_round_keys(self._rng)
        self._nonce = self._rng(graph.NONCE_BYTES)
        self._commitment = graph.nonce_commitment(self.round_id, self.client_id, self._nonce)
        payload = keys.advertisement_payload(
            self.round_id,
            self.client_id,
            self._config_digest,
            self.layout.digest,
            self._keys.cipher_public,
            self._keys.mask_public,
            self._commitment,
        )
        reply = self._reply(
            AdvertiseKeys,
            cipher_public=self._keys.cipher_public,
            mask_public=self._keys.mask_public,
            nonce_commitment=self._commitment,
            signature=keys.sign(self._identity, payload),
        )
        self._transition(ClientStage.ADVERTISED)
        return reply

    # -- graph seed ------------------------------------------------------------------------------

    def _on_directory(self, m: KeyDirectory) -> Message:
        own_keys, nonce = self._keys, self._nonce
        if own_keys is None or nonce is None:  # pragma: no cover - guarded by the stage
            raise ProtocolError("no round keys")
        members = sorted(m.keys)
        t = self.config.threshold
        if len(members) > self.config.n_clients:
            raise self._fail(
                f"the key list has {len(members)} clients, the round has at most "
                f"{self.config.n_clients}"
            )
        if self.client_id not in m.keys:
            raise self._fail("the key list leaves me out")
        cpk, mpk, commitment, _ = m.keys[self.client_id]
        if (cpk, mpk) != (own_keys.cipher_public, own_keys.mask_public):
            raise self._fail("the key list substitutes my own keys")
        if commitment != self._commitment:
            raise self._fail("the key list substitutes my own graph-nonce commitment")
        unknown = [u for u in members if u not in self._registry]
        if unknown:
            raise self._fail(f"the key list names unregistered clients {unknown[:5]}")
        if len(members) < t:  # type: ignore[operator]
            raise self._fail(f"only {len(members)} clients advertised keys, threshold is {t}")
        all_keys = [k for u in members for k in m.keys[u][:2]]
        if len(set(all_keys)) != len(all_keys):
            raise self._fail("the key list repeats a public key")
        t_share = self.config.share_threshold()
        degree = graph.neighbour_count(len(members), self.config.degree)
        if degree < t_share - 1:
            raise self._fail(f"{degree} neighbours cannot reach threshold {t_share}")
        # cryptography from here on
        digest, layout_digest = self._config_digest, self.layout.digest
        for u in members:
            c, s, commit, sig = m.keys[u]
            payload = keys.advertisement_payload(
                self.round_id, u, digest, layout_digest, c, s, commit
            )
            if not keys.verify(self._registry[u], sig, payload):
                raise self._fail(
                    f"the keys of client {u!r} are not signed by it for this round "
                    "(substituted or replayed keys or graph-nonce commitment)"
                )
        self._directory = dict(m.keys)
        self._points = {u: i + 1 for i, u in enumerate(members)}
        self._session_id = kdf.session_id(
            version=messages.PROTOCOL_VERSION,
            round_id=self.round_id,
            config_digest=digest,
            layout_digest=layout_digest,
            keys={u: (m.keys[u][0], m.keys[u][1]) for u in members},
        )
        self._directory_payload = keys.directory_payload(
            self._session_id, {u: m.keys[u][2] for u in members}
        )
        reply = self._reply(
            GraphReveal,
            nonce=nonce,
            signature=keys.sign(self._identity, self._directory_payload),
        )
        self._transition(ClientStage.REVEALED)
        return reply

    # -- round 1 ---------------------------------------------------------------------------------

    def _agree_on_graph(self, m: RevealDirectory) -> frozenset[str]:
        """Check every member's reveal and signature, then recompute this client's neighbours.

        Every member, not a threshold of them: a server allowed to leave one reveal out could
        choose, after seeing the nonces, among the seeds of every U1 it may still claim.
        """
        members = sorted(self._directory)
        missing = sorted(set(members) - set(m.reveals))
        if missing:
            raise self._fail(
                f"the server withholds the graph nonces of {missing[:5]}; every member of U1 "
                "must reveal before the graph is fixed"
            )
        strangers = sorted(set(m.reveals) - set(members))
        if strangers:
            raise self._fail(f"graph nonces from clients outside U1 {strangers[:5]}")
        if m.reveals[self.client_id][0] != self._nonce:
            raise self._fail("the reveal list substitutes my own graph nonce")
        # cryptography from here on
        for u in members:
            nonce, signature = m.reveals[u]
            if graph.nonce_commitment(self.round_id, u, nonce) != self._directory[u][2]:
                raise self._fail(f"the graph nonce of {u!r} does not match its commitment")
            if not keys.verify(self._registry[u], signature, self._directory_payload):
                raise self._fail(
                    f"client {u!r} did not sign the key directory I signed (the server shows "
                    "clients different U1s or commitments)"
                )
        seed = graph.graph_seed(self.round_id, {u: m.reveals[u][0] for u in members})
        neighbours = graph.neighbours_of(self.client_id, members, self.config.degree, seed)
        for u in sorted(neighbours):
            c, s = self._directory[u][:2]
            if not (keys.is_valid_public_key(c) and keys.is_valid_public_key(s)):
                raise self._fail(f"client {u!r} advertised an all-zero or small-order key")
        return neighbours

    def _on_reveals(self, m: RevealDirectory) -> Message:
        own_keys = self._keys
        if own_keys is None:  # pragma: no cover - guarded by the stage
            raise ProtocolError("no round keys")
        neighbours = self._agree_on_graph(m)
        self._neighbours = neighbours
        self._nonce = None
        session = self._session_id
        t_share = self.config.share_threshold()
        holders = sorted(neighbours | {self.client_id})
        points = [self._x(h) for h in holders]
        seed = self._rng(shamir.SECRET_BYTES)
        seed_shares = shamir.split(seed, points, t_share, self._rng)
        key_shares = shamir.split(
            keys.private_bytes(own_keys.mask_private), points, t_share, self._rng
        )
        ctx_seed = shamir.share_context(session, self.client_id, KIND_SEED)
        ctx_key = shamir.share_context(session, self.client_id, KIND_KEY)
        envelopes: dict[str, bytes] = {}
        commitments: dict[str, tuple[bytes, bytes]] = {}
        for holder, b_sh, k_sh in zip(holders, seed_shares, key_shares, strict=True):
            b_bytes = shamir.encode_share(b_sh, ctx_seed)
            k_bytes = shamir.encode_share(k_sh, ctx_key)
            commitments[holder] = (
                share_commitment(session, self.client_id, holder, KIND_SEED, b_bytes),
                share_commitment(session, self.client_id, holder, KIND_KEY, k_bytes),
            )
            if holder == self.client_id:
                self._own_shares = (b_bytes, k_bytes)
                continue
            secret = keys.agree(own_keys.cipher_private, self._directory[holder][0])
            key = kdf.share_key(secret, session, self.client_id, holder)
            head = envelope.EnvelopeHeader(
                messages.PROTOCOL_VERSION, int(Stage.SHARE_KEYS), session, self.client_id, holder
            )
            plain = envelope.encode_bundle(self.client_id, holder, b_bytes, k_bytes)
            envelopes[holder] = envelope.seal(key, head, plain, self._rng)
        self._seed = seed
        reply = self._reply(
            ShareKeys,
            envelopes=envelopes,
            share_commitments=commitments,
            secret_commitment=secret_commitment(session, self.client_id, seed),
        )
        self._transition(ClientStage.SHARED)
        return reply

    # -- round 2 ---------------------------------------------------------------------------------

    def _on_masked_input(self, m: MaskedInputRequest) -> Message:
        own_keys = self._keys
        if own_keys is None or self._seed is None:  # pragma: no cover - guarded by the stage
            raise ProtocolError("no round secrets")
        strangers = sorted(set(m.envelopes) - self._neighbours)
        if strangers:
            raise self._fail(f"the server forwards envelopes from non-neighbours {strangers[:5]}")
        if self.model_version in self._spent:
            raise self._fail(f"already contributed to model version {self.model_version!r}")
        if self._input is None:
            raise self._fail("no input was provided before the masked-input stage")
        headers = {}
        for sender, env in m.envelopes.items():
            try:
                head, _ = envelope.parse_header(env)
            except ProtocolError as exc:
                raise self._fail(f"the envelope from {sender!r} is malformed") from exc
            if head.session_id != self._session_id:
                raise self._fail(f"the envelope from {sender!r} belongs to another session")
            if (head.sender, head.receiver, head.stage, head.version) != (
                sender,
                self.client_id,
                int(Stage.SHARE_KEYS),
                messages.PROTOCOL_VERSION,
            ):
                raise self._fail(f"the envelope from {sender!r} is addressed to another pair")
            headers[sender] = head
        # cryptography from here on
        session = self._session_id
        accepted: dict[str, tuple[bytes, bytes]] = {}
        refused: list[str] = []
        for sender in sorted(m.envelopes):
            try:
                secret = keys.agree(own_keys.cipher_private, self._directory[sender][0])
                key = kdf.share_key(secret, session, sender, self.client_id)
                _, plain = envelope.open_envelope(key, m.envelopes[sender])
                p_sender, p_receiver, b_bytes, k_bytes = envelope.decode_bundle(plain)
                if (p_sender, p_receiver) != (sender, self.client_id):
                    raise IntegrityError("ids inside the envelope differ")
                for data, kind in ((b_bytes, KIND_SEED), (k_bytes, KIND_KEY)):
                    share = shamir.decode_share(data, shamir.share_context(session, sender, kind))
                    if share.x != self._x(self.client_id):
                        raise IntegrityError("share is for another point")
            except (IntegrityError, ProtocolError):
                refused.append(sender)
                LOGGER.warning(
                    "round %s: client %s refuses the shares of %s (authentication failed)",
                    self.round_id,
                    self.client_id,
                    sender,
                )
                continue
            accepted[sender] = (b_bytes, k_bytes)
        t_share = self.config.share_threshold()
        if len(accepted) + 1 < t_share:
            raise self._fail(
                f"shares from {len(accepted)} neighbours cannot reach threshold {t_share}"
            )
        self._held = accepted
        self._view = frozenset(accepted)
        streams = masking.client_streams(
            self.client_id,
            self._seed,
            session,
            own_keys.mask_private,
            {v: self._directory[v][1] for v in accepted},
        )
        vector = self._input
        self._input = None
        masking.apply(vector, streams, algorithm=self.config.keystream, workers=self._workers)
        reply = self._reply(
            MaskedInput,
            length=int(vector.size),
            dtype=messages.MASKED_DTYPE,
            payload=vector.astype("<u4", copy=False).tobytes(),
            rejected=tuple(sorted(refused)),
        )
        self._seed = None  # its shares are dealt; the client itself never needs b again
        self.contributed_version = self.model_version
        self._transition(ClientStage.MASKED)
        return reply

    # -- round 3 ---------------------------------------------------------------------------------

    def _check_survivors(self, survivors: tuple[str, ...]) -> None:
        if list(survivors) != sorted(set(survivors)):
            raise self._fail("the survivor list is not sorted or repeats a client")
        if self.client_id not in survivors:
            raise self._fail("the survivor list leaves me out")
        outsiders = [u for u in survivors if u not in self._points]
        if outsiders:
            raise self._fail(f"the survivor list names clients outside U1 {outsiders[:5]}")
        t = self.config.threshold
        if len(survivors) < t:  # type: ignore[operator]
            raise self._fail(f"only {len(survivors)} survivors, threshold is {t}")
        unseen = sorted((set(survivors) & self._neighbours) - self._view)
        if unseen:
            raise self._fail(
                f"the survivor list names neighbours whose shares I refused {unseen[:5]}"
            )

    def _on_consistency(self, m: ConsistencyRequest) -> Message:
        self._check_survivors(m.survivors)
        payload = keys.consistency_payload(self._session_id, m.survivors)
        reply = self._reply(ConsistencySignature, signature=keys.sign(self._identity, payload))
        self._signed = m.survivors
        self._transition(ClientStage.SIGNED)
        return reply

    # -- round 4 ---------------------------------------------------------------------------------

    def _on_unmask(self, m: UnmaskRequest) -> Message:
        me = self.client_id
        for name, items in (("alive", m.alive), ("dead", m.dead)):
            if len(set(items)) != len(items):
                raise self._fail(f"the {name} list names a client twice")
        if me in m.dead:
            raise self._fail("the dead list names me")
        both = sorted(set(m.alive) & set(m.dead))
        if both:
            raise self._fail(f"clients {both[:5]} are listed both dead and alive")
        if me not in m.alive:
            raise self._fail("the alive list leaves me out")
        outside = sorted((set(m.alive) | set(m.dead)) - self._view - {me})
        if outside:
            raise self._fail(f"the lists name clients outside my U2 view {outside[:5]}")
        if self.config.hardened:
            if m.survivors != self._signed:
                raise self._fail("the survivor list differs from the one I signed")
        else:
            self._check_survivors(m.survivors)
        survivors = set(m.survivors)
        expected_alive = (self._view | {me}) & survivors
        expected_dead = self._view - survivors
        if set(m.alive) != expected_alive or set(m.dead) != expected_dead:
            raise self._fail("the alive/dead lists disagree with the survivor list")
        t = self.config.threshold
        if len(m.survivors) < t:  # type: ignore[operator]
            raise self._fail(f"only {len(m.survivors)} survivors, threshold is {t}")
        if self.config.hardened:
            strangers = sorted(set(m.signatures) - survivors)
            if strangers:
                raise self._fail(
                    f"signatures from clients outside the survivor list {strangers[:5]}"
                )
            if len(m.signatures) < t:  # type: ignore[operator]
                raise self._fail(f"only {len(m.signatures)} consistency signatures, need {t}")
            payload = keys.consistency_payload(self._session_id, m.survivors)
            for signer in sorted(m.signatures):
                if not keys.verify(self._registry[signer], m.signatures[signer], payload):
                    raise self._fail(
                        f"the consistency signature of {signer!r} is not on my survivor list "
                        "(the server shows clients different lists)"
                    )
        own = self._own_shares
        if own is None:  # pragma: no cover - guarded by the stage
            raise ProtocolError("no own shares")
        seed_shares = {v: (own[0] if v == me else self._held[v][0]) for v in m.alive}
        key_shares = {v: self._held[v][1] for v in m.dead}
        reply = self._reply(UnmaskShares, self_mask_shares=seed_shares, key_shares=key_shares)
        self._transition(ClientStage.DONE)
        self._wipe()
        return reply
