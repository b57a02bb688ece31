"""What the client checks before connecting: one clear line per operator mistake, at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedvpa_secure.client.preflight import (
    check_client_id,
    check_server_address,
    check_user_type,
    dial_target,
)
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.transport.pki import client_files, load_registry, make_loopback_federation


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("10.0.0.5:50051", "10.0.0.5:50051"),
        ("fed.example.org:443", "fed.example.org:443"),
        ("[FD00:0::5]:1", "[fd00::5]:1"),  # the canonical form certificates are compared in
    ],
)
def test_good_addresses_become_the_target_dialled(address: str, target: str) -> None:
    assert dial_target(*check_server_address(address)) == target


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("localhost", "needs HOST:PORT"),
        ("[fd00::5:50051", "needs HOST:PORT"),
        ("10.0.0.5:50_051", "needs HOST:PORT"),
        ("h:0", "port must be a number in 1..65535"),
        ("10.0.0.256:1", "is not an IP address"),
        ("[zzz]:1", "is not an IP address"),
    ],
)
def test_bad_addresses_are_refused_with_the_reason(address: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        check_server_address(address)


def test_the_client_id_must_be_registered_and_be_the_certificates(tmp_path: Path) -> None:
    ids = {"c000": tmp_path / "c0", "c001": tmp_path / "c1"}
    make_loopback_federation(tmp_path / "op", ids)
    registry = load_registry(tmp_path / "op" / "registry.json")
    cert = client_files(ids["c000"]).cert
    check_client_id("c000", registry, cert)  # control: the right pair passes
    with pytest.raises(ConfigError, match="not in the registry"):
        check_client_id("c009", registry, cert)
    with pytest.raises(ConfigError, match="was issued for 'c000'"):
        check_client_id("c001", registry, cert)


def test_the_user_type_must_be_some_protocols() -> None:
    check_user_type(None)
    check_user_type("helpful-first")
    with pytest.raises(ConfigError, match="no protocol's user type"):
        check_user_type("nobody")
