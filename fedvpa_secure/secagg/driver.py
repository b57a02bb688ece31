"""The in-process driver: one round with every client and the server in this process.

Used by the protocol tests, the benchmark and the later in-process federation. It plays the
transport: it delivers the server's messages to the clients, their replies to the server, and
closes each stage once everyone still in the round has answered (an in-process round needs no
deadline). Dropouts and adversaries are injected here, never in the sessions:

* ``drop_at[stage]`` - clients that go silent at that stage (they send nothing from then on);
* :class:`Hooks` - a malicious server's rewrite of each stage's outbox (tamper, replay, send to
  anyone, ask twice), and a bad client's rewrite of its own replies.

A client that aborts is recorded in :attr:`InProcessRound.client_errors` and drops out; a message
the server rejects is recorded in :attr:`InProcessRound.rejections`; the round goes on while the
threshold holds. Every reply is kept in :attr:`InProcessRound.transcript` (for replay attacks in
tests), and wall time per stage in :attr:`InProcessRound.timings`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedvpa_secure.errors import AbortRound, ConfigError, ProtocolError
from fedvpa_secure.secagg import keys
from fedvpa_secure.secagg.client import ClientSession, ClientStage
from fedvpa_secure.secagg.config import SecAggConfig
from fedvpa_secure.secagg.encoding import lp, lp_str
from fedvpa_secure.secagg.errors import ClientRejected
from fedvpa_secure.secagg.layout import Layout
from fedvpa_secure.secagg.messages import Message, Stage, wire_size
from fedvpa_secure.secagg.rng import DeterministicRng
from fedvpa_secure.secagg.server import AggregateResult, ServerSession

Outbox = dict[str, list[Message]]
ServerHook = Callable[["InProcessRound", Stage, Outbox], Outbox]
ClientHook = Callable[["InProcessRound", Stage, str, Message], "Message | None"]


@dataclass
class Hooks:
    """Adversary hooks for tests.

    Attributes:
        server_to_clients: gets (round, stage, outbox) and returns the outbox to deliver: a
            malicious server may alter, drop, duplicate (ask twice) or add messages for anyone.
        client_to_server: gets (round, stage, client id, reply) and returns the reply to send,
            or ``None`` to send nothing: a bad client.
    """

    server_to_clients: ServerHook | None = None
    client_to_server: ClientHook | None = None


def client_ids_for(n: int) -> list[str]:
    """Default ids ``c000, c001, ...``."""
    return [f"c{i:03d}" for i in range(n)]


class InProcessRound:
    """One secure-aggregation round run in this process.

    Args:
        updates: one dict of named tensors per client.
        config: the round configuration (``n_clients`` must equal ``len(updates)``).
        extras: optional, one dict of extra named 1-D vectors per client.
        weights: optional, one weight per client (default 1.0).
        client_ids: optional ids (default ``c000`` ...).
        identities: optional long-term Ed25519 keys by id (default: fresh ones).
        round_id: the round id.
        model_version: the model version the updates were computed from.
        drop_at: stage -> clients (ids or indices) that go silent at that stage.
        hooks: adversary hooks.
        workers: threads for masking and unmasking.
        insecure_seed: test seam: derive every client's randomness from this seed (INSECURE).
        layout: optional prebuilt layout (default: built from the first client's update).
        record_transcript: keep every client reply in :attr:`transcript` (turn off for large
            benchmarks: it holds every masked input).
    """

    def __init__(
        self,
        updates: Sequence[Mapping[str, np.ndarray]],
        config: SecAggConfig,
        *,
        extras: Sequence[Mapping[str, np.ndarray]] | None = None,
        weights: Sequence[float] | None = None,
        client_ids: Sequence[str] | None = None,
        identities: Mapping[str, Ed25519PrivateKey] | None = None,
        round_id: str = "round-1",
        model_version: str = "v0",
        drop_at: Mapping[Stage, Iterable[str | int]] | None = None,
        hooks: Hooks | None = None,
        workers: int | None = None,
        insecure_seed: bytes | None = None,
        layout: Layout | None = None,
        record_transcript: bool = True,
    ) -> None:
        n = len(updates)
        if n != config.n_clients:
            raise ConfigError(f"{n} updates given, config.n_clients is {config.n_clients}")
        ids = list(client_ids) if client_ids is not None else client_ids_for(n)
        if len(ids) != n:
            raise ConfigError(f"{len(ids)} client ids for {n} updates")
        if extras is not None and len(extras) != n:
            raise ConfigError(f"{len(extras)} extras dicts for {n} updates")
        if weights is not None and len(weights) != n:
            raise ConfigError(f"{len(weights)} weights for {n} updates")
        self.config = config
        self.round_id = round_id
        self.client_ids = ids
        self.layout = layout or Layout.build(
            updates[0], config, extras=None if extras is None else extras[0]
        )
        self.identities = (
            dict(identities)
            if identities is not None
            else {u: Ed25519PrivateKey.generate() for u in ids}
        )
        self.registry = {u: keys.identity_public_bytes(self.identities[u]) for u in ids}
        self.hooks = hooks or Hooks()
        self.drop_at: dict[Stage, set[str]] = {}
        for stage, who in (drop_at or {}).items():
            self.drop_at[Stage(stage)] = {ids[w] if isinstance(w, int) else w for w in who}
        self._inputs = {
            u: (
                updates[i],
                None if extras is None else extras[i],
                1.0 if weights is None else weights[i],
            )
            for i, u in enumerate(ids)
        }
        self.clients: dict[str, ClientSession] = {
            u: ClientSession(
                u,
                self.identities[u],
                self.registry,
                config,
                self.layout,
                round_id,
                model_version=model_version,
                rng=None
                if insecure_seed is None
                else DeterministicRng(lp(insecure_seed) + lp_str(u)),
                insecure_rng=insecure_seed is not None,
                workers=workers,
            )
            for u in ids
        }
        self.server = ServerSession(
            config, self.layout, round_id, ids, self.registry, workers=workers
        )
        self.silent: set[str] = set()
        self.client_errors: dict[str, AbortRound] = {}
        self.record_transcript = record_transcript
        self.transcript: list[tuple[Stage, str, Message]] = []
        self.server_messages: list[tuple[Stage, str, Message]] = []
        self.timings: dict[str, float] = {}
        self.upload_bytes = 0

    @property
    def rejections(self) -> list[ClientRejected]:
        """Every message the server rejected (and every client it excluded), in order."""
        return self.server.rejections

    def _deliver(self, stage: Stage, outbox: Outbox) -> None:
        if self.hooks.server_to_clients is not None:
            outbox = self.hooks.server_to_clients(self, stage, outbox)
        for u in sorted(outbox):
            client = self.clients.get(u)
            if client is None or u in self.silent or client.stage is ClientStage.ABORTED:
                continue
            if u in self.drop_at.get(stage, ()):
                self.silent.add(u)
                continue
            for message in outbox[u]:
                if self.record_transcript:
                    self.server_messages.append((stage, u, message))
                if stage is Stage.MASKED_INPUT and client.stage is ClientStage.SHARED:
                    tensors, extras, weight = self._inputs[u]
                    client.provide_input(tensors, extras=extras, weight=weight)
                try:
                    reply: Message | None = client.handle(message)
                except AbortRound as exc:
                    self.client_errors[u] = exc
                    break
                if self.hooks.client_to_server is not None and reply is not None:
                    reply = self.hooks.client_to_server(self, stage, u, reply)
                if reply is None:
                    continue
                if self.record_transcript:
                    self.transcript.append((stage, u, reply))
                with contextlib.suppress(ProtocolError):  # a malformed reply has no wire size
                    self.upload_bytes += wire_size(reply)
                with contextlib.suppress(ClientRejected):  # recorded in server.rejections
                    self.server.receive(reply, authenticated_sender=u)

    def run(self) -> AggregateResult:
        """Run every stage; return the result or raise :class:`AbortRound` (no partial output)."""
        started = time.perf_counter()
        outbox: Outbox = {u: [m] for u, m in self.server.start().items()}
        for stage in Stage:
            if stage is Stage.CONSISTENCY and not self.config.hardened:
                continue
            t0 = time.perf_counter()
            self._deliver(stage, outbox)
            t1 = time.perf_counter()
            self.timings[f"clients {stage.name}"] = t1 - t0
            nxt = self.server.close_stage()
            self.timings[f"server close {stage.name}"] = time.perf_counter() - t1
            outbox = {u: [m] for u, m in nxt.items()}
        self.timings["total"] = time.perf_counter() - started
        if self.server.result is None:  # pragma: no cover - close_stage raises instead
            raise AbortRound(f"round {self.round_id!r} produced no result")
        return self.server.result


def run_in_process(
    updates: Sequence[Mapping[str, np.ndarray]],
    config: SecAggConfig,
    *,
    extras: Sequence[Mapping[str, np.ndarray]] | None = None,
    weights: Sequence[float] | None = None,
    drop_at: Mapping[Stage, Iterable[str | int]] | None = None,
    hooks: Hooks | None = None,
    client_ids: Sequence[str] | None = None,
    round_id: str = "round-1",
    workers: int | None = None,
) -> AggregateResult:
    """Run one secure-aggregation round in this process and return the decoded sum.

    Args:
        updates: one dict of named tensors per client (all with the same names/shapes/dtypes).
        config: the round configuration.
        extras: optional extra named vectors per client (e.g. the prior's sufficient statistics).
        weights: optional per-client weights (capped at ``config.weight_cap``).
        drop_at: stage -> clients (ids or indices) that go silent at that stage.
        hooks: adversary hooks (tests).
        client_ids: optional client ids.
        round_id: the round id.
        workers: threads for masking and unmasking.

    Returns:
        The float sums of the survivors' tensors and extras, the survivor ids, and the weight and
        count coordinate sums.

    Raises:
        AbortRound: the threshold was lost or an integrity check failed; there is no output.
    """
    return InProcessRound(
        updates,
        config,
        extras=extras,
        weights=weights,
        client_ids=client_ids,
        round_id=round_id,
        drop_at=drop_at,
        hooks=hooks,
        workers=workers,
    ).run()
