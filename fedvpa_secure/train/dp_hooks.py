"""Per-episode gradients of the whole model from ONE forward and ONE backward pass (hooks engine).

Episodes never interact in the forward pass: every layer of the heads sees a tensor whose first
dimension is the episode (``B``), and the backbone, in lora mode, sees the ``B * N`` texts of the
batch episode-major. So the gradient of ``sum_e loss_e`` with respect to a layer's output,
restricted to episode ``e``'s rows, is exactly the gradient of ``loss_e`` alone, and each
parameter's per-episode gradient follows from the layer's input and that output gradient:

- ``nn.Linear``: ``sum over the episode's rows of grad_out (x) input`` (Goodfellow 2015, the rule
  of Opacus' hooks), bias: ``sum of grad_out``;
- ``nn.LayerNorm``: ``sum of grad_out * x_hat`` for the weight (``x_hat`` the normalised input),
  ``sum of grad_out`` for the bias;
- the prototypes, which enter the loss outside any layer: the loss reads one detached copy of
  them per episode (a ``(B, K, d)`` leaf), whose gradient is the per-episode gradient.

The engine records each trainable layer's inputs and outputs with forward hooks, then asks
autograd for the gradient of the summed loss with respect to those outputs, the prototype copies
and the Gumbel log-weights in one call (no parameter ``.grad`` is accumulated). It is exact, not
an approximation: tests compare it with per-episode Jacobian rows and with single-episode
backward passes. Opacus' own hooks would treat every backbone text as a sample (clipping per text,
not per episode) and cannot see the prototypes, so it is written here.

For DP-SGD (:func:`clipped_sum_hooks`) a Linear weight's per-episode gradient is not even built
where its norm is cheaper from Gram matrices (the ghost norm); each episode is clipped with
Opacus' factor and the clipped sum is one matrix product. The noise and the division by the
expected batch stay Opacus' (``DPOptimizerFastGradientClipping``, the optimizer of its ghost
clipping). :func:`per_sample_hooks` builds every per-episode gradient, for tests and callers
that need them.

Why not ``torch.func.vmap`` (the ``vmap`` engine): with heads this small the cost of a step is
per-operator overhead, and vmap of ``grad`` runs a forward and backward per episode through the
functional machinery (24 ms against 9 ms for a plain step on the benchmark client); this engine
does one ordinary pass. Any other kind of trainable tensor is refused with a clear error (use
``engine="vmap"`` or ``"loop"`` for such a model).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.model.objective import LossParts, PriorContext, episode_loss
from fedvpa_secure.model.preference_model import EpisodeBatch, PreferenceModel
from fedvpa_secure.train.dp_local import PerSampleGrads, or_nan

SUPPORTED_LAYERS = (nn.Linear, nn.LayerNorm)


@dataclass
class _Call:
    """One call of a recorded layer: its input and its output (still in the autograd graph)."""

    layer: str
    inputs: torch.Tensor
    output: torch.Tensor


class _LayerRecorder:
    """Forward hooks on the trainable layers; every call's input and output, in call order."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.calls: list[_Call] = []
        self.handles = [m.register_forward_hook(self._hook(n)) for n, m in layers.items()]

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if output.requires_grad:  # a call that cannot reach the loss has no gradient
                self.calls.append(_Call(name, inputs[0].detach(), output))

        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def trainable_layers(model: nn.Module, names: Sequence[str]) -> dict[str, nn.Module]:
    """The modules that own the trainable tensors ``names`` (``prototypes`` aside).

    Raises ConfigError for a trainable tensor held by anything but ``nn.Linear`` /
    ``nn.LayerNorm``: its per-episode rule is not written here.
    """
    wanted = set(names)
    layers: dict[str, nn.Module] = {}
    covered = {"prototypes"} & wanted
    for mod_name, module in model.named_modules():
        own = [
            f"{mod_name}.{p}" if mod_name else p
            for p, t in module.named_parameters(recurse=False)
            if t.requires_grad
        ]
        own = [n for n in own if n in wanted and n != "prototypes"]
        if not own:
            continue
        if not isinstance(module, SUPPORTED_LAYERS):
            raise ConfigError(
                f"the hooks DP engine handles trainable nn.Linear and nn.LayerNorm tensors only; "
                f"{own[:3]} belong to a {type(module).__name__}: use engine='vmap' or 'loop'"
            )
        layers[mod_name] = module
        covered.update(own)
    missing = sorted(wanted - covered)
    if missing:
        raise ConfigError(f"no per-episode rule for trainable tensors {missing[:3]}")
    return layers


def _rows_per_episode(x: torch.Tensor, n_episodes: int, layer: str) -> torch.Tensor:
    """View ``x`` as (episode, rows of that episode, features): episode-major first dimension."""
    if x.dim() < 2 or x.shape[0] % n_episodes:
        raise ConfigError(
            f"layer {layer!r} was called on a tensor of shape {tuple(x.shape)} whose first "
            f"dimension is not a multiple of the {n_episodes} episodes: the hooks engine needs "
            "episode-major inputs (use engine='vmap' or 'loop')"
        )
    return x.reshape(n_episodes, -1, x.shape[-1])


class _PerEpisode:
    """A tensor's per-episode gradients, held as a ``(B, *shape)`` tensor."""

    def __init__(self, name: str, per_episode: torch.Tensor) -> None:
        self.name, self._per = name, per_episode

    def per_episode(self) -> torch.Tensor:
        return self._per

    def squared_norms(self) -> torch.Tensor:
        return self._per.reshape(self._per.shape[0], -1).pow(2).sum(1)

    def clipped_sum(self, factors: torch.Tensor) -> torch.Tensor:
        return torch.einsum("b,b...->...", factors, self._per)


class _LinearWeight:
    """A Linear weight's per-episode gradient ``sum_r g_r x_r^T`` from rows ``x`` (B, R, in) and
    output gradients ``g`` (B, R, out), never materialised unless asked for.

    Its squared norm is ``sum_{r,s} (x_r . x_s)(g_r . g_s)`` (the "ghost norm" of Li et al.
    2022, Opacus' ghost clipping) when the R x R Gram matrices are smaller than the weight, and
    the clipped sum over episodes is one ordinary matrix product of the rescaled output
    gradients with the inputs: what a plain backward pass computes, so DP adds little.
    """

    def __init__(self, name: str, x: torch.Tensor, g: torch.Tensor) -> None:
        self.name, self.x, self.g = name, x, g
        rows, d_in, d_out = x.shape[1], x.shape[2], g.shape[2]
        self.ghost = rows * rows <= d_in * d_out
        self._per: torch.Tensor | None = None

    def per_episode(self) -> torch.Tensor:
        if self._per is None:
            self._per = torch.bmm(self.g.transpose(1, 2), self.x)  # (B, out, in)
        return self._per

    def squared_norms(self) -> torch.Tensor:
        if not self.ghost:
            return self.per_episode().pow(2).sum((1, 2))
        gram_x = torch.bmm(self.x, self.x.transpose(1, 2))
        gram_g = torch.bmm(self.g, self.g.transpose(1, 2))
        return (gram_x * gram_g).sum((1, 2)).clamp(min=0.0)  # rounding can dip below 0

    def clipped_sum(self, factors: torch.Tensor) -> torch.Tensor:
        scaled = self.g * factors.view(-1, 1, 1)
        return scaled.reshape(-1, scaled.shape[-1]).T @ self.x.reshape(-1, self.x.shape[-1])


def _contributions(
    layers: dict[str, nn.Module],
    calls: list[_Call],
    output_grads: Sequence[torch.Tensor | None],
    n_episodes: int,
) -> list[_PerEpisode | _LinearWeight]:
    """Every trainable layer tensor's per-episode gradient, from all of the layer's calls.

    A layer called several times per step (the pair MLP on four text fields, the decoder on both
    responses, a LoRA adapter once per field) gets its calls' rows joined per episode first, so
    each tensor costs one batched product instead of one per call plus the sums.
    """
    rows: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
    for call, g in zip(calls, output_grads, strict=True):
        if g is None:  # this call's output did not reach the loss
            continue
        xs, gs = rows.setdefault(call.layer, ([], []))
        x = _rows_per_episode(call.inputs, n_episodes, call.layer)
        xs.append(x)
        gs.append(_rows_per_episode(g, n_episodes, call.layer).to(x.dtype))
    out: list[_PerEpisode | _LinearWeight] = []
    for layer, (xs, gs) in rows.items():
        module = layers[layer]
        x = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
        go = gs[0] if len(gs) == 1 else torch.cat(gs, dim=1)
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(module, nn.Linear):
            if weight.requires_grad:
                out.append(_LinearWeight(f"{layer}.weight", x, go))
        elif weight is not None and weight.requires_grad:  # LayerNorm: grad_out * x_hat
            if len(module.normalized_shape) != 1:
                raise ConfigError("the hooks DP engine handles LayerNorm over the last dim only")
            x_hat = F.layer_norm(x, module.normalized_shape, eps=module.eps)
            out.append(_PerEpisode(f"{layer}.weight", (go * x_hat).sum(1)))
        if bias is not None and bias.requires_grad:
            out.append(_PerEpisode(f"{layer}.bias", go.sum(1)))
    return out


@dataclass
class ClippedGradients:
    """What the fast DP step needs: the clipped per-episode gradients summed, and the norms."""

    summed: dict[str, torch.Tensor]  # name -> sum_e min(1, C / (||g_e|| + 1e-6)) g_e
    norms: torch.Tensor  # (B,) per-episode gradient norms over all trainable tensors, unclipped
    log_weights_grad: torch.Tensor | None
    parts: LossParts


def _backward_pass(
    model: PreferenceModel,
    batch: EpisodeBatch,
    cfg: ExperimentConfig,
    prior: PriorContext,
    names: Sequence[str],
    layers: dict[str, nn.Module] | None,
) -> tuple[list[_PerEpisode | _LinearWeight], torch.Tensor | None, LossParts]:
    """One forward and one backward pass: every tensor's per-episode contribution."""
    layers = trainable_layers(model, names) if layers is None else layers
    n_episodes = int(batch.query_label.shape[0])
    protos = None
    if "prototypes" in names and prior.prototypes is not None:
        protos = prior.prototypes.detach().expand(n_episodes, -1, -1).clone().requires_grad_(True)
    log_w = None
    if prior.log_weights is not None:
        log_w = prior.log_weights.detach().requires_grad_(True)
    per_episode_prior = PriorContext(
        protos if protos is not None else prior.prototypes, prior.variances, log_w
    )
    recorder = _LayerRecorder(layers)
    try:
        outputs = model(batch, sample=True)
    finally:
        recorder.remove()
    parts = episode_loss(
        outputs, batch.query_label, batch.query_mask, model.spec, cfg.objective, per_episode_prior
    )
    extra = [t for t in (protos, log_w) if t is not None]
    shared_protos = [model.prototypes] if protos is not None else []
    targets = [c.output for c in recorder.calls] + extra + shared_protos
    got = torch.autograd.grad(parts.per_episode.sum(), targets, allow_unused=True)
    if shared_protos and got[-1] is not None:
        raise ConfigError(
            "the hooks DP engine needs the prototypes to enter the loss only (through the "
            "prior); this model also uses them in its forward pass: use engine='loop'"
        )
    got = got[: len(targets) - len(shared_protos)]
    contributions = _contributions(layers, recorder.calls, got[: len(recorder.calls)], n_episodes)
    tail = dict(zip([id(t) for t in extra], got[len(recorder.calls) :], strict=True))
    if protos is not None:
        g = tail[id(protos)]
        contributions.append(
            _PerEpisode("prototypes", torch.zeros_like(protos) if g is None else g)
        )
    lw_grad = None
    if log_w is not None:
        g = tail[id(log_w)]
        lw_grad = torch.zeros_like(log_w) if g is None else g
    return contributions, lw_grad, _logged(parts)


def per_sample_hooks(
    model: PreferenceModel,
    batch: EpisodeBatch,
    cfg: ExperimentConfig,
    prior: PriorContext,
    names: Sequence[str],
    layers: dict[str, nn.Module] | None = None,
) -> PerSampleGrads:
    """Exact per-episode gradients of every trainable tensor in ``names`` (heads, prototypes and,
    in lora mode, the backbone's LoRA adapters), plus the summed gradient of the Gumbel
    log-weights that the client's local logits are trained on. ``layers``: a cached
    :func:`trainable_layers` of the model, to skip the module walk in a training loop."""
    contributions, lw_grad, parts = _backward_pass(model, batch, cfg, prior, names, layers)
    grads = {c.name: c.per_episode() for c in contributions}
    n_episodes = int(batch.query_label.shape[0])
    params = dict(model.named_parameters())
    for n in names:
        if n not in grads:  # trainable but unused by this method's loss: zero gradient
            grads[n] = params[n].new_zeros((n_episodes, *params[n].shape))
    return PerSampleGrads(grads, lw_grad, parts)


def clipped_sum_hooks(
    model: PreferenceModel,
    batch: EpisodeBatch,
    cfg: ExperimentConfig,
    prior: PriorContext,
    names: Sequence[str],
    max_grad_norm: float,
    layers: dict[str, nn.Module] | None = None,
    params: dict[str, nn.Parameter] | None = None,
) -> ClippedGradients:
    """Per-episode clipping without materialising per-episode Linear gradients.

    Each episode's gradient over all trainable tensors is clipped to ``max_grad_norm`` with
    Opacus' factor ``min(1, C / (||g_e|| + 1e-6))`` and the clipped gradients are summed: the
    input of Opacus' :class:`~opacus.optimizers.DPOptimizerFastGradientClipping`, which adds
    the noise and scales. Tensors the loss does not use get a zero sum. ``layers`` and
    ``params`` (the model's named parameters) may be passed in once per round.
    """
    contributions, lw_grad, parts = _backward_pass(model, batch, cfg, prior, names, layers)
    params = dict(model.named_parameters()) if params is None else params
    n_episodes = int(batch.query_label.shape[0])
    squared = torch.zeros(n_episodes, dtype=torch.float64)
    if contributions:  # none: the loss reached no trainable tensor (every gradient is 0)
        squared = torch.stack([c.squared_norms().double().cpu() for c in contributions]).sum(0)
    norms = squared.sqrt()
    factors = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)  # Opacus' clipping factor
    by_kind = {}
    summed = {}
    for c in contributions:
        p = params[c.name]
        key = (p.device, p.dtype)
        if key not in by_kind:
            by_kind[key] = factors.to(device=p.device, dtype=p.dtype)
        summed[c.name] = c.clipped_sum(by_kind[key])
    for n in names:
        if n not in summed:
            summed[n] = torch.zeros_like(params[n])
    return ClippedGradients(summed, norms.float(), lw_grad, parts)


def _logged(parts: LossParts) -> LossParts:
    """Detached per-episode loss terms for the step log."""
    bt = parts.bt.detach()
    return LossParts(bt, bt.new_zeros(()), bt, or_nan(parts.kl), or_nan(parts.pull))
