"""Choosing where the pairs come from: --data flag, HH_RLHF_DIR, the hub, or synthetic data.

The order is fixed and the choice is always described in words, because a run that silently
fell back to synthetic data would report numbers that mean nothing about HH-RLHF.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from fedvpa_secure.data.hh_rlhf import HUB_ID, RawDataset, load_folder, load_hub
from fedvpa_secure.errors import DataError

logger = logging.getLogger(__name__)

ENV_VAR = "HH_RLHF_DIR"
HUB_PREFIX = "hub:"
SYNTHETIC_NAME = "synthetic"
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class SyntheticSource:
    """Marker: use the generated two-persona set (see :mod:`fedvpa_secure.data.synthetic`)."""

    def __str__(self) -> str:
        return SYNTHETIC_NAME


SYNTHETIC = SyntheticSource()
Source = RawDataset | SyntheticSource


def resolve_source(
    data_flag: str | None,
    *,
    env: Mapping[str, str] | None = None,
    try_hub: bool = True,
    subsets: Sequence[str] | None = None,
    max_pairs_per_subset: int | None = None,
) -> tuple[Source, str]:
    """Pick and load the data source, and say which one it is.

    Order: the ``--data`` flag; else the ``HH_RLHF_DIR`` environment variable; else the
    ``datasets`` hub (``Anthropic/hh-rlhf``); else the synthetic set. A source named
    explicitly (flag or variable) must work: its errors are raised, never papered over. Only
    the implicit hub step falls back, and the description says why.

    Args:
        data_flag: the ``--data`` value: a folder, ``"synthetic"``, ``"hub"``, ``"hub:<id>"``
            or the hub id ``Anthropic/hh-rlhf`` itself (when no such local folder exists).
        env: environment to read (default ``os.environ``); a test seam.
        try_hub: whether the implicit hub step runs at all (False: go straight to synthetic).
        subsets: subsets to load (default: all known ones present).
        max_pairs_per_subset: keep the first N pairs per subset (fast tests and CI).

    Returns:
        (the loaded :class:`RawDataset` or :data:`SYNTHETIC`, a one-line description).

    Raises:
        DataError: the flag's or the variable's source cannot be read.
    """
    env = os.environ if env is None else env
    load_kwargs = {"max_pairs_per_subset": max_pairs_per_subset}
    if data_flag is not None and data_flag.strip():
        return _from_flag(data_flag.strip(), subsets, load_kwargs)
    folder = env.get(ENV_VAR, "").strip()
    if folder:
        data = load_folder(folder, subsets=subsets, **load_kwargs)
        return data, f"{data.description} (from ${ENV_VAR})"
    if try_hub:
        reason = _hub_unavailable_reason(env)
        if reason is None:
            try:
                data = _load_hub(HUB_ID, subsets, load_kwargs)
                return data, data.description
            except DataError as exc:
                reason = str(exc)
        logger.warning("HH-RLHF hub not used (%s); falling back to synthetic data", reason)
        return SYNTHETIC, f"synthetic two-persona set (no --data, no ${ENV_VAR}; hub: {reason})"
    return SYNTHETIC, f"synthetic two-persona set (no --data, no ${ENV_VAR}; hub not tried)"


def _from_flag(flag: str, subsets: Sequence[str] | None, load_kwargs: dict) -> tuple[Source, str]:
    if flag.lower() == SYNTHETIC_NAME:
        return SYNTHETIC, "synthetic two-persona set (--data synthetic)"
    hub_id = None
    if flag == "hub":
        hub_id = HUB_ID
    elif flag.startswith(HUB_PREFIX):
        hub_id = flag[len(HUB_PREFIX) :] or HUB_ID
    elif flag == HUB_ID and not Path(flag).exists():
        hub_id = HUB_ID
    if hub_id is not None:
        data = _load_hub(hub_id, subsets, load_kwargs)
        return data, data.description
    data = load_folder(flag, subsets=subsets, **load_kwargs)
    return data, data.description


def _load_hub(hub_id: str, subsets: Sequence[str] | None, load_kwargs: dict) -> RawDataset:
    if subsets is None:
        return load_hub(hub_id, **load_kwargs)
    return load_hub(hub_id, subsets=subsets, **load_kwargs)


def _hub_unavailable_reason(env: Mapping[str, str]) -> str | None:
    """Why the implicit hub step is pointless, or None when it is worth trying.

    datasets retries an unreachable hub for ~20 s; a quick connect probe avoids that wait on
    offline machines. With HF_HUB_OFFLINE set, datasets answers from its cache (or fails at
    once), so the step is always tried.
    """
    if env.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return None
    host = urlparse(env.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=HUB_PROBE_TIMEOUT_S):
            return None
    except OSError as exc:
        return f"{host} unreachable ({exc})"
