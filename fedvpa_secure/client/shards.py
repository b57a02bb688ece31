"""A client's own data shard on disk, and the deterministic map from client ids to shards.

``write_client_shards`` writes ``DIR/<client id>/shard.json`` for every training client (used by
``simulate``); ``fedvpa-secure client --data DIR/<id>`` reads its folder. Without ``--data`` a
client regenerates its shard from the run's data settings and its index (synthetic protocol),
exactly as the in-process experiment partitions the data.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from fedvpa_secure.data.types import ClientData, Pair
from fedvpa_secure.errors import ConfigError

SHARD_FILE = "shard.json"


def client_index(client_id: str) -> int:
    """The trailing number of a client id (``c003`` -> 3): which training client it is."""
    m = re.search(r"(\d+)$", client_id)
    if m is None:
        raise ConfigError(f"client id {client_id!r} has no trailing index (expected e.g. c003)")
    return int(m.group(1))


def write_shard(client: ClientData, folder: Path) -> Path:
    """Write one client's pairs atomically; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SHARD_FILE
    tmp = path.with_suffix(".tmp")
    payload = {
        "client_id": client.client_id,
        "user_type": client.user_type,
        "pairs": [dict(asdict(p), labels_by_type=dict(p.labels_by_type)) for p in client.pairs],
    }
    tmp.write_text(json.dumps(payload))
    os.replace(tmp, path)
    return path


def write_client_shards(
    clients: Sequence[ClientData], out: str | Path, ids: Sequence[str]
) -> dict[str, Path]:
    """Write ``out/<id>/shard.json`` for ``ids[i]`` holding ``clients[i]``."""
    if len(ids) > len(clients):
        raise ConfigError(f"{len(ids)} client ids but only {len(clients)} training clients")
    return {cid: write_shard(clients[i], Path(out) / cid).parent for i, cid in enumerate(ids)}


def load_shard(folder: str | Path) -> ClientData:
    """Read a shard folder written by :func:`write_shard`."""
    path = Path(folder) / SHARD_FILE
    try:
        raw = json.loads(path.read_text())
        pairs = tuple(Pair(**p) for p in raw["pairs"])
        return ClientData(
            client_id=str(raw["client_id"]), user_type=str(raw["user_type"]), pairs=pairs
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"client data {str(path)!r} cannot be read: {err}") from err
