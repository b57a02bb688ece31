"""``fedvpa-secure certs``: a CA, server and client certificates, identity keys and registry."""

from __future__ import annotations

import argparse

from fedvpa_secure.errors import ConfigError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "certs",
        help="make a CA, server/client certificates, Ed25519 identities and the registry",
        description="Write OUT/ca.pem, OUT/server.{pem,key}, OUT/registry.json and "
        "OUT/clients/<id>/{client.pem,client.key,identity.key,ca.pem} (ids c000, c001, ...).",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--clients", type=int, required=True, help="number of client identities")
    p.add_argument("--prefix", default="c", help="client id prefix (default: c)")
    p.set_defaults(func=run)


def client_ids(n: int, prefix: str = "c") -> list[str]:
    return [f"{prefix}{i:03d}" for i in range(n)]


def run(args: argparse.Namespace) -> int:
    from fedvpa_secure.transport.pki import make_federation

    if args.clients < 1:
        raise ConfigError(f"--clients={args.clients} is invalid: expected >= 1")
    registry = make_federation(args.out, client_ids(args.clients, args.prefix))
    print(f"wrote a CA, the server certificate and {len(registry)} clients to {args.out}")
    return 0
