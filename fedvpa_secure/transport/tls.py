"""mTLS credentials for gRPC and the authenticated peer id.

The server requires a client certificate signed by the federation CA (``require_client_auth``),
and a client only trusts a server certificate from that CA that names the address it dialled
(``certs init --server-address``). The client id is the certificate's
common name (also a DNS SAN); servicers compare it with every id a message claims, so a client
cannot speak for another. gRPC Python offers no switch to pin TLS 1.3: grpc core negotiates 1.3
with any current peer but would still accept a peer limited to TLS 1.2.
"""

from __future__ import annotations

from pathlib import Path

import grpc

from fedvpa_secure.errors import ConfigError

SERVER_NAME = "fedvpa-server"
"""The server certificate's common name. Clients do not check this name: they check that the
certificate names the address they dialled (its IP or DNS subject alternative names)."""


def _read(path: str | Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise ConfigError(f"{what} file {str(path)!r} cannot be read: {err.strerror}") from err


def server_credentials(cert: str | Path, key: str | Path, ca: str | Path) -> grpc.ServerCredentials:
    """Server credentials that demand a client certificate from ``ca``."""
    return grpc.ssl_server_credentials(
        [(_read(key, "server key"), _read(cert, "server certificate"))],
        root_certificates=_read(ca, "CA certificate"),
        require_client_auth=True,
    )


def channel_credentials(
    ca: str | Path, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Client credentials: trust ``ca``; present ``cert``/``key`` when given (mTLS)."""
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "CA certificate"),
        private_key=None if key is None else _read(key, "client key"),
        certificate_chain=None if cert is None else _read(cert, "client certificate"),
    )


def channel_options(max_message_bytes: int) -> list[tuple[str, object]]:
    """Options every channel uses: reconnect backoff and message size limits. There is
    deliberately no target name override: gRPC verifies the dialled host against the server
    certificate's names."""
    return [
        # after a link comes back, reconnect within seconds (gRPC's default backoff grows to 2 min)
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5000),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]


def peer_client_id(context: grpc.ServicerContext) -> str | None:
    """The client id from the verified peer certificate's common name, or ``None``."""
    auth = context.auth_context()
    names = auth.get("x509_common_name") or []
    if len(names) != 1:
        return None
    try:
        return names[0].decode("ascii")
    except UnicodeDecodeError:
        return None


def tls_failure(details: str) -> str | None:
    """Why a connection failed, when the reason is the server's certificate: a failure that
    retrying cannot fix (None when the error says nothing about certificates)."""
    if "Hostname Verification" in details or "Peer name" in details:
        return (
            "its certificate does not name the address dialled; dial an address it names, or "
            "have the operator add it (`certs server-cert --ca-dir CA --server-address ADDR` for "
            "each address clients use) and restart the server"
        )
    if "unsupported certificate purpose" in details:
        return "it presented a certificate that is not a server certificate: refused"
    if "expired" in details or "not yet valid" in details:
        return (
            "its certificate is expired or not yet valid: check this machine's clock, or have "
            "the operator issue a new one (`certs server-cert`)"
        )
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return (
            "its certificate is not signed by this federation's CA (tls.ca in client.toml); "
            "check the address and the CA file"
        )
    return None
