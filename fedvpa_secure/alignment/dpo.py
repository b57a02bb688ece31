"""The alignment stage: DPO on a per-user or per-type preference set that ``label`` wrote.

This is the seed paper's last step (align a policy per preference type with the personalised
reward model's labels), with TRL's ``DPOTrainer`` (the ``align`` extra). On this CPU it runs a few
steps of a config-built tiny causal LM (``tiny-causal``) or of Gemma 3 270M; on a machine with a
GPU, ``--device cuda`` runs the same code on the real thing.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedvpa_secure.alignment.generate import GEMMA_270M, GENERATORS, load_causal_lm
from fedvpa_secure.atomic_json import write_json_atomic
from fedvpa_secure.errors import ConfigError, DataError
from fedvpa_secure.json_lines import read_objects
from fedvpa_secure.model.backbone import pick_device

log = logging.getLogger(__name__)

DPO_COLUMNS = ("prompt", "chosen", "rejected")
REPORT_FILE = "dpo_report.json"


@dataclass(frozen=True)
class DPOSettings:
    """One DPO run; the defaults are TRL's, with sizes that fit a CPU."""

    policy: str = GEMMA_270M
    steps: int = 20
    batch_size: int = 4
    learning_rate: float = 5e-6
    beta: float = 0.1
    max_length: int = 512
    device: str = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.policy not in GENERATORS:
            raise ConfigError(f"--policy {self.policy!r} unknown; choose one of {list(GENERATORS)}")
        if self.steps < 1 or self.batch_size < 1 or self.max_length < 8:
            raise ConfigError("--steps and --batch-size must be >= 1 and --max-length >= 8")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ConfigError(f"--learning-rate must be a number > 0, got {self.learning_rate}")
        if not (math.isfinite(self.beta) and self.beta > 0):
            raise ConfigError(f"--beta must be a number > 0, got {self.beta}")


def load_pairs(path: str | Path) -> Any:
    """``label``'s JSON lines as a ``datasets.Dataset`` with exactly the DPO columns.

    Raises:
        DataError: missing file, unreadable line, or a row without a DPO column.
    """
    path = Path(path)
    rows = []
    for number, row in read_objects(path, "; write it with `fedvpa-secure label`"):
        missing = [c for c in DPO_COLUMNS if not isinstance(row.get(c), str)]
        if missing:
            raise DataError(f"{path}:{number}: no text for {missing}; label writes {DPO_COLUMNS}")
        rows.append({c: row[c] for c in DPO_COLUMNS})
    if not rows:
        raise DataError(f"{path} holds no preference pairs")
    from datasets import Dataset

    return Dataset.from_list(rows)


def train_dpo(pairs: str | Path, out: str | Path, settings: DPOSettings) -> dict[str, Any]:
    """Train the policy by DPO on ``pairs``; save it and a report of its losses to ``out``."""
    try:
        from trl import DPOConfig, DPOTrainer
    except ImportError as err:
        raise ConfigError("DPO needs the align extra: pip install -e '.[align]'") from err
    dataset = load_pairs(pairs)
    device = pick_device(settings.device)
    model, tokenizer = load_causal_lm(settings.policy)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    out = Path(out)
    args = DPOConfig(
        output_dir=str(out),
        max_steps=settings.steps,
        per_device_train_batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        beta=settings.beta,
        max_length=settings.max_length,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=device.type == "cpu",
        seed=settings.seed,
        disable_tqdm=True,
    )
    # the frozen reference is the starting policy; TRL would reload it from a hub path otherwise
    reference = copy.deepcopy(model).eval()
    trainer = DPOTrainer(
        model=model,
        ref_model=reference,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(str(out / "policy"))
    tokenizer.save_pretrained(str(out / "policy"))
    history = [
        {
            k: v
            for k, v in row.items()
            if k in ("step", "loss", "rewards/margins", "rewards/accuracies")
        }
        for row in trainer.state.log_history
        if "loss" in row
    ]
    report = {"settings": settings.__dict__, "pairs": len(dataset), "history": history}
    write_json_atomic(out / REPORT_FILE, report)
    return report
