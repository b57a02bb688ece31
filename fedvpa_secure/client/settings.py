"""``client.toml`` -> frozen settings.

Example::

    state_dir = "state/c000"        # contributions log and local privacy ledger
    registry = "certs/registry.json"
    device = "auto"                 # auto: cuda when present
    [tls]
    cert = "certs/clients/c000/client.pem"
    key = "certs/clients/c000/client.key"
    ca = "certs/clients/c000/ca.pem"
    identity = "certs/clients/c000/identity.key"
    [dp]                            # this client's record-level budget
    epsilon_max = 8.0
    delta = 1e-5
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fedvpa_secure.toml_config import read_toml


@dataclass(frozen=True)
class ClientSettings:
    cert: Path
    key: Path
    ca: Path
    identity: Path
    registry: Path
    state_dir: Path
    device: str = "auto"
    epsilon_max: float = 8.0
    delta: float = 1e-5
    accountant: str = "rdp"
    cache_dir: str | None = None
    poll_wait_s: float = 1.0
    reconnect_s: float = 120.0


def load_client_settings(path: str | Path) -> ClientSettings:
    """Read ``client.toml`` (relative paths are relative to the file)."""
    raw, rel = read_toml(path, "client config")

    tls = raw.get("tls", {})
    dp = raw.get("dp", {})
    return ClientSettings(
        cert=rel(tls.get("cert"), "tls.cert"),
        key=rel(tls.get("key"), "tls.key"),
        ca=rel(tls.get("ca"), "tls.ca"),
        identity=rel(tls.get("identity"), "tls.identity"),
        registry=rel(raw.get("registry"), "registry"),
        state_dir=rel(raw.get("state_dir", "client-state"), "state_dir"),
        device=str(raw.get("device", "auto")),
        epsilon_max=float(dp.get("epsilon_max", 8.0)),
        delta=float(dp.get("delta", 1e-5)),
        accountant=str(dp.get("accountant", "rdp")),
        cache_dir=raw.get("cache_dir"),
        poll_wait_s=float(raw.get("poll_wait_s", 1.0)),
        reconnect_s=float(raw.get("reconnect_s", 120.0)),
    )
