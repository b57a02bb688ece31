"""Shared helpers for the secure-aggregation protocol tests (not a test module).

numpy's generator appears here only to make *test data*; the library never uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np

from fedvpa_secure.secagg import Hooks, InProcessRound, SecAggConfig, Stage, graph, kdf, keys
from fedvpa_secure.secagg.messages import (
    PROTOCOL_VERSION,
    SERVER_ID,
    AdvertiseKeys,
    GraphReveal,
    KeyDirectory,
    Message,
    RevealDirectory,
    header,
)

SHAPES: dict[str, tuple[int, ...]] = {"lora.A": (4, 3), "lora.B": (3, 4), "head": (5,)}


def make_updates(
    n: int,
    *,
    seed: int = 0,
    shapes: dict[str, tuple[int, ...]] | None = None,
    low: float = -1.0,
    high: float = 1.0,
    dtype: type = np.float32,
) -> list[dict[str, np.ndarray]]:
    """``n`` random updates with the same names, shapes and dtype."""
    gen = np.random.default_rng(seed)
    shapes = SHAPES if shapes is None else shapes
    return [
        {k: gen.uniform(low, high, size=s).astype(dtype) for k, s in shapes.items()}
        for _ in range(n)
    ]


def true_sum(
    updates: Sequence[dict[str, np.ndarray]], members: Sequence[int]
) -> dict[str, np.ndarray]:
    """The float64 sum of the chosen clients' updates."""
    names = updates[0].keys()
    return {k: sum(updates[i][k].astype(np.float64) for i in members) for k in names}


def index_of(client_id: str) -> int:
    """The index of a default client id ``cNNN``."""
    return int(client_id[1:])


def run_round(
    n: int,
    *,
    config: SecAggConfig | None = None,
    hooks: Hooks | None = None,
    drop_at: dict[Stage, set[int]] | None = None,
    seed: int = 0,
    **config_kwargs: object,
) -> tuple[InProcessRound, list[dict[str, np.ndarray]]]:
    """A ready-to-run round of ``n`` clients (not yet run)."""
    cfg = config or SecAggConfig(n_clients=n, **config_kwargs)  # type: ignore[arg-type]
    updates = make_updates(n, seed=seed)
    return InProcessRound(updates, cfg, hooks=hooks, drop_at=drop_at), updates


def tamper_outbox(
    stage: Stage, targets: set[str] | None, edit: Callable[[InProcessRound, str, Message], Message]
) -> Hooks:
    """A malicious-server hook that rewrites the ``stage`` messages for ``targets`` (None: all)."""

    def hook(rnd: InProcessRound, st: Stage, outbox: dict[str, list[Message]]):
        if st is not stage:
            return outbox
        return {
            u: [edit(rnd, u, m) if targets is None or u in targets else m for m in msgs]
            for u, msgs in outbox.items()
        }

    return Hooks(server_to_clients=hook)


def tamper_reply(
    stage: Stage, culprit: str, edit: Callable[[InProcessRound, Message], Message | None]
) -> Hooks:
    """A bad-client hook: ``culprit`` rewrites its ``stage`` reply."""

    def hook(rnd: InProcessRound, st: Stage, u: str, reply: Message) -> Message | None:
        if st is stage and u == culprit:
            return edit(rnd, reply)
        return reply

    return Hooks(client_to_server=hook)


class HandPlayedServer:
    """A malicious server played by hand through the graph-seed stage, for attacks an honest
    :class:`ServerSession` would stop itself (it verifies every reveal against *its* directory).

    The clients are the round's real :class:`ClientSession` objects; only the server is scripted:
    it collects the advertisements, shows each client any key directory, and forwards any reveals.
    A colluding client is scripted too (:meth:`collude_advert`, :meth:`collude_reveal`): it signs
    whatever the server asks with its real identity key.
    """

    def __init__(self, rnd: InProcessRound) -> None:
        self.rnd = rnd
        self.requests = rnd.server.start()

    def advertise(self) -> dict[str, AdvertiseKeys]:
        """Every client's stage-0 reply."""
        return {u: self.rnd.clients[u].handle(m) for u, m in self.requests.items()}  # type: ignore[misc]

    def directory(self, adverts: Mapping[str, AdvertiseKeys]) -> KeyDirectory:
        """The key directory of ``adverts``, exactly as an honest server would build it."""
        table = {
            u: (a.cipher_public, a.mask_public, a.nonce_commitment, a.signature)
            for u, a in adverts.items()
        }
        return KeyDirectory(**header(KeyDirectory, self.rnd.round_id, SERVER_ID), keys=table)

    def reveal(self, shown: Mapping[str, KeyDirectory]) -> dict[str, GraphReveal]:
        """Show each client its directory; return the reveals (the clients must not abort)."""
        return {u: self.rnd.clients[u].handle(d) for u, d in shown.items()}  # type: ignore[misc]

    def collude_advert(
        self, advert: AdvertiseKeys, nonce: bytes, cipher_public: bytes | None = None
    ) -> AdvertiseKeys:
        """``advert`` re-signed by its sender with a commitment to ``nonce`` (and another key)."""
        rnd, cipher = self.rnd, cipher_public or advert.cipher_public
        commitment = graph.nonce_commitment(rnd.round_id, advert.sender, nonce)
        payload = keys.advertisement_payload(
            rnd.round_id,
            advert.sender,
            rnd.config.digest(),
            rnd.layout.digest,
            cipher,
            advert.mask_public,
            commitment,
        )
        signature = keys.sign(rnd.identities[advert.sender], payload)
        return replace(
            advert, cipher_public=cipher, nonce_commitment=commitment, signature=signature
        )

    def collude_reveal(self, client: str, directory: KeyDirectory, nonce: bytes) -> GraphReveal:
        """``client``'s reveal of ``nonce`` with its signature on ``directory``."""
        rnd = self.rnd
        session = kdf.session_id(
            version=PROTOCOL_VERSION,
            round_id=rnd.round_id,
            config_digest=rnd.config.digest(),
            layout_digest=rnd.layout.digest,
            keys={u: k[:2] for u, k in directory.keys.items()},
        )
        payload = keys.directory_payload(session, {u: k[2] for u, k in directory.keys.items()})
        return GraphReveal(
            **header(GraphReveal, rnd.round_id, client),
            nonce=nonce,
            signature=keys.sign(rnd.identities[client], payload),
        )

    def forward(self, client: str, reveals: Mapping[str, GraphReveal]) -> Message:
        """Send ``client`` the reveal directory built from ``reveals``; return its reply."""
        table = {u: (r.nonce, r.signature) for u, r in reveals.items()}
        message = RevealDirectory(
            **header(RevealDirectory, self.rnd.round_id, SERVER_ID), reveals=table
        )
        return self.rnd.clients[client].handle(message)
