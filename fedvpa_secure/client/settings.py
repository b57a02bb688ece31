"""``client.toml`` -> frozen settings, including the client's own privacy policy.

Example::

    state_dir = "state/c000"        # contributions log and the client's privacy ledgers
    registry = "certs/registry.json"
    device = "auto"                 # auto: cuda when present
    [tls]
    cert = "certs/clients/c000/client.pem"
    key = "certs/clients/c000/client.key"
    ca = "certs/clients/c000/ca.pem"
    identity = "certs/clients/c000/identity.key"
    [policy]                        # what this client accepts; see fedvpa_secure/client/policy.py
    user_epsilon = 8.0              # user-level budget towards the server
    record_epsilon = 8.0            # record-level (DP-SGD) budget

Every key is checked: an unknown key (a typo) is an error naming it, never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedvpa_secure.client.policy import PrivacyPolicy
from fedvpa_secure.toml_config import check_keys, read_toml

ROOT_KEYS = (
    "state_dir",
    "registry",
    "device",
    "cache_dir",
    "poll_wait_s",
    "reconnect_s",
    "tls",
    "policy",
)
TLS_KEYS = ("cert", "key", "ca", "identity")


@dataclass(frozen=True)
class ClientSettings:
    cert: Path
    key: Path
    ca: Path
    identity: Path
    registry: Path
    state_dir: Path
    device: str = "auto"
    cache_dir: str | None = None
    poll_wait_s: float = 1.0
    reconnect_s: float = 120.0
    policy: PrivacyPolicy = field(default_factory=PrivacyPolicy)


def _check_keys(table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    hint = ""
    if "dp" in table and where == "client config":
        hint = " ([dp] moved into [policy]: record_epsilon, record_delta)"
    check_keys(table, known, where, hint)


def load_client_settings(path: str | Path) -> ClientSettings:
    """Read ``client.toml`` (relative paths are relative to the file)."""
    raw, rel = read_toml(path, "client config")
    _check_keys(raw, ROOT_KEYS, "client config")
    tls = raw.get("tls", {})
    _check_keys(tls, TLS_KEYS, "client config [tls]")
    policy = PrivacyPolicy.from_table(raw.get("policy", {}))  # every key checked before any path
    defaults = ClientSettings(*(Path(".") for _ in range(6)))
    return ClientSettings(
        cert=rel(tls.get("cert"), "tls.cert"),
        key=rel(tls.get("key"), "tls.key"),
        ca=rel(tls.get("ca"), "tls.ca"),
        identity=rel(tls.get("identity"), "tls.identity"),
        registry=rel(raw.get("registry"), "registry"),
        state_dir=rel(raw.get("state_dir", "client-state"), "state_dir"),
        device=str(raw.get("device", defaults.device)),
        cache_dir=raw.get("cache_dir"),
        poll_wait_s=float(raw.get("poll_wait_s", defaults.poll_wait_s)),
        reconnect_s=float(raw.get("reconnect_s", defaults.reconnect_s)),
        policy=policy,
    )
