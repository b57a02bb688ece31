"""Per-episode gradients when the backbone runs inside the step (lora mode), in one pass.

An episode's loss reads ``N`` texts through the backbone, and the backbone treats each text
independently, so the episode's gradient for a backbone adapter is the sum of its texts'
contributions. This engine:

1. runs the backbone once on all ``B * N`` texts, recording each trainable Linear layer's inputs
   and (through tensor hooks) its output gradients;
2. computes the head's per-episode gradients, and each episode's gradient with respect to its
   own text embeddings, with ``torch.func.vmap`` on the embeddings (the frozen-mode engine);
3. back-propagates those per-episode embedding gradients through the backbone once and forms
   each adapter's per-episode gradient as ``sum over the episode's texts and tokens of
   grad_output (x) input`` (the Linear-layer rule of Goodfellow 2015 and Opacus' hooks, summed
   per episode instead of per text).

Opacus' own hooks would treat every text as a sample (clipping per text, not per episode). This
is exact for adapters that are ``nn.Linear`` layers (peft LoRA A and B, bias-free or not); any
other trainable backbone tensor is refused with a clear error (use the ``loop`` engine then).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.model.objective import PriorContext
from fedvpa_secure.model.preference_model import EpisodeBatch, PreferenceModel
from fedvpa_secure.train.dp_local import PerSampleGrads, per_sample_vmap

TEXT_FIELDS = ("ctx_chosen", "ctx_rejected", "query_a", "query_b")


class _LinearRecorder:
    """Records inputs and output gradients of trainable Linear layers, call by call."""

    def __init__(self, layers: dict[str, nn.Linear]) -> None:
        self.layers = layers
        self.calls: dict[str, list[list[torch.Tensor | None]]] = {n: [] for n in layers}
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in layers.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            record: list[torch.Tensor | None] = [inputs[0].detach(), None]
            self.calls[name].append(record)
            if output.requires_grad:

                def keep(grad: torch.Tensor, record=record) -> None:
                    record[1] = grad.detach()

                output.register_hook(keep)

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _trainable_linears(model: PreferenceModel, names: Sequence[str]) -> dict[str, nn.Linear]:
    layers: dict[str, nn.Linear] = {}
    covered: set[str] = set()
    wanted = set(names)
    for mod_name, module in model.named_modules():
        if not mod_name.startswith("backbone.") or not isinstance(module, nn.Linear):
            continue
        own = [f"{mod_name}.{p}" for p, t in module.named_parameters(recurse=False)]
        if any(n in wanted for n in own):
            layers[mod_name] = module
            covered.update(own)
    missing = [n for n in wanted if n.startswith("backbone.") and n not in covered]
    if missing:
        raise ConfigError(
            f"the hooks DP engine handles trainable nn.Linear adapters only; {missing[:3]} are "
            "not: use engine='loop'"
        )
    return layers


def per_sample_hooks(
    model: PreferenceModel,
    batch: EpisodeBatch,
    cfg: ExperimentConfig,
    prior: PriorContext,
    names: Sequence[str],
) -> PerSampleGrads:
    """Exact per-episode gradients of every trainable tensor (head and backbone adapters)."""
    if model.backbone is None or batch.token_ids is None:
        return per_sample_vmap(model, batch, cfg, prior, names)
    layers = _trainable_linears(model, names)
    recorder = _LinearRecorder(layers)
    try:
        embeddings = {}
        for field in TEXT_FIELDS:
            ids, att = batch.token_ids[field], batch.token_att[field]
            b, n, t = ids.shape
            e = model.backbone(ids.reshape(b * n, t), att.reshape(b * n, t))
            embeddings[field] = e.reshape(b, n, -1)
        emb_batch = EpisodeBatch(
            **{
                **{k: getattr(batch, k) for k in EpisodeBatch.__dataclass_fields__},
                **{k: v.detach() for k, v in embeddings.items()},
                "token_ids": None,
                "token_att": None,
            }
        )
        head_names = [n for n in names if not n.startswith("backbone.")]
        head = per_sample_vmap(model, emb_batch, cfg, prior, head_names, TEXT_FIELDS)
        input_grads = head.input_grads or {}
        torch.autograd.backward(
            [embeddings[f] for f in TEXT_FIELDS], [input_grads[f] for f in TEXT_FIELDS]
        )
    finally:
        recorder.remove()
    grads = dict(head.grads)
    n_episodes = int(batch.query_label.shape[0])
    for mod_name, module in layers.items():
        w = torch.zeros((n_episodes, *module.weight.shape), dtype=module.weight.dtype)
        bias = None
        if module.bias is not None and module.bias.requires_grad:
            bias = torch.zeros((n_episodes, *module.bias.shape), dtype=module.bias.dtype)
        for act, g in recorder.calls[mod_name]:
            if g is None:  # this call's output did not reach the loss
                continue
            a = act.reshape(n_episodes, -1, act.shape[-1]).to(w.dtype)  # texts x tokens
            go = g.reshape(n_episodes, -1, g.shape[-1]).to(w.dtype)
            w += torch.einsum("bto,bti->boi", go, a).to(w.device)
            if bias is not None:
                bias += go.sum(1).to(bias.device)
        if module.weight.requires_grad:
            grads[f"{mod_name}.weight"] = w.to(module.weight.device)
        if bias is not None:
            grads[f"{mod_name}.bias"] = bias.to(module.bias.device)
    params = dict(model.named_parameters())
    for n in names:
        if n.startswith("backbone."):
            if n not in grads:
                raise ConfigError(f"no per-episode gradient was formed for {n}")
            params[n].grad = None  # the backward above also filled .grad; DPOptimizer sets it
    return PerSampleGrads(grads, head.log_weights_grad, head.parts)
