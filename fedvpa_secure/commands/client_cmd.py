"""``fedvpa-secure client --server HOST:PORT --client-id ID --config client.toml``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "client",
        help="run one federation client (its own data, certificate and budget)",
        description="Connect with mTLS, train on this client's shard each round it is sampled "
        "for, and send only masked updates.",
    )
    p.add_argument("--server", required=True, help="HOST:PORT")
    p.add_argument("--client-id", required=True)
    p.add_argument("--config", required=True, help="client.toml")
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import grpc

    from fedvpa_secure.client.runtime import FederatedClient
    from fedvpa_secure.client.settings import load_client_settings
    from fedvpa_secure.errors import ProtocolError

    client = FederatedClient(
        args.server,
        args.client_id,
        load_client_settings(args.config),
        data_dir=args.data,
        user_type=args.user_type,
        device=args.device,
    )
    try:
        return client.run()
    except grpc.RpcError as err:  # the server refused us or went away for good
        raise ProtocolError(f"server {args.server}: {err.code().name}: {err.details()}") from err
    finally:
        client.close()
