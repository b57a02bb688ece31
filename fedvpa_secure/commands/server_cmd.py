"""``fedvpa-secure server --config server.toml [--resume | --check]``: run the federation server."""

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
    p.add_argument(
        "--check",
        action="store_true",
        help="validate server.toml and the files it names, print the settings, exit (0: ready)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedvpa_secure.server.settings import load_server_settings

    settings = load_server_settings(args.config)
    if args.check:
        return check(settings)
    from fedvpa_secure.server.serve import serve

    return serve(settings, resume=args.resume)


def check(settings) -> int:
    """Print what the server would run; 0 when every file it names exists, else 1."""
    from fedvpa_secure.commands.config_check import report_files

    r, dp = settings.rounds, settings.dp
    print("server config is valid:")
    print(f"  {r.rounds} rounds of {r.clients_per_round} clients, min survivors {r.min_survivors}")
    print(f"  secure aggregation: {r.secure}, hardened: {r.hardened}")
    if not dp.user_level:
        level = "off"
    elif dp.target_epsilon is not None:
        level = (
            f"target epsilon {dp.target_epsilon:g}, clip {dp.clip_norm:g}, t_min {dp.min_survivors}"
        )
    else:
        level = f"noise multiplier {dp.noise_multiplier:g}, clip {dp.clip_norm:g}"
    record = settings.experiment.dp
    print(f"  user-level DP: {level}")
    record_level = "off" if record is None else f"target epsilon {record.target_epsilon:g}"
    print(f"  record-level DP-SGD: {record_level}")
    print(f"  method {settings.experiment.method}")
    files = {
        "registry": settings.registry,
        "tls.cert": settings.tls.cert,
        "tls.key": settings.tls.key,
        "tls.ca": settings.tls.ca,
    }
    return report_files(files)
