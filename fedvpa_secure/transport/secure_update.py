"""The learner's :data:`Update` <-> what secure aggregation masks, and SecAggConfig on the wire.

An update is ``delta/*`` tensors (float32), the prior statistics ``prior/*`` (n, v and the
moments; float64 1-D, masked as extra vectors) and ``weight`` (masked as the layout's weight
coordinate, capped, never in the clear). Client and server build the layout from the same
spec, so its digest (checked by the protocol) matches exactly when both run the same model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedvpa_secure.errors import ProtocolError
from fedvpa_secure.secagg import AggregateResult, Layout, SecAggConfig
from fedvpa_secure.train.aggregation import MAX_CLIENT_WEIGHT, WEIGHT, Update

DELTA_GROUP = "delta/"
PRIOR_GROUP = "prior/"


def is_extra(name: str) -> bool:
    """Prior statistics travel as extra vectors (their own quantisation group)."""
    return name.startswith(PRIOR_GROUP)


def split_update(update: Update) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """(tensors, extras, weight) as the secagg client takes them."""
    if WEIGHT not in update:
        raise ProtocolError("update has no weight")
    tensors = {k: np.asarray(v, np.float32) for k, v in update.items() if k.startswith(DELTA_GROUP)}
    extras = {k: np.asarray(v, np.float64).reshape(-1) for k, v in update.items() if is_extra(k)}
    return tensors, extras, float(np.asarray(update[WEIGHT]).reshape(-1)[0])


def join_result(result: AggregateResult, extras_shapes: Mapping[str, tuple[int, ...]]) -> Update:
    """The decoded sum as the learner's sums (what :func:`apply_sums` takes)."""
    sums: Update = {k: np.asarray(v, np.float64) for k, v in result.tensors.items()}
    for k, v in result.extras.items():
        sums[k] = np.asarray(v, np.float64).reshape(extras_shapes.get(k, v.shape))
    sums[WEIGHT] = np.array([float(result.weight)])
    return sums


def secagg_config(
    n_clients: int,
    *,
    threshold: int,
    min_clients: int,
    hardened: bool,
    delta_clip: float,
    prior_clip: float,
    stage_deadline_s: float,
) -> SecAggConfig:
    """The round's configuration (threshold 0: the library default)."""
    return SecAggConfig(
        n_clients=n_clients,
        threshold=threshold or None,
        min_clients=min_clients,
        hardened=hardened,
        clip={"": delta_clip, PRIOR_GROUP: prior_clip},
        weight_cap=MAX_CLIENT_WEIGHT,
        stage_deadline_s=stage_deadline_s,
    )


def config_to_json(config: SecAggConfig) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


def config_from_json(text: str) -> SecAggConfig:
    """Rebuild a config sent by the server (the protocol checks its digest)."""
    try:
        data: dict[str, Any] = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not an object")
        return SecAggConfig(**data)
    except (ValueError, TypeError) as err:
        raise ProtocolError(f"bad secure-aggregation config from the server: {err}") from err


def layout_for(spec: Mapping[str, tuple[tuple[int, ...], str]], config: SecAggConfig) -> Layout:
    """Layout from an update spec (name -> (shape, dtype)); the same on client and server."""
    tensors = {
        k: (tuple(shape), "<f4") for k, (shape, _dtype) in spec.items() if k.startswith(DELTA_GROUP)
    }
    extras = {
        k: int(np.prod(shape, dtype=np.int64)) for k, (shape, _dtype) in spec.items() if is_extra(k)
    }
    return Layout.build(tensors, config, extras=extras or None)
