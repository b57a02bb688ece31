"""Helpers for the privacy tests: small ledgers and line-level tampering.

A plain module with a unique name (not ``conftest``) so test modules can import it directly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from privacy.budget import BudgetPolicy, PersistentAccountant
from privacy.events import ComposedEvent, GaussianEvent, SampledGaussianEvent
from privacy.ledger import canonical_json, entry_hash

SERVER_EVENT = SampledGaussianEvent(1.0, 0.1, 1)
CLIENT_EVENT = ComposedEvent((SampledGaussianEvent(1.0, 0.01, 20), GaussianEvent(20.0)))


def build_run(root: Path, rounds: int = 3) -> dict[str, Path]:
    """A run directory with a server ledger and two nested client ledgers."""
    server = PersistentAccountant.open(
        root / "server.ledger.jsonl",
        run_id="run-1",
        actor="server",
        unit="user",
        budget=BudgetPolicy(8.0, 1e-5),
        accountant="rdp",
    )
    clients = [
        PersistentAccountant.open(
            root / "clients" / f"client-{i}.ledger.jsonl",
            run_id="run-1",
            actor=f"client-{i}",
            unit="record",
            budget=BudgetPolicy(10.0, 1e-5),
            accountant="dpa-rdp",
        )
        for i in range(2)
    ]
    for r in range(rounds):
        server.record(SERVER_EVENT, round=r, participants=["client-0", "client-1"], clipping_norm=1)
        for client in clients:
            client.record(CLIENT_EVENT, round=r, clipping_norm=1.0, label="dp-sgd+prior")
    return {
        "root": root,
        "server": server.ledger.path,
        "client-0": clients[0].ledger.path,
        "client-1": clients[1].ledger.path,
    }


def read_lines(path: Path) -> list[bytes]:
    """The ledger's lines with their newlines."""
    return path.read_bytes().splitlines(keepends=True)


def write_lines(path: Path, lines: list[bytes]) -> None:
    """Overwrite a ledger with the given lines."""
    path.write_bytes(b"".join(lines))


def rewrite_consistently(path: Path, edit: Callable[[list[dict]], None]) -> None:
    """Edit entries and recompute every hash, prev_hash and the seal: a forger's best effort."""
    objs = [json.loads(line) for line in read_lines(path)]
    body = objs[:-1]
    edit(body)
    prev = "0" * 64
    out = []
    for index, obj in enumerate(body):
        obj["seq"] = index
        obj["prev_hash"] = prev
        obj["hash"] = entry_hash(obj)
        prev = obj["hash"]
        out.append(canonical_json(obj) + b"\n")
    seal = {"v": 1, "kind": "seal", "seq": len(body) - 1, "head": prev}
    seal["hash"] = entry_hash(seal)
    out.append(canonical_json(seal) + b"\n")
    write_lines(path, out)
