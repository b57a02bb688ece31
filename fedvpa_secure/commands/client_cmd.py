"""``fedvpa-secure client --server HOST:PORT --client-id ID --config client.toml``."""

from __future__ import annotations

import argparse

from fedvpa_secure.commands.argtypes import positive_float


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "client",
        help="run one federation client (its own data, certificate and budget)",
        description="Connect with mTLS, train on this client's shard each round it is sampled "
        "for, and send only masked updates.",
    )
    p.add_argument("--server", default=None, help="HOST:PORT (required unless --check)")
    p.add_argument("--client-id", default=None, help="this client's id (required unless --check)")
    p.add_argument("--config", required=True, help="client.toml")
    p.add_argument(
        "--check",
        action="store_true",
        help="validate client.toml and the files it names, print the privacy policy, exit",
    )
    p.add_argument(
        "--data",
        default=None,
        help="this client's data: a shard folder (shard.json, as simulate writes) or an HH-RLHF "
        "folder (<subset>/*.jsonl.gz) with --user-type (default: regenerate the shard by index)",
    )
    p.add_argument(
        "--user-type",
        default=None,
        help="with an HH-RLHF --data folder: which user type of the run's protocol this client "
        "is (e.g. helpful-first); its pairs are labelled as that type labels them",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    p.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=60.0,
        help="seconds to keep trying the first connection (later drops are retried for the "
        "config's reconnect_s)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fedvpa_secure.client.settings import load_client_settings
    from fedvpa_secure.errors import ConfigError

    settings = load_client_settings(args.config)
    if args.check:
        return check(settings)
    if not args.server or not args.client_id:
        raise ConfigError("--server HOST:PORT and --client-id ID are required (unless --check)")
    import grpc

    from fedvpa_secure.client.runtime import FederatedClient
    from fedvpa_secure.errors import ProtocolError

    client = FederatedClient(
        args.server,
        args.client_id,
        settings,
        data_dir=args.data,
        user_type=args.user_type,
        device=args.device,
        connect_timeout_s=args.connect_timeout,
    )
    try:
        return client.run()
    except grpc.RpcError as err:  # the server refused us or went away for good
        hint = ""
        if err.code() is grpc.StatusCode.UNAVAILABLE:
            hint = " (gave up retrying: is the server running, and reachable at that address?)"
        raise ProtocolError(
            f"server {args.server}: {err.code().name}: {err.details()}{hint}"
        ) from err
    finally:
        client.close()


def check(settings) -> int:
    """Print the policy this client would enforce; 0 when every file it names exists, else 1."""
    from fedvpa_secure.commands.config_check import report_files

    print("client config is valid; its privacy policy:")
    for line in settings.policy.describe():
        print(f"  {line}")
    files = {
        "registry": settings.registry,
        "tls.cert": settings.cert,
        "tls.key": settings.key,
        "tls.ca": settings.ca,
        "tls.identity": settings.identity,
    }
    return report_files(files)
