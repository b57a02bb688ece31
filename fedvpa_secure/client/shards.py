"""A client's own data shard on disk, and the deterministic map from client ids to shards.

``write_client_shards`` writes ``DIR/<client id>/shard.json`` for every training client (used by
``simulate``); ``fedvpa-secure client --data DIR/<id>`` reads its folder. A user's own data can
also be an HH-RLHF folder (``<subset>/*.jsonl.gz``, the layout of ../shared/data/hh-rlhf): its
pairs are labelled the way the run's protocol says a user of ``--user-type`` labels them
(:func:`load_client_data`). Without ``--data`` a client regenerates its shard from the run's
data settings and its index (synthetic protocol), exactly as the in-process experiment
partitions the data.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

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


def load_client_data(
    folder: str | Path, client_id: str, protocol: str, user_type: str | None
) -> ClientData:
    """A client's own pairs: a ``shard.json`` folder, or an HH-RLHF folder and a user type.

    From an HH-RLHF folder every pair the protocol lets a ``user_type`` user hold is kept and
    labelled as that type labels it (P3 ``helpful-first`` reverses harmless-base labels; P1/P2
    keep the pairs whose owner is that type), shown in a random order seeded by the client id.
    For P1/P2 the type may be left out when every pair in the folder has the same owner.

    Raises:
        ConfigError: the folder is neither layout, the type is unknown or missing, or no pair
            of the folder fits the type.
        DataError: a data file is malformed (names the file and line).
    """
    from fedvpa_secure.data import load_folder, make_candidates, protocol_user_types
    from fedvpa_secure.data.protocols import assign

    root = Path(folder)
    if (root / SHARD_FILE).is_file():
        return load_shard(root)
    if not root.is_dir():
        raise ConfigError(
            f"client data {str(root)!r} is not a folder: pass a shard folder (with {SHARD_FILE}) "
            "or an HH-RLHF folder (<subset>/*.jsonl.gz)"
        )
    types = protocol_user_types(protocol)
    candidates = make_candidates(protocol, load_folder(root).pairs)
    if user_type is None:
        owners = {c.owner for c in candidates}
        if len(owners) != 1 or None in owners:
            raise ConfigError(
                f"client data {str(root)!r} is an HH-RLHF folder: say which user type this client "
                f"is with --user-type (protocol {protocol}: one of {', '.join(types)})"
            )
        user_type = str(owners.pop())
    if user_type not in types:
        raise ConfigError(
            f"--user-type {user_type!r} is unknown for protocol {protocol}: choose one of "
            f"{', '.join(types)}"
        )
    fits = [c for c in candidates if c.owner in (None, user_type) and user_type in c.labels]
    if not fits:
        raise ConfigError(
            f"client data {str(root)!r} has no pair a {user_type!r} user holds under protocol "
            f"{protocol} ({len(candidates)} pairs read): check the folder and --user-type"
        )
    rng = np.random.default_rng(list(client_id.encode()))
    pairs = tuple(assign(c, user_type, rng) for c in fits)
    return ClientData(client_id=client_id, user_type=user_type, pairs=pairs)
