"""A small federation PKI: CA, server and client certificates, Ed25519 identities, registry.

Written by ``fedvpa-secure certs``. Layout of the output folder::

    ca.pem  ca.key  server.pem  server.key  registry.json
    clients/<id>/client.pem  client.key  identity.key  ca.pem

TLS keys are ECDSA P-256 (fast on 2 cores); identity keys are Ed25519, the long-term keys that
sign each round's advertised keys (PROTOCOL.md, "identity"). ``registry.json`` maps each client
id to its raw Ed25519 public key in hex: the server's out-of-band registry.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedvpa_secure.errors import ConfigError
from fedvpa_secure.secagg import keys as secagg_keys
from fedvpa_secure.secagg.messages import is_valid_id
from fedvpa_secure.transport.tls import SERVER_NAME

VALID_DAYS = 30


@dataclass(frozen=True)
class ClientFiles:
    """Where one client's credentials live."""

    cert: Path
    key: Path
    identity: Path
    ca: Path


def client_files(root: str | Path, client_id: str) -> ClientFiles:
    d = Path(root) / "clients" / client_id
    return ClientFiles(d / "client.pem", d / "client.key", d / "identity.key", d / "ca.pem")


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _key_pem(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _issue(
    subject: str,
    public_key: ec.EllipticCurvePublicKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    sans: Sequence[x509.GeneralName] = (),
    usage: Sequence[x509.ObjectIdentifier] = (),
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(usage)), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_ca(
    out: Path, name: str = "fedvpa-secure CA"
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create (and write) a self-signed CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(name, key.public_key(), name, key, ca=True)
    _write(out / "ca.pem", cert.public_bytes(serialization.Encoding.PEM))
    _write(out / "ca.key", _key_pem(key), private=True)
    return cert, key


def make_federation(out: str | Path, client_ids: Sequence[str]) -> dict[str, str]:
    """Write a CA, the server's certificate, every client's certificate and identity key.

    Returns:
        The registry: client id -> hex of the raw Ed25519 public key (also ``registry.json``).

    Raises:
        ConfigError: an invalid or duplicate client id.
    """
    root = Path(out)
    if len(set(client_ids)) != len(client_ids):
        raise ConfigError("client ids must be distinct")
    for cid in client_ids:
        if not is_valid_id(cid):
            raise ConfigError(f"client id {cid!r} is invalid: 1-128 chars of [A-Za-z0-9._:-]")
    ca_cert, ca_key = make_ca(root)
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    ca_name = ca_cert.subject.rfc4514_string().removeprefix("CN=")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        SERVER_NAME,
        server_key.public_key(),
        ca_name,
        ca_key,
        sans=[x509.DNSName(SERVER_NAME), x509.DNSName("localhost")],
        usage=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    _write(root / "server.pem", server_cert.public_bytes(serialization.Encoding.PEM))
    _write(root / "server.key", _key_pem(server_key), private=True)
    registry: dict[str, str] = {}
    for cid in client_ids:
        files = client_files(root, cid)
        tls_key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(
            cid,
            tls_key.public_key(),
            ca_name,
            ca_key,
            sans=[x509.DNSName(cid)],
            usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        identity = Ed25519PrivateKey.generate()
        _write(files.cert, cert.public_bytes(serialization.Encoding.PEM))
        _write(files.key, _key_pem(tls_key), private=True)
        _write(files.identity, _key_pem(identity), private=True)
        _write(files.ca, ca_pem)
        registry[cid] = secagg_keys.identity_public_bytes(identity).hex()
    _write(root / "registry.json", (json.dumps(registry, indent=2, sort_keys=True) + "\n").encode())
    return registry


def load_registry(path: str | Path) -> dict[str, bytes]:
    """Read ``registry.json`` (client id -> hex Ed25519 public key)."""
    try:
        raw = json.loads(Path(path).read_text())
        return {str(k): bytes.fromhex(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError) as err:
        raise ConfigError(f"registry {str(path)!r} cannot be read: {err}") from err


def load_identity(path: str | Path) -> Ed25519PrivateKey:
    """Read a client's Ed25519 identity key (PKCS#8 PEM)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as err:
        raise ConfigError(f"identity key {str(path)!r} cannot be read: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"identity key {str(path)!r} is not an Ed25519 key")
    return key
