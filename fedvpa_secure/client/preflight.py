"""What a client checks before it opens a connection: each mistake an operator can make in
the command line gets one clear line at once, instead of a minute of silent retrying.

Checked here: the server address has the HOST:PORT form, the client id is in the registry and
is the id the client certificate was issued for, and a ``--user-type`` is a type some protocol
has (the run's own protocol is checked again after Join, when the client knows it).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

from fedvpa_secure.data.protocols import PROTOCOLS
from fedvpa_secure.errors import ConfigError

_ADDRESS = re.compile(r"\[(?P<v6>[^\[\]]+)\]:(?P<p6>\d{1,5})|(?P<host>[^:\[\]]+):(?P<port>\d{1,5})")


def check_server_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as (host, port), IP addresses in canonical form.

    Raises:
        ConfigError: no port, a port outside 1-65535, a malformed IP, or an empty host.
    """
    match = _ADDRESS.fullmatch(address.strip())
    if match is None:
        raise ConfigError(
            f"--server {address!r} needs HOST:PORT (e.g. 10.0.0.5:50051, fed.example.org:50051, "
            "[fd00::5]:50051): the port the server's config `address` listens on"
        )
    host = match["v6"] or match["host"]
    port = int(match["p6"] or match["port"])
    if not 1 <= port <= 65535:
        raise ConfigError(f"--server {address!r}: the port must be a number in 1..65535")
    if match["v6"] or host.replace(".", "").isdigit():
        try:
            host = ipaddress.ip_address(host).compressed
        except ValueError as err:
            raise ConfigError(f"--server {address!r}: {host!r} is not an IP address") from err
    return host, port


def dial_target(host: str, port: int) -> str:
    """The gRPC target for (host, port): IPv6 in brackets, in the canonical form the server
    certificate's IP names are compared with."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_client_id(client_id: str, registry: Mapping[str, bytes], cert: Path) -> None:
    """The id is registered and is the common name of this client's certificate.

    Raises:
        ConfigError: naming the registered ids (a few) or the certificate's id.
    """
    if client_id not in registry:
        known = ", ".join(sorted(registry)[:5]) + (" ..." if len(registry) > 5 else "")
        raise ConfigError(
            f"--client-id {client_id!r} is not in the registry ({known or 'empty'}); use the id "
            "your certificate was signed for, or ask the operator for a current registry.json"
        )
    try:
        names = x509.load_pem_x509_certificate(cert.read_bytes()).subject.get_attributes_for_oid(
            NameOID.COMMON_NAME
        )
    except (OSError, ValueError) as err:
        raise ConfigError(f"client certificate {cert} cannot be read: {err}") from err
    issued_for = names[0].value if names else None
    if issued_for != client_id:
        raise ConfigError(
            f"--client-id {client_id!r} but the certificate {cert} was issued for "
            f"{issued_for!r}: the server would refuse every message; use that id or that "
            "client's certificate"
        )


def check_user_type(user_type: str | None) -> None:
    """A ``--user-type`` some protocol defines.

    Raises:
        ConfigError: listing every protocol's types.
    """
    if user_type is None:
        return
    known = {t for spec in PROTOCOLS.values() for t in spec.user_types}
    if user_type not in known:
        raise ConfigError(
            f"--user-type {user_type!r} is no protocol's user type; known: {sorted(known)}"
        )
