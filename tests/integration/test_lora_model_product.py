"""A LoRA federation's model as a product: simulate --mode lora, load, score, save, reload.

The saved ``adapter/`` is a standard peft folder: peft alone puts it on a fresh copy of the
public backbone and reproduces the trained embeddings exactly; the control (the same backbone
without the adapter) differs, so the check would fail if the adapter were not the trained one.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from .fedkit import CLI, ENV, TINY

pytestmark = pytest.mark.integration

TEXT = "Human: hi\n\nAssistant: Hello there."


def test_a_lora_run_publishes_a_model_with_a_peft_adapter(tmp_path: Path) -> None:
    from peft import PeftModel

    from fedvpa_secure import RewardModel
    from fedvpa_secure.model.backbone import Backbone

    out = tmp_path / "RUN"
    args = ["--clients", "3", "--rounds", "1", "--out", str(out), *TINY, "--mode", "lora"]
    args += ["--cache-dir", str(tmp_path / "cache"), "--dp-epsilon", "0", "--user-dp-epsilon", "0"]
    rc = subprocess.run(
        [*CLI, "simulate", *args], env=ENV, timeout=300, capture_output=True, text=True
    )
    assert rc.returncode == 0, rc.stderr[-3000:]
    model = RewardModel.from_pretrained(out, device="cpu")
    assert model.config.model.mode == "lora"
    scores = model.score(["Human: hi"], ["Hello there."], prototype=0)
    saved = model.save_pretrained(tmp_path / "published")
    assert (saved / "adapter" / "adapter_config.json").is_file()
    again = RewardModel.from_pretrained(saved, device="cpu")
    np.testing.assert_allclose(again.score(["Human: hi"], ["Hello there."], prototype=0), scores)
    # the server's round checkpoint (whole state dict, frozen base weights included) is the same
    # model, and its adapter/ is a peft folder too
    round_dir = out / "checkpoints" / "round-0001"
    checkpoint = RewardModel.from_pretrained(round_dir, device="cpu")
    np.testing.assert_allclose(
        checkpoint.score(["Human: hi"], ["Hello there."], prototype=0), scores, rtol=1e-6
    )
    assert (round_dir / "adapter" / "adapter_config.json").is_file()

    def embedding(backbone: Backbone) -> torch.Tensor:
        with torch.no_grad():
            return backbone.embed([TEXT]).float()

    trained = embedding(model.embedder)
    base = Backbone(model.config.model.backbone, model.config.model.max_length)
    untouched = embedding(base)
    base.model = PeftModel.from_pretrained(base.model, str(saved / "adapter"))
    torch.testing.assert_close(embedding(base), trained)
    assert float((untouched - trained).abs().max()) > 1e-5  # control: the adapter matters
