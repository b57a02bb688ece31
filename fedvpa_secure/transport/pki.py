"""The federation's PKI, split so that nobody holds another party's private key.

Hardened (malicious-server) secure aggregation rests on the server being unable to sign round
keys as a client. If the operator generated the clients' Ed25519 identity keys, it could: so the
operator and each client run separate steps, and private keys never leave the machine that made
them.

Operator folder (``fedvpa-secure certs init`` then ``certs sign``)::

    ca.pem  ca.key  server.pem  server.key  registry.json  issued/<id>/{client.pem,ca.pem}

Client folder (``fedvpa-secure certs request``; the operator's answer is copied in)::

    client.key  identity.key  request.json          (made by the client; keys mode 0600)
    client.pem  ca.pem                              (from the operator)

A request (``request.json``) holds a CSR for the client's TLS key and its Ed25519 identity
*public* key, each bound to the other: the CSR carries the identity key in a URI SAN (signed by
the TLS key) and the identity key signs the CSR. TLS keys are ECDSA P-256 (fast on 2 cores).
``registry.json`` maps each client id to its raw Ed25519 public key in hex: the server's
out-of-band registry, public keys only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from fedvpa_secure.errors import ConfigError, DataError
from fedvpa_secure.secagg import keys as secagg_keys
from fedvpa_secure.secagg.messages import is_valid_id
from fedvpa_secure.transport.tls import SERVER_NAME

VALID_DAYS = 30
REQUEST_FORMAT = "fedvpa-secure-client-request/1"
_REQUEST_FIELDS = frozenset(
    {"format", "client_id", "csr", "identity_public_key", "identity_signature"}
)
_REQUEST_LABEL = b"fedvpa-secure/v1/client-request\x00"
_IDENTITY_URI = "urn:fedvpa-secure:identity:ed25519:"
# names a client certificate must never carry: the server certificate's names
RESERVED_IDS = frozenset({SERVER_NAME, "localhost"})
_HOSTNAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


@dataclass(frozen=True)
class OperatorFiles:
    """The operator's folder: CA, server credentials and the registry (no client secrets)."""

    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    registry: Path

    def issued(self, client_id: str) -> Path:
        """Default folder for the certificate answering ``client_id``'s request."""
        return self.ca.parent / "issued" / client_id


def operator_files(folder: str | Path) -> OperatorFiles:
    d = Path(folder)
    return OperatorFiles(
        d / "ca.pem", d / "ca.key", d / "server.pem", d / "server.key", d / "registry.json"
    )


@dataclass(frozen=True)
class ClientFiles:
    """Where one client's credentials live: its own folder, never the operator's."""

    cert: Path
    key: Path
    identity: Path
    ca: Path
    request: Path


def client_files(folder: str | Path) -> ClientFiles:
    d = Path(folder)
    return ClientFiles(
        d / "client.pem", d / "client.key", d / "identity.key", d / "ca.pem", d / "request.json"
    )


@dataclass(frozen=True)
class ClientRequest:
    """A parsed, self-consistent request (both signatures checked by :func:`read_request`)."""

    client_id: str
    csr: x509.CertificateSigningRequest
    identity_public: bytes

    def fingerprint(self) -> str:
        """What operator and client compare out of band, so a swapped request is noticed."""
        return fingerprint(self.identity_public, self.csr.public_key())


def fingerprint(identity_public: bytes, tls_public: object) -> str:
    """A short hash of (identity public key, TLS public key), printed by request and sign."""
    spki = tls_public.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.sha256(b"fedvpa-secure/v1/fingerprint\x00" + identity_public + spki)
    h = digest.hexdigest()[:32]
    return ":".join(h[i : i + 4] for i in range(0, len(h), 4))


# ---------------------------------------------------------------- files


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Atomic write; private files are 0600 whatever the umask or an earlier leftover was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o600 if private else 0o644
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(handle.fileno(), mode)
        handle.write(data)
    os.replace(tmp, path)


def _private_dir(folder: Path) -> None:
    """Create a folder for private keys readable by its owner only (an existing one is kept)."""
    if not folder.exists():
        folder.mkdir(parents=True, mode=0o700)
        folder.chmod(0o700)


def _key_pem(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem(cert: x509.Certificate | x509.CertificateSigningRequest) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise registry updates (two ``certs sign`` at once must not lose a registration)."""
    lock = path.with_name(path.name + ".lock")
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- certificates


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


def _ca_name(cert: x509.Certificate) -> str:
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value  # type: ignore[return-value]


def make_ca(
    out: Path, name: str = "fedvpa-secure CA"
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create (and write) a self-signed CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue(name, key.public_key(), name, key, ca=True)
    files = operator_files(out)
    _write(files.ca, _pem(cert))
    _write(files.ca_key, _key_pem(key), private=True)
    return cert, key


LOOPBACK_ADDRESSES = ("localhost", "127.0.0.1", "::1")
"""The server certificate's names when the operator gives none: one machine only."""


def server_names(addresses: Sequence[str]) -> list[x509.GeneralName]:
    """Subject alternative names for the server: IP addresses as IP SANs, host names as DNS
    SANs. Clients verify the address they dial against these, so a certificate stolen from
    another server, or a client's own, cannot stand in for this one.

    Raises:
        ConfigError: an empty or malformed address.
    """
    names: list[x509.GeneralName] = [x509.DNSName(SERVER_NAME)]
    for address in addresses:
        text = address.strip().strip("[]")
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            ip = None
        if ip is not None:
            if ip.is_unspecified or ip.is_multicast:
                raise ConfigError(
                    f"--server-address {address!r} is not an address clients can dial (a "
                    "server listens on 0.0.0.0; name the address clients use to reach it)"
                )
            names.append(x509.IPAddress(ip))
            continue
        if not _HOSTNAME.fullmatch(text) or text.replace(".", "").isdigit():
            raise ConfigError(
                f"--server-address {address!r} is neither an IP address nor a host name (give "
                "the address clients dial, without a port, e.g. 10.0.0.5 or fed.example.org)"
            )
        names.append(x509.DNSName(text.lower()))
    return names


def init_operator(
    folder: str | Path, server_addresses: Sequence[str] = LOOPBACK_ADDRESSES
) -> OperatorFiles:
    """Operator step 1: a CA, the server's key and certificate, and an empty registry.

    ``server_addresses`` are what clients will dial (host names or IP addresses); the server
    certificate names each one and clients check it, so list every name and address clients use.

    Raises:
        ConfigError: the folder already holds a CA (a new one would orphan every signed client),
            or an address is malformed.
    """
    sans = server_names(server_addresses)
    files = operator_files(folder)
    if files.ca_key.exists() or files.registry.exists():
        raise ConfigError(
            f"{folder} already holds a CA or registry; a new CA would invalidate every client "
            "it signed. Choose an empty folder, or delete this one on purpose first"
        )
    ca_cert, ca_key = make_ca(Path(folder))
    _write_server_credentials(files, ca_cert, ca_key, sans)
    _write_registry(files.registry, {})
    return files


def reissue_server_certificate(folder: str | Path, server_addresses: Sequence[str]) -> Path:
    """A new server key and certificate under the existing CA, naming ``server_addresses``:
    the way to add an address (or to upgrade a folder whose certificate predates address
    names) without re-signing every client.

    Raises:
        ConfigError: no usable CA in ``folder``, or a malformed address.
    """
    files = operator_files(folder)
    ca_cert, ca_key = _load_ca(files)
    _write_server_credentials(files, ca_cert, ca_key, server_names(server_addresses))
    return files.server_cert


def _write_server_credentials(
    files: OperatorFiles,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    sans: Sequence[x509.GeneralName],
) -> None:
    """A fresh server key and its certificate (server purpose, naming ``sans``) under the CA."""
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _issue(
        SERVER_NAME,
        server_key.public_key(),
        _ca_name(ca_cert),
        ca_key,
        sans=sans,
        usage=[ExtendedKeyUsageOID.SERVER_AUTH],
    )
    _write(files.server_key, _key_pem(server_key), private=True)
    _write(files.server_cert, _pem(server_cert))


def _load_ca(files: OperatorFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
        key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"no usable CA in {files.ca.parent} ({err}); run `fedvpa-secure certs init` first"
        ) from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{files.ca_key} is not the EC key `certs init` writes")
    return cert, key


# ---------------------------------------------------------------- client side


def _request_payload(client_id: str, csr_der: bytes) -> bytes:
    """What the identity key signs: the label, the id and the CSR (ids hold no NUL byte)."""
    return _REQUEST_LABEL + client_id.encode("ascii") + b"\x00" + csr_der


def _check_id(client_id: str) -> None:
    if not is_valid_id(client_id):
        raise ConfigError(f"client id {client_id!r} is invalid: 1-128 chars of [A-Za-z0-9._:-]")
    if client_id.lower() in RESERVED_IDS:
        raise ConfigError(f"client id {client_id!r} is reserved for the server; choose another")
    if _looks_like_address(client_id):
        raise ConfigError(
            f"client id {client_id!r} looks like a network address; a client certificate must "
            "never name what clients dial to reach the server. Choose a plain name (c000)"
        )


def _looks_like_address(name: str) -> bool:
    """An IP address, or a dotted name (host names are what server certificates carry)."""
    try:
        ipaddress.ip_address(name.strip("[]"))
        return True
    except ValueError:
        return "." in name


def make_request(client_id: str, folder: str | Path) -> ClientRequest:
    """Client step: make this client's TLS and identity keys (0600) and its request file.

    The private keys are written only to ``folder``; ``request.json`` (public) goes to the
    operator.

    Raises:
        ConfigError: an invalid id, or ``folder`` already holds an identity key (a client keeps
            one identity; overwriting it would lock the client out of its registration).
    """
    _check_id(client_id)
    files = client_files(folder)
    if files.identity.exists() or files.key.exists():
        raise ConfigError(
            f"{folder} already holds a client key; a client keeps its identity. Use another "
            "folder, or delete this one on purpose first"
        )
    _private_dir(Path(folder))
    tls_key = ec.generate_private_key(ec.SECP256R1())
    identity = Ed25519PrivateKey.generate()
    request = build_request(client_id, tls_key, identity)
    _write(files.key, _key_pem(tls_key), private=True)
    _write(files.identity, _key_pem(identity), private=True)
    _write(files.request, (json.dumps(request, indent=2) + "\n").encode())
    return read_request(files.request)


def build_request(
    client_id: str, tls_key: ec.EllipticCurvePrivateKey, identity: Ed25519PrivateKey
) -> dict[str, str]:
    """The request's JSON fields: a CSR carrying the identity key, signed by both keys."""
    identity_public = secagg_keys.identity_public_bytes(identity)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_name(client_id))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName(client_id),
                    x509.UniformResourceIdentifier(_IDENTITY_URI + identity_public.hex()),
                ]
            ),
            critical=False,
        )
        .sign(tls_key, hashes.SHA256())
    )
    csr_der = csr.public_bytes(serialization.Encoding.DER)
    return {
        "format": REQUEST_FORMAT,
        "client_id": client_id,
        "csr": _pem(csr).decode("ascii"),
        "identity_public_key": identity_public.hex(),
        "identity_signature": identity.sign(_request_payload(client_id, csr_der)).hex(),
    }


# ---------------------------------------------------------------- operator: sign


def _malformed(path: Path, what: str) -> DataError:
    return DataError(
        f"request {str(path)!r} is malformed: {what}. Ask the client for a fresh one "
        "(`fedvpa-secure certs request`)"
    )


def _parse_request_json(path: Path) -> dict[str, str]:
    try:
        raw = json.loads(Path(path).read_bytes())
    except OSError as err:
        raise DataError(f"request {str(path)!r} cannot be read: {err.strerror}") from err
    except ValueError as err:
        raise _malformed(path, f"not JSON ({err})") from err
    if not isinstance(raw, dict) or set(raw) != _REQUEST_FIELDS:
        raise _malformed(path, f"expected a JSON object with exactly {sorted(_REQUEST_FIELDS)}")
    if not all(isinstance(v, str) for v in raw.values()):
        raise _malformed(path, "every field must be a string")
    if raw["format"] != REQUEST_FORMAT:
        raise _malformed(path, f"format {raw['format']!r}, expected {REQUEST_FORMAT!r}")
    return raw


def _hex(path: Path, raw: dict[str, str], field: str, size: int) -> bytes:
    try:
        value = bytes.fromhex(raw[field])
    except ValueError as err:
        raise _malformed(path, f"{field} is not hex") from err
    if len(value) != size:
        raise _malformed(path, f"{field} has {len(value)} bytes, expected {size}")
    return value


def _csr_names(path: Path, csr: x509.CertificateSigningRequest) -> tuple[list[str], list[str]]:
    """(common names, SAN URIs) of the CSR."""
    cns = [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError) as err:
        raise _malformed(path, "the CSR has no subject alternative names") from err
    return cns, san.get_values_for_type(x509.UniformResourceIdentifier)


def read_request(path: str | Path) -> ClientRequest:
    """Parse a request and check it against itself: format, id, CSR and identity signatures.

    Raises:
        DataError: the file is malformed, or a signature (the CSR's, by the TLS key, or the
            identity key's over the CSR) does not verify.
    """
    path = Path(path)
    raw = _parse_request_json(path)
    client_id = raw["client_id"]
    _check_id(client_id)
    try:
        csr = x509.load_pem_x509_csr(raw["csr"].encode("ascii"))
    except (ValueError, UnicodeEncodeError) as err:
        raise _malformed(path, f"csr is not a PEM certificate request ({err})") from err
    if not csr.is_signature_valid:
        raise DataError(
            f"request {str(path)!r}: the CSR signature is invalid (altered, or not made with "
            "the client's own key). Refused; ask the client for a fresh request"
        )
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise _malformed(path, "the CSR key must be ECDSA P-256, as `certs request` makes")
    identity_public = _hex(path, raw, "identity_public_key", secagg_keys.PUBLIC_KEY_BYTES)
    signature = _hex(path, raw, "identity_signature", secagg_keys.SIGNATURE_BYTES)
    cns, uris = _csr_names(path, csr)
    if cns != [client_id]:
        raise _malformed(path, f"the CSR names {cns}, but the request is for {client_id!r}")
    if uris != [_IDENTITY_URI + identity_public.hex()]:
        raise _malformed(path, "the CSR does not carry the request's identity public key")
    csr_der = csr.public_bytes(serialization.Encoding.DER)
    try:
        Ed25519PublicKey.from_public_bytes(identity_public).verify(
            signature, _request_payload(client_id, csr_der)
        )
    except (InvalidSignature, ValueError) as err:
        raise DataError(
            f"request {str(path)!r}: the identity signature is invalid (altered, or not made "
            "with the client's identity key). Refused; ask the client for a fresh request"
        ) from err
    return ClientRequest(client_id, csr, identity_public)


def _check_registration(registry: Mapping[str, str], request: ClientRequest) -> None:
    """A client id keeps its identity key; one identity key belongs to one client id."""
    known = registry.get(request.client_id)
    if known is not None and known != request.identity_public.hex():
        raise ConfigError(
            f"client {request.client_id!r} is already registered with a different identity "
            "key; refused (a second key would let someone speak for that client). If the client "
            "really lost its key, remove its entry from registry.json on purpose, then sign"
        )
    for other, hex_key in registry.items():
        if other != request.client_id and hex_key == request.identity_public.hex():
            raise ConfigError(
                f"this identity key is already registered for client {other!r}; each client "
                "needs its own (`fedvpa-secure certs request` in a fresh folder)"
            )


def sign_request(
    operator_folder: str | Path, request_path: str | Path, out: str | Path | None = None
) -> tuple[ClientRequest, Path]:
    """Operator step 2: check a client's request, issue its certificate, register its key.

    Writes ``out/client.pem`` and ``out/ca.pem`` (default ``OPERATOR/issued/<id>/``), public
    files to hand back to the client, and adds the identity public key to ``registry.json``.
    Signing the same request (same identity key) again renews the certificate.

    Returns:
        The checked request and the folder holding the certificate.

    Raises:
        DataError: a malformed request or an invalid signature.
        ConfigError: no CA here, or the id / identity key is registered with another key / id.
    """
    files = operator_files(operator_folder)
    ca_cert, ca_key = _load_ca(files)
    request = read_request(request_path)
    target = Path(out) if out is not None else files.issued(request.client_id)
    with _locked(files.registry):
        registry = _read_registry_hex(files.registry)
        _check_registration(registry, request)
        cert = _issue(
            request.client_id,
            request.csr.public_key(),  # type: ignore[arg-type]
            _ca_name(ca_cert),
            ca_key,
            sans=[x509.DNSName(request.client_id)],
            usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
        )
        answer = client_files(target)
        _write(answer.cert, _pem(cert))
        _write(answer.ca, _pem(ca_cert))
        registry[request.client_id] = request.identity_public.hex()
        _write_registry(files.registry, registry)
    return request, target


def make_loopback_federation(
    operator_folder: str | Path,
    client_folders: Mapping[str, str | Path],
    server_addresses: Sequence[str] = LOOPBACK_ADDRESSES,
) -> dict[str, str]:
    """Both steps on one machine (demos, tests, ``simulate``): init, then request + sign each.

    Each client's keys go to its own folder, which must lie outside the operator's, so the
    operator folder never holds a client private key even here.

    Returns:
        The registry: client id -> hex of the raw Ed25519 public key.
    """
    operator = Path(operator_folder).resolve()
    for cid, folder in client_folders.items():
        resolved = Path(folder).resolve()
        if resolved == operator or operator in resolved.parents or resolved in operator.parents:
            raise ConfigError(
                f"client {cid!r}'s folder {folder} overlaps the operator folder "
                f"{operator_folder}; client keys must live apart from the CA"
            )
    if len({Path(f).resolve() for f in client_folders.values()}) != len(client_folders):
        raise ConfigError("every client needs its own folder")
    files = init_operator(operator_folder, server_addresses)
    for cid, folder in client_folders.items():
        make_request(cid, folder)
        sign_request(operator_folder, client_files(folder).request, out=folder)
    return _read_registry_hex(files.registry)


# ---------------------------------------------------------------- registry and identities


def _write_registry(path: Path, registry: Mapping[str, str]) -> None:
    _write(path, (json.dumps(dict(registry), indent=2, sort_keys=True) + "\n").encode())


def _read_registry_hex(path: Path) -> dict[str, str]:
    return {cid: key.hex() for cid, key in load_registry(path).items()}


def load_registry(path: str | Path) -> dict[str, bytes]:
    """Read ``registry.json`` (client id -> hex of a raw 32-byte Ed25519 public key)."""
    try:
        raw = json.loads(Path(path).read_text())
        registry = {str(k): bytes.fromhex(v) for k, v in raw.items()}
    except (OSError, ValueError, AttributeError, TypeError) as err:
        raise ConfigError(f"registry {str(path)!r} cannot be read: {err}") from err
    for cid, key in registry.items():
        if len(key) != secagg_keys.PUBLIC_KEY_BYTES:
            raise ConfigError(
                f"registry {str(path)!r}: {cid!r} has a {len(key)}-byte key, expected a "
                f"{secagg_keys.PUBLIC_KEY_BYTES}-byte Ed25519 public key"
            )
    return registry


def load_identity(path: str | Path) -> Ed25519PrivateKey:
    """Read a client's Ed25519 identity key (PKCS#8 PEM)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as err:
        raise ConfigError(f"identity key {str(path)!r} cannot be read: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"identity key {str(path)!r} is not an Ed25519 key")
    return key
