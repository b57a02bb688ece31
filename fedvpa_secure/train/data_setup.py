"""From CLI flags to :class:`FederatedData`: resolve the source, pick the protocol, partition."""

from __future__ import annotations

from fedvpa_secure.config import DataConfig, protocol_defaults
from fedvpa_secure.data import (
    SYNTHETIC,
    build_federated_data,
    load_folder,
    protocol_user_types,
    resolve_source,
)
from fedvpa_secure.data.types import FederatedData
from fedvpa_secure.errors import ConfigError


def resolve_protocol(requested: str, source: object) -> str:
    """``auto`` means p3 on HH-RLHF data and synthetic when no HH-RLHF data was found."""
    if requested != "auto":
        if requested != "synthetic" and source is SYNTHETIC:
            raise ConfigError(
                f"--protocol {requested} needs HH-RLHF data but none was found: pass --data DIR "
                "or set HH_RLHF_DIR (e.g. to ../shared/data/hh-rlhf)"
            )
        return requested
    return "synthetic" if source is SYNTHETIC else "p3"


def load_federated_data(
    data_flag: str | None,
    protocol_flag: str,
    data_cfg_kwargs: dict,
    seed: int,
) -> tuple[FederatedData, DataConfig]:
    """Resolve and load the data, then split it into training and unseen evaluation users."""
    if protocol_flag == "synthetic" and not data_flag:
        # the synthetic protocol reads no files: HH_RLHF_DIR or the hub must not be consulted
        data_flag = "synthetic"
    source, _description = resolve_source(
        data_flag, max_pairs_per_subset=data_cfg_kwargs.get("max_pairs_per_subset")
    )
    protocol = resolve_protocol(protocol_flag, source)
    # fields the caller left out take the protocol's measured defaults (config.PROTOCOL_DEFAULTS)
    kwargs = {**protocol_defaults(protocol, "data"), **data_cfg_kwargs}
    data_cfg = DataConfig(protocol=protocol, data_dir=data_flag, **kwargs)
    types = protocol_user_types(protocol)
    if len(data_cfg.type_mix) != len(types):
        raise ConfigError(
            f"--type-mix has {len(data_cfg.type_mix)} fractions but protocol {protocol} has "
            f"{len(types)} user types {types}: give one fraction per type, in that order"
        )
    eval_raw = None
    if data_cfg.eval_data_dir:
        if protocol == "synthetic":
            raise ConfigError("--eval-data is for HH-RLHF protocols; synthetic users are generated")
        eval_raw = load_folder(
            data_cfg.eval_data_dir, max_pairs_per_subset=data_cfg.max_pairs_per_subset
        )
    fed = build_federated_data(
        protocol,
        source,
        n_clients=data_cfg.n_clients,
        pairs_per_client=data_cfg.pairs_per_client,
        n_eval_clients=data_cfg.n_eval_clients,
        eval_pairs_per_client=data_cfg.eval_pairs_per_client,
        type_mix=dict(zip(types, data_cfg.type_mix, strict=True)),
        seed=seed,
        eval_raw_pairs=eval_raw,
    )
    fed = FederatedData(
        protocol=fed.protocol,
        user_types=fed.user_types,
        train_clients=fed.train_clients,
        eval_clients=fed.eval_clients,
        description=fed.description,
    )
    return fed, data_cfg
