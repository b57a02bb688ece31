"""``fedvpa-secure certs``: the operator's CA and the clients' keys, made on separate machines.

The operator runs ``init`` (CA, server certificate, empty registry) and ``sign`` (one client's
request -> its certificate, its identity public key into the registry). Each client runs
``request``: its TLS and Ed25519 identity private keys never leave its folder, so the operator
cannot sign secure-aggregation keys as a client. ``demo`` does all of it on one machine, with
every client's keys in its own folder next to (never inside) the operator's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedvpa_secure.errors import ConfigError

_USAGE = (
    "operator: `certs init --out DIR`, then `certs sign --ca-dir DIR --request FILE` per client; "
    "each client: `certs request --client-id ID --out DIR`; one machine: `certs demo --out DIR "
    "--clients N`"
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "certs",
        help="CA and server certificate (init), client keys and request (request), "
        "signing and registry (sign)",
        description="The federation's certificates and identity keys. " + _USAGE + ".",
    )
    # the one-shot form that put every client's private keys next to the CA: refused clearly
    p.add_argument("--out", dest="legacy_out", help=argparse.SUPPRESS)
    p.add_argument("--clients", dest="legacy_clients", help=argparse.SUPPRESS)
    p.set_defaults(func=_no_action)
    actions = p.add_subparsers(dest="certs_action", metavar="ACTION")

    init = actions.add_parser(
        "init",
        help="operator: make the CA, the server key/certificate and an empty registry",
        description="Write DIR/ca.pem, ca.key, server.pem, server.key and registry.json "
        "(private keys mode 0600). Refuses a folder that already holds a CA.",
    )
    init.add_argument("--out", required=True, help="the operator's folder")
    _server_address_flag(
        init,
        required=False,
        extra="; clients refuse a server whose certificate does not name the address they dial "
        "(default: localhost, 127.0.0.1 and ::1, one machine only)",
    )
    init.set_defaults(func=run_init)

    server_cert = actions.add_parser(
        "server-cert",
        help="operator: a new server certificate under the existing CA, naming new addresses",
        description="Write DIR/server.pem and server.key again, naming every --server-address; "
        "the CA and every signed client stay valid. Restart the server to use it.",
    )
    server_cert.add_argument("--ca-dir", required=True, help="the operator's folder")
    _server_address_flag(server_cert, required=True)
    server_cert.set_defaults(func=run_server_cert)

    request = actions.add_parser(
        "request",
        help="client: make this client's private keys and the request for the operator",
        description="Write DIR/client.key and DIR/identity.key (mode 0600; keep them here) and "
        "DIR/request.json, the file to send to the operator. Put the client.pem and ca.pem the "
        "operator sends back into DIR.",
    )
    request.add_argument("--client-id", required=True, help="this client's id, e.g. c000")
    request.add_argument("--out", required=True, help="this client's own folder")
    request.set_defaults(func=run_request)

    sign = actions.add_parser(
        "sign",
        help="operator: check a client's request, issue its certificate, register its key",
        description="Check REQUEST (CSR and identity signatures), write OUT/client.pem and "
        "OUT/ca.pem (default CA_DIR/issued/<id>/) and add the identity public key to "
        "CA_DIR/registry.json. Refuses an id already registered with another key.",
    )
    sign.add_argument("--ca-dir", required=True, help="the operator's folder (`certs init`)")
    sign.add_argument("--request", required=True, help="the client's request.json")
    sign.add_argument("--out", default=None, help="where to write client.pem and ca.pem")
    sign.set_defaults(func=run_sign)

    demo = actions.add_parser(
        "demo",
        help="one machine only: init, then request + sign for N clients",
        description="Write DIR/operator/ (CA, server, registry) and DIR/clients/<id>/ (each "
        "client's keys and certificate; ids c000, c001, ...). For loopback demos: whoever "
        "runs it holds every client's keys.",
    )
    demo.add_argument("--out", required=True, help="output folder")
    demo.add_argument("--clients", type=int, required=True, help="number of clients")
    demo.add_argument("--prefix", default="c", help="client id prefix (default: c)")
    demo.set_defaults(func=run_demo)


def _server_address_flag(parser: argparse.ArgumentParser, required: bool, extra: str = "") -> None:
    parser.add_argument(
        "--server-address",
        action="append",
        required=required,
        metavar="HOST",
        help="an address clients dial (IP or host name, no port); repeat for each" + extra,
    )


def client_ids(n: int, prefix: str = "c") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def _no_action(args: argparse.Namespace) -> int:
    if args.legacy_out is not None or args.legacy_clients is not None:
        raise ConfigError(
            "`certs --out DIR --clients N` is gone: it wrote every client's private keys next "
            "to the CA key. Now " + _USAGE
        )
    raise ConfigError("choose an action. " + _USAGE)


def run_init(args: argparse.Namespace) -> int:
    from fedvpa_secure.transport.pki import LOOPBACK_ADDRESSES, init_operator

    addresses = args.server_address or list(LOOPBACK_ADDRESSES)
    files = init_operator(args.out, addresses)
    print(f"wrote the CA, the server certificate and an empty registry to {args.out}")
    print(f"the server certificate names {', '.join(addresses)}: clients must dial one of them")
    print(f"keep {files.ca_key} and {files.server_key} private; give clients {files.ca}")
    return 0


def run_server_cert(args: argparse.Namespace) -> int:
    from fedvpa_secure.transport.pki import reissue_server_certificate

    path = reissue_server_certificate(args.ca_dir, args.server_address)
    print(f"wrote {path} naming {', '.join(args.server_address)}; restart the server to use it")
    return 0


def run_request(args: argparse.Namespace) -> int:
    from fedvpa_secure.transport.pki import client_files, make_request

    request = make_request(args.client_id, args.out)
    files = client_files(args.out)
    print(f"wrote {files.key} and {files.identity} (private: they stay in {args.out})")
    print(f"send {files.request} to the operator; fingerprint {request.fingerprint()}")
    return 0


def run_sign(args: argparse.Namespace) -> int:
    from fedvpa_secure.transport.pki import client_files, operator_files, sign_request

    request, out = sign_request(args.ca_dir, args.request, args.out)
    files = client_files(out)
    print(f"signed {request.client_id!r}, fingerprint {request.fingerprint()}")
    print("  (compare it with the one the client saw, by a channel you trust)")
    print(
        f"send {files.cert}, {files.ca} and, once every client is signed, "
        f"{operator_files(args.ca_dir).registry} to the client"
    )
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from fedvpa_secure.transport.pki import make_loopback_federation

    if args.clients < 1:
        raise ConfigError(f"--clients={args.clients} is invalid: expected >= 1")
    out = Path(args.out)
    ids = client_ids(args.clients, args.prefix)
    registry = make_loopback_federation(out / "operator", {c: out / "clients" / c for c in ids})
    print(
        f"wrote the operator's folder {out / 'operator'} and {len(registry)} client folders "
        f"under {out / 'clients'}"
    )
    return 0
