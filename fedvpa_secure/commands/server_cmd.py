"""``fedvpa-secure server --config server.toml [--resume]``: run the federation server."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "server",
        help="run the federation server (mTLS gRPC, secure aggregation, checkpoints)",
        description="Drive the rounds configured in server.toml and write the report, ledger "
        "and checkpoints under its run_dir.",
    )
    p.add_argument("--config", required=True, help="server.toml")
    p.add_argument("--resume", action="store_true", help="continue from the last complete round")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedvpa_secure.server.serve import serve
    from fedvpa_secure.server.settings import load_server_settings

    return serve(load_server_settings(args.config), resume=args.resume)
