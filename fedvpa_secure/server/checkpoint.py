"""Atomic per-round checkpoints and the state file that makes ``--resume`` exact.

Layout under the checkpoint folder::

    state.json                  the commit point: last complete round, next attempt, round log
    round-0003/model.safetensors    global weights (every state-dict entry)
    round-0003/prior.safetensors    the mixture prior (log_pi, prior_var, prototypes; ll_offset
                                    with the likelihood posterior)
    round-0003/optimizer.pt         server optimizer state (FedAdam moments)
    round-0003/run.json             run config and user types: RewardModel.from_pretrained loads
                                    the folder on its own
    round-0003/adapter/             peft adapter folder (lora mode only)

A round folder is written under a temporary name and renamed into place, then ``state.json`` is
replaced atomically; a crash at any point leaves the previous complete round intact. The attempt
counter is persisted *before* a round starts, so a restarted server never reuses a round id or a
model version ("<round>.<attempt>") that clients may already have contributed to.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from fedvpa_secure.atomic_json import write_json_atomic
from fedvpa_secure.errors import ConfigError

STATE_FILE = "state.json"
PRIOR_KEYS = ("log_pi", "prior_var", "prototypes", "ll_offset")


@dataclass
class RunState:
    """What survives a restart besides the weights."""

    completed_rounds: int = 0
    next_attempt: int = 0
    latest: str | None = None
    model_hash: str | None = None
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class CheckpointStore:
    """Reads and writes one run's checkpoints."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def load_state(self) -> RunState:
        path = self.root / STATE_FILE
        if not path.exists():
            return RunState()
        try:
            return RunState(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as err:
            raise ConfigError(f"checkpoint state {str(path)!r} is unreadable: {err}") from err

    def save_state(self, state: RunState) -> None:
        write_json_atomic(self.root / STATE_FILE, state.to_dict())

    def save_round(
        self,
        round_index: int,
        weights: dict[str, np.ndarray],
        write_extra: Any = None,
    ) -> str:
        """Write ``round-XXXX/`` atomically; ``write_extra(folder)`` adds optimizer/adapter."""
        name = f"round-{round_index:04d}"
        final = self.root / name
        tmp = Path(tempfile.mkdtemp(dir=self.root, prefix=f".{name}."))
        try:
            arrays = {k: np.ascontiguousarray(v) for k, v in weights.items()}
            save_file(arrays, str(tmp / "model.safetensors"), metadata={"round": str(round_index)})
            prior = {k: arrays[k] for k in PRIOR_KEYS if k in arrays}
            if prior:
                save_file(prior, str(tmp / "prior.safetensors"))
            if write_extra is not None:
                write_extra(tmp)
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return name

    def load_weights(self, name: str) -> dict[str, np.ndarray]:
        path = self.root / name / "model.safetensors"
        try:
            return load_file(str(path))
        except (OSError, ValueError) as err:
            raise ConfigError(f"checkpoint {str(path)!r} is unreadable: {err}") from err
