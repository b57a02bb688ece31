"""Opacus issue 820 guard: after DP steps with peft LoRA, the adapters moved exactly as the
clipped, noised gradient says and every frozen base weight is bit-identical.

The expected step is recomputed here from per-episode gradients taken with ordinary single-episode
backward passes on an independent copy of the model (not with the trainer's code path).
"""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from dp_testkit import tiny_config, tiny_model, token_client

from fedvpa_secure.model.objective import bt_nll
from fedvpa_secure.train.dp_local import sample_rate, train_local_dp
from fedvpa_secure.train.local import ClientState, sample_episodes
from fedvpa_secure.train.tensors import make_batch

CPU = torch.device("cpu")
CLIP, Z, NOISE_SEED, DATA_SEED = 0.05, 0.5, 7, 3


@functools.cache
def _base():
    cfg = tiny_config("monolithic", mode="lora", local_steps=1)
    model = tiny_model(cfg, 0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # peft starts B at 0 (A's gradient is then 0): make both non-trivial
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return cfg, model, token_client()


def _setup():
    cfg, model, client = _base()
    return cfg, copy.deepcopy(model), client


def _expected(cfg, model, client, noise_seed):
    ref = copy.deepcopy(model)
    rng = np.random.default_rng(DATA_SEED)
    rng.integers(2**31)  # the trainer's Gumbel seed
    items = sample_episodes([client], cfg.train.context_size, cfg.train.query_size, 10**9, rng)
    assert sample_rate([client], cfg) == 1.0  # every episode is in the batch
    trainable = [(n, p) for n, p in ref.named_parameters() if p.requires_grad]
    per_episode = []
    for item in items:
        ref.zero_grad(set_to_none=True)
        one = make_batch([item])
        bt_nll(ref(one)["logits"], one.query_label, one.query_mask).sum().backward()
        per_episode.append({n: p.grad.detach().clone() for n, p in trainable})
    factors = []
    for g in per_episode:
        norm = float(torch.sqrt(sum((v.double() ** 2).sum() for v in g.values())))
        factors.append(min(1.0, CLIP / (norm + 1e-6)))
    # Opacus draws noise parameter by parameter in optimizer order: head group, then LoRA group
    order = [n for n, _ in trainable if "lora_" not in n] + [
        n for n, _ in trainable if "lora_" in n
    ]
    gen = torch.Generator().manual_seed(noise_seed)
    params = dict(trainable)
    expected = {}
    for n in order:
        total = sum(f * g[n] for f, g in zip(factors, per_episode, strict=True))
        noise = torch.normal(0.0, Z * CLIP, size=params[n].shape, generator=gen)
        lr = cfg.train.lora_learning_rate if "lora_" in n else cfg.train.learning_rate
        expected[n] = params[n].detach() - lr * (total + noise) / len(items)
    return expected, any(f < 1.0 for f in factors)


def _one_dp_step(model, cfg, client, engine: str) -> None:
    """One DP-SGD step with the test's fixed data and noise seeds."""
    train_local_dp(
        model,
        [client],
        ClientState(),
        cfg,
        1,
        1.0,
        np.random.default_rng(DATA_SEED),
        CPU,
        Z,
        CLIP,
        engine,
        torch.Generator().manual_seed(NOISE_SEED),
    )


@pytest.mark.parametrize("engine", ["hooks", "loop"])
def test_lora_moves_as_the_clipped_noised_gradient_and_frozen_weights_stay_bit_identical(engine):
    cfg, model, client = _setup()
    frozen_before = {
        n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad
    }
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    assert frozen_before and lora_before
    expected, clipped = _expected(cfg, model, client, NOISE_SEED)
    assert clipped  # the check exercises clipping, not just summation
    _one_dp_step(model, cfg, client, engine)
    after = dict(model.named_parameters())
    for n, p in frozen_before.items():
        assert torch.equal(after[n].detach(), p), f"frozen weight {n} changed"
    for n, value in expected.items():
        torch.testing.assert_close(after[n].detach(), value, rtol=1e-4, atol=1e-6, msg=n)
    moved = [n for n in lora_before if not torch.equal(after[n].detach(), lora_before[n])]
    assert sorted(moved) == sorted(lora_before)  # every adapter (A and B) moved


def test_control_a_different_noise_draw_is_detected():
    """The comparison above is sharp enough to see a wrong noise vector."""
    cfg, model, client = _setup()
    wrong, _ = _expected(cfg, model, client, NOISE_SEED + 1)
    _one_dp_step(model, cfg, client, "hooks")
    after = dict(model.named_parameters())
    worst = max(
        float((after[n].detach() - v).abs().max()) for n, v in wrong.items() if "lora_" in n
    )
    assert worst > 1e-4
