"""Record-level DP-SGD for one client's local training (PRIVACY.md section 1).

The Opacus sample is the EPISODE. Every step draws a fresh, data-independent partition of the
client's pairs into disjoint episodes (:func:`~fedvpa_secure.train.local.sample_episodes`), so each
pair is in exactly one episode and can change exactly one per-sample gradient. Episodes are then
Poisson-sampled with rate ``q`` (the subsampled Gaussian mechanism of Abadi et al. 2016 as
accounted by Mironov, Talwar, Zhang 2019), each episode's gradient of BT + beta KL + lambda pull
is clipped to ``max_grad_norm`` and Gaussian noise of std ``z * max_grad_norm`` is added by Opacus'
:class:`~opacus.optimizers.DPOptimizer`.

Why DPOptimizer with our own per-sample gradients instead of ``PrivacyEngine`` /
``GradSampleModule``: Opacus' grad samplers attach to leaf layers and assume the layer's
activations are batch-first in the Opacus sample. Here the prototypes enter the loss outside any
layer, and in lora mode the backbone sees ``B * N`` texts for ``B`` episodes, so a per-layer
sampler would clip per text, not per episode. We compute exact per-episode gradients of the
whole loss and let Opacus noise and scale them. The default engine (``hooks``,
:mod:`fedvpa_secure.train.dp_hooks`; frozen and lora mode alike) takes one forward and one
backward pass, clips each episode with Opacus' factor ``min(1, C / (||g_e|| + 1e-6))`` from
exact per-episode norms, and hands the clipped sum to Opacus'
``DPOptimizerFastGradientClipping`` (the optimizer Opacus pairs with ghost clipping), which adds
the noise and divides by the expected batch. The ``vmap`` (frozen mode) and ``loop`` (any model)
engines materialise per-episode gradients and let Opacus' ``DPOptimizer`` clip them too: two
independent implementations that the tests hold the default to. Accounting is ours
(:mod:`privacy`), ledger-backed, so a new optimiser
per round never resets epsilon.

Data-independent and local terms: the orthogonality penalty depends only on the prototypes, so
its gradient is added after the noisy step (post-processing). The Gumbel logits alpha are NOT
learnt under DP-SGD: trained on the noise-free batch gradient they would carry every episode's
data into every later step's prior, so one pair would move all clipped gradients at once and the
per-episode sensitivity would no longer hold. Each round starts them from the global (public)
mixture weights ``log_pi`` and keeps them there.

Learning rate (issue 4): one step adds noise of std ``lr * z * C / B`` to every coordinate. With
few episodes per client (B = 2 on the default synthetic clients) and a large z at low epsilon,
the plain learning rate makes that far larger than the weights and training diverged to NaN.
:func:`cap_learning_rates` lowers the DP learning rate to keep it below
``DPConfig.max_noise_step`` (public quantities only), and :func:`check_finite` stops training
with :class:`DPDivergedError` rather than releasing non-finite weights.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
from torch.func import functional_call, grad, vmap

from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.errors import ConfigError, FedVPAError
from fedvpa_secure.model.objective import LossParts, PriorContext, episode_loss
from fedvpa_secure.model.preference_model import EpisodeBatch, PreferenceModel
from fedvpa_secure.model.prior import orthogonality_gradient
from fedvpa_secure.train.dp_config import DPConfig
from fedvpa_secure.train.local import (
    ClientState,
    LocalResult,
    StepLog,
    local_optimizer,
    prior_context,
    sample_episodes,
)
from fedvpa_secure.train.secret_noise import secret_numpy_rng, secret_torch_generator
from fedvpa_secure.train.tensors import ClientTensors, make_batch

_FIELDS = tuple(EpisodeBatch.__dataclass_fields__)


def episode_sizes(n_pairs: int, context_size: int, query_size: int) -> tuple[int, int, int]:
    """(context, query, number of episodes) of one partition, as ``sample_episodes`` cuts it.

    Depends only on the client's pair count (public, as the dataset size in DP-SGD) and the
    configuration, never on the data.
    """
    k = min(context_size, max(1, n_pairs - 1))
    q = min(query_size, n_pairs - k)
    return k, q, n_pairs // (k + q)


def sample_rate(clients: Sequence[ClientTensors], cfg: ExperimentConfig) -> float:
    """Poisson rate ``q`` so that the expected batch is ``episodes_per_step`` episodes."""
    n_episodes = sum(
        episode_sizes(c.n_pairs, cfg.train.context_size, cfg.train.query_size)[2] for c in clients
    )
    if n_episodes < 1:
        raise ConfigError("a DP client needs at least one full episode of pairs")
    return min(1.0, cfg.train.episodes_per_step / n_episodes)


def _slice(batch: EpisodeBatch, index: int) -> EpisodeBatch:
    def cut(x):
        if x is None:
            return None
        if isinstance(x, dict):
            return {k: v[index : index + 1] for k, v in x.items()}
        return x[index : index + 1]

    return EpisodeBatch(**{k: cut(getattr(batch, k)) for k in _FIELDS})


def _loss_parts(
    model: PreferenceModel, batch: EpisodeBatch, cfg: ExperimentConfig, prior: PriorContext
) -> LossParts:
    outputs = model(batch, sample=True)
    return episode_loss(
        outputs, batch.query_label, batch.query_mask, model.spec, cfg.objective, prior
    )


@dataclass
class PerSampleGrads:
    """Per-episode gradients of the data-dependent loss, and what the local logits need."""

    grads: dict[str, torch.Tensor]  # name -> (B, *param.shape)
    log_weights_grad: torch.Tensor | None  # d sum_e loss_e / d log w (K,)
    parts: LossParts | None


def per_sample_vmap(
    model: PreferenceModel,
    batch: EpisodeBatch,
    cfg: ExperimentConfig,
    prior: PriorContext,
    names: Sequence[str],
) -> PerSampleGrads:
    """Exact per-episode gradients with ``torch.func.vmap(grad(...))`` over the episode dim.

    Each episode is presented to the model as a batch of one, so modules see the same shapes as
    in plain training; random draws use ``randomness="different"`` (independent per episode).
    Frozen mode only (the backbone's Hugging Face code does not trace under vmap); kept as an
    independent cross-check of the default hooks engine.
    """
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in names}
    buffers = dict(model.named_buffers())
    log_w = None if prior.log_weights is None else prior.log_weights.detach()
    present = {k: getattr(batch, k) for k in _FIELDS if getattr(batch, k) is not None}

    def one(p: dict, lw: torch.Tensor | None, sample: dict) -> tuple[torch.Tensor, tuple]:
        def up(x):
            if isinstance(x, dict):
                return {k: v.unsqueeze(0) for k, v in x.items()}
            return x.unsqueeze(0)

        eb = EpisodeBatch(**{k: up(sample[k]) if k in sample else None for k in _FIELDS})
        out = functional_call(model, ({**p, **frozen}, buffers), (eb,), {"sample": True})
        pr = PriorContext(
            p.get("prototypes", frozen.get("prototypes")) if prior.prototypes is not None else None,
            prior.variances,
            lw,
        )
        parts = episode_loss(out, eb.query_label, eb.query_mask, model.spec, cfg.objective, pr)
        loss = parts.per_episode.sum()
        aux = (parts.bt.detach(), or_nan(parts.kl), or_nan(parts.pull))
        return loss, aux

    argnums = (0, *((1,) if log_w is not None else ()))
    fn = grad(one, argnums=argnums, has_aux=True)
    grads, aux = vmap(fn, in_dims=(None, None, 0), randomness="different")(params, log_w, present)
    by_arg = dict(zip(argnums, grads, strict=True))
    g_params = by_arg[0]
    lw_grad = by_arg[1].sum(0) if 1 in by_arg else None
    bt, kl, pull = (a.reshape(-1) for a in aux)
    parts = LossParts(
        per_episode=bt, ortho=bt.new_zeros(()), bt=bt, kl=kl, pull=pull
    )  # logging only
    return PerSampleGrads(dict(g_params), lw_grad, parts)


def or_nan(x: torch.Tensor | None) -> torch.Tensor:
    """A detached loss term for the step log; NaN where the method has no such term."""
    if x is None:
        return torch.full((1,), float("nan"))
    return x.detach()


def per_sample_loop(
    model: PreferenceModel,
    batch: EpisodeBatch,
    cfg: ExperimentConfig,
    prior: PriorContext,
    names: Sequence[str],
) -> PerSampleGrads:
    """Exact per-episode gradients with one forward/backward pass per episode.

    Works for any model (a backbone called on many texts per episode, data-dependent control
    flow in Hugging Face masking code), at the cost of ``B`` smaller passes instead of one.
    """
    params = dict(model.named_parameters())
    wanted = [params[n] for n in names]
    lw = None if prior.log_weights is None else prior.log_weights.detach().requires_grad_(True)
    pr = PriorContext(prior.prototypes, prior.variances, lw)
    per: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    lw_grad = None if lw is None else torch.zeros_like(lw)
    bts, kls, pulls = [], [], []
    for i in range(int(batch.query_label.shape[0])):
        parts = _loss_parts(model, _slice(batch, i), cfg, pr)
        inputs = [*wanted, lw] if lw is not None else wanted
        gs = torch.autograd.grad(parts.per_episode.sum(), inputs, allow_unused=True)
        for n, p, g in zip(names, wanted, gs, strict=False):
            per[n].append(torch.zeros_like(p) if g is None else g.detach())
        if lw is not None and gs[-1] is not None:
            lw_grad = lw_grad + gs[-1].detach()
        bts.append(parts.bt.detach())
        kls.append(or_nan(parts.kl))
        pulls.append(or_nan(parts.pull))
    bt = torch.cat(bts)
    parts = LossParts(bt, bt.new_zeros(()), bt, torch.cat(kls), torch.cat(pulls))
    return PerSampleGrads({n: torch.stack(v) for n, v in per.items()}, lw_grad, parts)


def resolve_engine(dp: DPConfig) -> str:
    """``auto``: the hooks engine (one forward and backward pass, frozen and lora mode alike).

    ``vmap`` (frozen mode) and ``loop`` (any model) stay available as independent
    implementations of the same per-episode gradients.
    """
    return "hooks" if dp.engine == "auto" else dp.engine


def engine_function(engine: str):
    """The per-sample gradient function of an engine name."""
    if engine == "hooks":
        from fedvpa_secure.train.dp_hooks import per_sample_hooks  # imports this module

        return per_sample_hooks
    if engine == "loop":
        return per_sample_loop
    if engine == "vmap":
        return per_sample_vmap
    raise ConfigError(f"engine={engine!r} is unknown: choose vmap, hooks or loop")


class ClippedSumDPOptimizer(DPOptimizerFastGradientClipping):
    """Opacus' optimizer for gradients that arrive clipped and summed (``p.grad``): it adds the
    noise ``N(0, (z C)^2)`` and divides by the expected batch, exactly as ``DPOptimizer`` does
    after its own clipping.

    The one change: Opacus' ``accumulate`` deep-copies every ``p.grad`` into ``p.summed_grad``
    in case several physical batches make one logical batch. Here every step is one batch and
    ``add_noise`` writes a new ``p.grad``, so the clipped sum is taken over without a copy (a
    copy per tensor per step was a measurable share of a small model's DP step).
    """

    def accumulate(self) -> None:
        for p in self.params:
            if p.summed_grad is not None:
                raise RuntimeError("one clipped sum per DP step: zero_grad() between steps")
            p.summed_grad = p.grad.detach()


@dataclass
class DPLocalResult(LocalResult):
    """A local result plus what the accountant needs."""

    sample_rate: float = 1.0
    noise_multiplier: float = 0.0
    batch_sizes: list[int] | None = None
    learning_rates: list[float] | None = None  # per optimiser group, after the noise cap


class DPDivergedError(FedVPAError, ArithmeticError):
    """DP-SGD produced non-finite weights: the noise step is too large for the learning rate."""


UNCLIPPED_NORM = 1e9  # the "no-clipping" mutant's clipping norm: no per-episode norm comes close


def opacus_parameters(
    noise_multiplier: float, max_grad_norm: float, mutant: str | None = None
) -> tuple[float, float]:
    """(noise multiplier, clipping norm) to hand Opacus so that it runs the mechanism asked for.

    Opacus clips to its ``max_grad_norm`` and adds noise of std ``noise_multiplier *
    max_grad_norm``. Honest DP-SGD passes both through. The TEST-ONLY mutants
    (:attr:`DPConfig.mutant`) break it while the caller keeps accounting the honest event:
    ``zero-noise`` passes multiplier 0 (no noise); ``no-clipping`` clips at
    :data:`UNCLIPPED_NORM` and rescales the multiplier so that the noise std stays
    ``noise_multiplier * max_grad_norm``, as if clipping had been forgotten in the code.
    """
    z, c = float(noise_multiplier), float(max_grad_norm)
    if mutant is None:
        return z, c
    if mutant == "zero-noise":
        return 0.0, c
    if mutant == "no-clipping":
        return z * c / UNCLIPPED_NORM, UNCLIPPED_NORM
    raise ConfigError(f"mutant={mutant!r} is unknown: expected None, zero-noise or no-clipping")


def noise_step(
    lr: float, noise_multiplier: float, max_grad_norm: float, expected_batch: int
) -> float:
    """Std of the noise one DP-SGD step adds to each coordinate: ``lr * z * C / B``.

    Opacus adds ``N(0, (z C)^2)`` to the summed clipped gradients and divides by the expected
    batch ``B``; the optimiser then scales by ``lr``. Everything here is public (configuration
    and the client's pair count), so choosing the learning rate from it costs no privacy.
    """
    return lr * noise_multiplier * max_grad_norm / max(1, expected_batch)


def cap_learning_rates(
    optimizer: torch.optim.Optimizer,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch: int,
    learning_rate: float | None = None,
    max_noise_step: float | None = None,
) -> list[float]:
    """Set the DP learning rate of every group so that one step's noise stays bounded.

    ``learning_rate`` replaces the first (head) group's rate; ``max_noise_step`` then lowers any
    group whose :func:`noise_step` would exceed it. Why: with few episodes per client the batch
    ``B`` is tiny, and at low epsilon ``z`` is large, so at the plain learning rate every step
    adds noise far larger than the weights and the model diverges to non-finite losses
    (issue 4). Returns the rates in use, group by group.
    """
    groups = optimizer.param_groups
    if learning_rate is not None:
        groups[0]["lr"] = float(learning_rate)
    if max_noise_step is not None and noise_multiplier > 0:
        unit = noise_step(1.0, noise_multiplier, max_grad_norm, expected_batch)
        for group in groups:
            group["lr"] = min(float(group["lr"]), max_noise_step / unit)
    return [float(g["lr"]) for g in groups]


def check_finite(released: Mapping[str, torch.Tensor], step: int, detail: str) -> None:
    """Fail with a clear message, instead of training on, once a released tensor is not finite.

    One fused norm over all tensors per step (a norm is not finite when an entry is not); the
    per-tensor search for the message runs only once something looks wrong.
    """
    norms = torch._foreach_norm(list(released.values()))
    if bool(torch.isfinite(torch.stack(norms)).all()):
        return
    bad = [n for n, t in released.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise DPDivergedError(
            f"DP-SGD diverged at local step {step + 1}: non-finite values in {bad[:3]} "
            f"({detail}); lower DPConfig.learning_rate or max_noise_step, or give the noise a "
            "larger batch (more episodes per step, a higher epsilon)"
        )


def train_local_dp(
    model: PreferenceModel,
    clients: Sequence[ClientTensors],
    state: ClientState,
    cfg: ExperimentConfig,
    steps: int,
    tau: float,
    rng: np.random.Generator,
    device: torch.device,
    noise_multiplier: float,
    max_grad_norm: float,
    engine: str = "hooks",
    noise_generator: torch.Generator | None = None,
    mutant: str | None = None,
    learning_rate: float | None = None,
    max_noise_step: float | None = None,
) -> DPLocalResult:
    """DP-SGD local training: the inputs of ``train_local`` plus the DP parameters.

    Accounting is the caller's job (:func:`fedvpa_secure.train.dp_round.dp_client_round`):
    this function is the mechanism only, ``steps`` Poisson-subsampled Gaussian steps with rate
    :func:`sample_rate`. With ``noise_multiplier = 0``, ``max_grad_norm = inf`` and ``q = 1`` it
    takes exactly the steps of plain training (the property tested in tests/privacy).
    ``mutant`` (TEST ONLY, :func:`opacus_parameters`) breaks the mechanism for the empirical
    audit; the result still reports the claimed ``noise_multiplier``. ``learning_rate`` and
    ``max_noise_step`` set the DP learning rates (:func:`cap_learning_rates`, computed from the
    claimed z and C); non-finite weights stop training with :class:`DPDivergedError`.

    Returns:
        Per-step logs plus the sample rate, noise multiplier and realised batch sizes.
    """
    model.train()
    generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
    if noise_generator is None:  # DP noise never from the public seed behind ``rng``
        noise_generator = secret_torch_generator(device)
    poisson = secret_numpy_rng()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    optimizer = local_optimizer(model, cfg)
    q = sample_rate(clients, cfg)
    n_episodes = sum(
        episode_sizes(c.n_pairs, cfg.train.context_size, cfg.train.query_size)[2] for c in clients
    )
    expected_batch = max(1, round(q * n_episodes)) if q < 1 else n_episodes
    lrs = cap_learning_rates(
        optimizer, noise_multiplier, max_grad_norm, expected_batch, learning_rate, max_noise_step
    )
    opacus_z, opacus_c = opacus_parameters(noise_multiplier, max_grad_norm, mutant)
    fast = engine == "hooks"  # clipped sums from the hooks engine; Opacus adds noise and scales
    dp_opt = (ClippedSumDPOptimizer if fast else DPOptimizer)(
        optimizer,
        noise_multiplier=opacus_z,
        max_grad_norm=opacus_c,
        expected_batch_size=expected_batch,
        loss_reduction="mean",
        generator=noise_generator,
    )
    params = dict(model.named_parameters())
    released = {n: params[n] for n in names}
    step_gradients = _clipped_sums(model, names, opacus_c) if fast else None
    state.alpha = None  # restart from the public log_pi: alpha is not learnt under DP
    result = DPLocalResult(
        sample_rate=q, noise_multiplier=float(noise_multiplier), batch_sizes=[], learning_rates=lrs
    )
    detail = (
        f"z={noise_multiplier:.3g}, C={max_grad_norm:.3g}, expected batch {expected_batch}, "
        f"learning rates {[f'{lr:.3g}' for lr in lrs]}"
    )
    per_sample = None if fast else engine_function(engine)  # hooks: step_gradients instead
    for step in range(steps):
        pool = sample_episodes(
            clients, cfg.train.context_size, cfg.train.query_size, 10**9, rng
        )  # a fresh partition: each pair in exactly one episode
        if q < 1.0:
            keep = poisson.random(len(pool)) < q  # Poisson sampling of episodes, secret
            pool = [item for item, k in zip(pool, keep, strict=True) if k]
        prior, _alpha = prior_context(model, state, tau, generator, cfg.objective.use_mixture)
        dp_opt.zero_grad(set_to_none=True)
        if step_gradients is not None:
            psg = step_gradients(make_batch(pool).to(device), cfg, prior) if pool else None
            if psg is None:  # an empty Poisson draw still takes a (pure-noise) step
                for n in names:
                    params[n].grad = torch.zeros_like(params[n])
        elif pool:
            psg = per_sample(model, make_batch(pool).to(device), cfg, prior, names)
            for n in names:
                params[n].grad_sample = psg.grads[n]
        else:  # an empty Poisson draw still takes a (pure-noise) step
            psg = None
            for n in names:
                params[n].grad_sample = params[n].new_zeros((0, *params[n].shape))
        result.batch_sizes.append(len(pool))
        if dp_opt.pre_step():  # clip per episode, sum, add noise, divide by expected batch
            ortho = _ortho_gradient(model, cfg)
            if ortho is not None:  # data-independent: public post-processing
                model.prototypes.grad = model.prototypes.grad + ortho
            dp_opt.original_optimizer.step()
            check_finite(released, step, detail)
        result.steps.append(_log(psg, cfg, model))
    for n in names:
        params[n].grad_sample = None
        params[n].grad = None
    if state.alpha is not None:
        state.alpha = state.alpha.detach()
    state.rounds_trained += 1
    return result


def _clipped_sums(model: PreferenceModel, names: Sequence[str], max_grad_norm: float):
    """The hooks engine's step: per-episode clipping to ``max_grad_norm`` and the clipped sum
    set as ``.grad``, for :class:`~opacus.optimizers.DPOptimizerFastGradientClipping` to add
    the noise and divide by the expected batch (the same arithmetic as ``DPOptimizer`` after
    its own clipping; the one-step-by-hand test checks both paths)."""
    from fedvpa_secure.train.dp_hooks import clipped_sum_hooks, trainable_layers

    layers = trainable_layers(model, names)  # once per round, not once per step
    params = dict(model.named_parameters())

    def step(batch: EpisodeBatch, cfg: ExperimentConfig, prior: PriorContext) -> PerSampleGrads:
        clipped = clipped_sum_hooks(model, batch, cfg, prior, names, max_grad_norm, layers, params)
        for n in names:
            params[n].grad = clipped.summed[n]
        return PerSampleGrads({}, clipped.log_weights_grad, clipped.parts)

    return step


def _ortho_gradient(model: PreferenceModel, cfg: ExperimentConfig) -> torch.Tensor | None:
    """Gradient of gamma * ||P P^T - s^2 I||_F^2 (None for methods without it)."""
    if not (model.spec.latent and model.spec.ortho_pull) or model.prototypes is None:
        return None
    return cfg.objective.ortho_weight * orthogonality_gradient(
        model.prototypes, cfg.objective.prior_scale
    )


def _log(psg: PerSampleGrads | None, cfg: ExperimentConfig, model: PreferenceModel) -> StepLog:
    if psg is None or psg.parts is None:
        return StepLog(loss=float("nan"), bt=float("nan"))
    parts = psg.parts
    loss = parts.bt.mean()
    kl = float(parts.kl.mean()) if parts.kl is not None else float("nan")
    pull = float(parts.pull.mean()) if parts.pull is not None else float("nan")
    total = float(loss)
    if model.spec.latent and math.isfinite(kl):
        total += cfg.objective.beta * kl
    if model.spec.ortho_pull and math.isfinite(pull):
        total += cfg.objective.pull_weight * pull
    return StepLog(loss=total, bt=float(loss), kl=kl, pull=pull)
