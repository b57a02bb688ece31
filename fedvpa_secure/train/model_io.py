"""The published global model on disk: OUT/model.safetensors.

What the server publishes after the last round is every trained tensor (LoRA adapters, pair MLP,
context encoder, decoder, prototypes) plus the mixture prior's buffers (log pi, s^2). The frozen
backbone is not part of it: it is public and rebuilt from its name. Membership inference
(``fedvpa-secure mia RUN_DIR``) attacks exactly this file, as an outside attacker would.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedvpa_secure.errors import DataError
from fedvpa_secure.model.preference_model import PreferenceModel

MODEL_FILE = "model.safetensors"
CHECKPOINT_RUN_FILE = "run.json"
"""A server round checkpoint's run config and user types: what makes the folder loadable alone."""


def published_state(model: PreferenceModel) -> dict[str, torch.Tensor]:
    """Trainable parameters and non-backbone buffers, detached, contiguous, on CPU."""
    state = {n: p for n, p in model.named_parameters() if p.requires_grad}
    state |= {n: b for n, b in model.named_buffers() if not n.startswith("backbone.")}
    return {n: t.detach().cpu().contiguous() for n, t in state.items()}


def save_global_model(model: PreferenceModel, path: str | Path) -> Path:
    """Write the published state to ``path`` (safetensors: no pickle, safe to load)."""
    from safetensors.torch import save_file

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    save_file(published_state(model), str(tmp), metadata={"format": "fedvpa-global-model"})
    tmp.replace(target)
    return target


def load_global_model(model: PreferenceModel, path: str | Path) -> PreferenceModel:
    """Load a published state into ``model`` (built from the run's config); strict on names.

    A server round checkpoint holds the whole state dict; its frozen backbone tensors (the
    public base weights the model was just built from) are the one accepted extra, and skipped.

    Raises:
        DataError: the file is missing, or its tensors do not match the model's.
    """
    from safetensors.torch import load_file

    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source} does not exist: the run did not publish its global model")
    state = load_file(str(source))
    expected = published_state(model)
    frozen = set(model.state_dict()) - set(expected)
    state = {name: tensor for name, tensor in state.items() if name not in frozen}
    if set(state) != set(expected):
        missing = sorted(set(expected) - set(state))[:5]
        extra = sorted(set(state) - set(expected))[:5]
        raise DataError(
            f"{source} does not match the run's model (missing {missing}, extra {extra})"
        )
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise DataError(
                f"{source}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(expected[name].shape)}"
            )
    with torch.no_grad():
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        for name, tensor in state.items():
            target = params.get(name, buffers.get(name))
            target.copy_(tensor.to(target.device, target.dtype))
    return model


__all__ = ["MODEL_FILE", "load_global_model", "published_state", "save_global_model"]
