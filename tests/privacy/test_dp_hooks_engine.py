"""The hooks engine's per-episode gradients are exact (issue 4: the fast default DP engine).

Reference: the rows of the Jacobian of the per-episode loss vector, taken by autograd from the
very same batched forward pass (same random draws, seeded alike). That reference does not use any
of the engine's per-layer rules, so a wrong Linear/LayerNorm rule, a mixed-up episode or a
missing prototype term shows up as a mismatch; the controls below check that it would.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dp_testkit import frozen_client, tiny_config, tiny_model, token_client
from torch import nn

from fedvpa_secure.config import METHODS
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.model.objective import PriorContext, episode_loss
from fedvpa_secure.train.dp_hooks import (
    _LinearWeight,
    clipped_sum_hooks,
    per_sample_hooks,
    trainable_layers,
)
from fedvpa_secure.train.dp_local import per_sample_loop, per_sample_vmap, train_local_dp
from fedvpa_secure.train.local import ClientState, prior_context, sample_episodes
from fedvpa_secure.train.tensors import make_batch

FEDERATED = [m for m, spec in METHODS.items() if spec.federated]  # central-vpl: same model


def _setup(method: str, client=None, mode: str = "frozen", **model_fields):
    cfg = tiny_config(method, beta=0.05, mode=mode, **model_fields)
    model = tiny_model(cfg, 0)
    client = client or frozen_client()
    items = sample_episodes([client], 4, 2, 10**9, np.random.default_rng(0))
    batch = make_batch(items)
    prior, _ = prior_context(model, ClientState(), 0.7, torch.Generator().manual_seed(0))
    if prior.log_weights is not None:  # a fixed draw, reusable by several passes
        prior = PriorContext(prior.prototypes, prior.variances, prior.log_weights.detach())
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return cfg, model, batch, prior, names


def _jacobian_rows(model, batch, cfg, prior, names) -> dict[str, torch.Tensor]:
    """d loss_e / d theta for every episode e, from one batched pass (prototypes: one copy per
    episode, as for the engine; the Jacobian row of a shared tensor is the same thing)."""
    n_episodes = int(batch.query_label.shape[0])
    params = dict(model.named_parameters())
    protos = None
    if prior.prototypes is not None:
        protos = prior.prototypes.detach().expand(n_episodes, -1, -1).clone().requires_grad_(True)
    pr = PriorContext(protos, prior.variances, prior.log_weights)
    parts = episode_loss(
        model(batch, sample=True),
        batch.query_label,
        batch.query_mask,
        model.spec,
        cfg.objective,
        pr,
    )
    shared = [n for n in names if n != "prototypes"]
    targets = [params[n] for n in shared] + ([protos] if protos is not None else [])
    rows: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for e in range(n_episodes):
        gs = torch.autograd.grad(
            parts.per_episode[e], targets, retain_graph=True, allow_unused=True
        )
        for n, g in zip(shared, gs, strict=False):
            rows[n].append(torch.zeros_like(params[n]) if g is None else g)
        if protos is not None:
            g = gs[-1]
            rows["prototypes"].append(torch.zeros_like(protos[e]) if g is None else g[e])
    return {n: torch.stack(v) for n, v in rows.items()}


@pytest.mark.parametrize("method", FEDERATED)
def test_per_episode_gradients_equal_the_jacobian_rows(method: str) -> None:
    cfg, model, batch, prior, names = _setup(method)
    torch.manual_seed(11)
    got = per_sample_hooks(model, batch, cfg, prior, names)
    torch.manual_seed(11)  # the same reparameterisation and Monte Carlo KL draws
    want = _jacobian_rows(model, batch, cfg, prior, names)
    assert sorted(got.grads) == sorted(names)
    for n in names:
        assert got.grads[n].shape == (
            batch.query_label.shape[0],
            *dict(model.named_parameters())[n].shape,
        )
        torch.testing.assert_close(got.grads[n], want[n], rtol=1e-4, atol=1e-6, msg=n)
    if model.spec.mixture_prior:  # the local logits' gradient comes out too
        assert got.log_weights_grad is not None and got.log_weights_grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("method", "posterior"),
    [("monolithic", "encoder"), ("oracle", "encoder"), ("fedvpa-gp", "encoder")],
)
def test_gated_linear_head_gradients_equal_the_jacobian_rows(method: str, posterior: str) -> None:
    """The domain-gated linear head (the p3 setting): the router's cross-entropy is in the
    per-episode loss, and its detached use in the reward adds nothing."""
    fields = {"head": "linear", "domain_gate": True, "posterior": posterior}
    cfg, model, batch, prior, names = _setup(method, **fields)
    assert batch.query_domain is not None and "domain_gate.weight" in names
    torch.manual_seed(11)
    got = per_sample_hooks(model, batch, cfg, prior, names)
    torch.manual_seed(11)
    want = _jacobian_rows(model, batch, cfg, prior, names)
    for n in names:
        torch.testing.assert_close(got.grads[n], want[n], rtol=1e-4, atol=1e-6, msg=n)
    assert got.grads["domain_gate.weight"].abs().sum() > 0  # the router is trained


@pytest.mark.parametrize("method", ["monolithic", "fedvpl-ortho", "fedvpa-gp"])
def test_clipped_sum_equals_clipping_the_jacobian_rows(method: str) -> None:
    """The fast DP step's input: per-episode norms and the sum of the clipped rows."""
    cfg, model, batch, prior, names = _setup(method)
    torch.manual_seed(11)
    want = _jacobian_rows(model, batch, cfg, prior, names)
    norms = torch.sqrt(sum(want[n].reshape(len(want[n]), -1).pow(2).sum(1) for n in names))
    clip = float(norms.median())  # about half the episodes are clipped
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    assert (factors < 1).any() and (factors == 1).any()
    torch.manual_seed(11)
    got = clipped_sum_hooks(model, batch, cfg, prior, names, clip)
    torch.testing.assert_close(got.norms, norms, rtol=1e-4, atol=1e-6)
    for n in names:
        expected = torch.einsum("b,b...->...", factors, want[n])
        torch.testing.assert_close(got.summed[n], expected, rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("rows", [3, 40])  # ghost norm (rows^2 <= in*out) and materialised
def test_linear_weight_norms_and_sums_agree_with_the_materialised_gradient(rows: int) -> None:
    gen = torch.Generator().manual_seed(rows)
    x, g = torch.randn(5, rows, 6, generator=gen), torch.randn(5, rows, 4, generator=gen)
    weight = _LinearWeight("w", x, g)
    assert weight.ghost == (rows * rows <= 24)
    per = torch.stack([g[b].T @ x[b] for b in range(5)])  # (B, out, in) by definition
    torch.testing.assert_close(weight.per_episode(), per)
    fresh = _LinearWeight("w", x, g)  # norms before anything was materialised
    torch.testing.assert_close(fresh.squared_norms(), per.pow(2).sum((1, 2)), rtol=1e-4, atol=1e-5)
    factors = torch.rand(5, generator=gen)
    torch.testing.assert_close(
        fresh.clipped_sum(factors), torch.einsum("b,boi->oi", factors, per), rtol=1e-4, atol=1e-5
    )


def test_control_a_mixed_up_episode_is_detected() -> None:
    """The comparison above sees per-episode structure, not only the batch sum."""
    cfg, model, batch, prior, names = _setup("fedvpa-gp")
    torch.manual_seed(11)
    got = per_sample_hooks(model, batch, cfg, prior, names)
    torch.manual_seed(11)
    want = _jacobian_rows(model, batch, cfg, prior, names)
    for n in ("feature.net.1.weight", "prototypes", "encoder.attn.norm.weight"):
        torch.testing.assert_close(got.grads[n].sum(0), want[n].sum(0), rtol=1e-4, atol=1e-6)
        swapped = want[n].roll(1, dims=0)
        assert (got.grads[n] - swapped).abs().max() > 1e-4, n


def test_equals_the_vmap_and_loop_engines_on_a_deterministic_model() -> None:
    cfg, model, batch, prior, names = _setup("monolithic")
    hooks = per_sample_hooks(model, batch, cfg, prior, names)
    vmap = per_sample_vmap(model, batch, cfg, prior, names)
    loop = per_sample_loop(model, batch, cfg, prior, names)
    for n in names:
        torch.testing.assert_close(hooks.grads[n], vmap.grads[n], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(hooks.grads[n], loop.grads[n], rtol=1e-5, atol=1e-6)


def test_lora_adapters_equal_the_loop_engine() -> None:
    """lora mode: the backbone's texts are summed per episode (B * N rows, episode-major)."""
    cfg, model, batch, prior, names = _setup("monolithic", token_client(), mode="lora")
    with torch.no_grad():  # peft starts B at 0 (A's gradient is then 0): make both non-trivial
        gen = torch.Generator().manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    hooks = per_sample_hooks(model, batch, cfg, prior, names)
    loop = per_sample_loop(model, batch, cfg, prior, names)
    lora = [n for n in names if "lora_" in n]
    assert lora
    for n in names:
        torch.testing.assert_close(hooks.grads[n], loop.grads[n], rtol=1e-4, atol=1e-6, msg=n)
    assert all(hooks.grads[n].abs().sum() > 0 for n in lora)


def test_an_unsupported_trainable_tensor_is_refused_with_the_way_out() -> None:
    _, model, _, _, names = _setup("monolithic")
    model.feature.extra = nn.Embedding(3, 4)  # a layer with no per-episode rule here
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    with pytest.raises(ConfigError, match=r"feature\.extra\.weight.*Embedding.*engine='vmap'"):
        trainable_layers(model, names)


def test_a_layer_fed_rows_of_no_episode_is_refused() -> None:
    cfg, model, batch, prior, names = _setup("monolithic")
    inner = model.decoder.mlp[0]

    class Flatten(nn.Module):  # a layer that sees all episodes' rows merged into one
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x.reshape(1, -1, x.shape[-1]).squeeze(0)[:1]).expand(
                *x.shape[:-1], -1
            )

    model.decoder.mlp[0] = Flatten()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    with pytest.raises(ConfigError, match="episode-major"):
        per_sample_hooks(model, batch, cfg, prior, names)


def test_an_empty_poisson_draw_takes_a_pure_noise_step() -> None:
    """With q < 1 some steps sample no episode: the fast path must still take the noisy step."""
    cfg = tiny_config("fedvpa-gp", episodes_per_step=1, local_steps=1)
    model = tiny_model(cfg, 0)
    client = frozen_client()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_local_dp(
        model,
        [client],
        ClientState(),
        cfg,
        12,
        0.5,
        np.random.default_rng(0),
        torch.device("cpu"),
        1.0,
        1.0,
        "hooks",
        torch.Generator().manual_seed(0),
    )
    assert 0 in result.batch_sizes and max(result.batch_sizes) > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
