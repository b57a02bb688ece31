"""Tiny clients and models for the DP training tests (CPU, a second or two each)."""

from __future__ import annotations

import torch

from fedvpa_secure.config import ExperimentConfig, ModelConfig, ObjectiveConfig, TrainConfig
from fedvpa_secure.model.objective import bt_nll
from fedvpa_secure.model.preference_model import PreferenceModel
from fedvpa_secure.train.dp_config import DPConfig
from fedvpa_secure.train.local import sample_episodes
from fedvpa_secure.train.tensors import ClientTensors, make_batch

EMBED = 32


def frozen_client(client_id: str = "c0", n: int = 40, seed: int = 0) -> ClientTensors:
    """A client whose pairs are random embeddings (frozen mode) with random domain tags."""
    gen = torch.Generator().manual_seed(seed)
    label = (torch.rand(n, generator=gen) > 0.5).float()
    emb_a = torch.randn(n, EMBED, generator=gen)
    emb_b = torch.randn(n, EMBED, generator=gen)
    return ClientTensors(
        client_id,
        0,
        label,
        torch.zeros(n, dtype=torch.bool),
        torch.zeros(n, 2, dtype=torch.long),
        domain=(torch.rand(n, generator=gen) > 0.5).float(),
        emb_a=emb_a,
        emb_b=emb_b,
    )


def token_client(client_id: str = "c0", n: int = 12, length: int = 12, seed: int = 0):
    """A client whose pairs are random token ids (lora mode with the tiny causal backbone)."""
    gen = torch.Generator().manual_seed(seed)
    label = (torch.rand(n, generator=gen) > 0.5).float()
    ids_a = torch.randint(2, 90, (n, length), generator=gen)
    ids_b = torch.randint(2, 90, (n, length), generator=gen)
    att = torch.ones(n, length, dtype=torch.long)
    return ClientTensors(
        client_id,
        0,
        label,
        torch.zeros(n, dtype=torch.bool),
        torch.zeros(n, 2, dtype=torch.long),
        ids_a=ids_a,
        att_a=att,
        ids_b=ids_b,
        att_b=att.clone(),
    )


def tiny_config(
    method: str = "fedvpa-gp",
    dp: DPConfig | None = None,
    beta: float = 0.05,
    episodes_per_step: int = 100,
    local_steps: int = 2,
    mode: str = "frozen",
    **model_fields,
) -> ExperimentConfig:
    model = ModelConfig(latent_dim=8, hidden_dim=16, **model_fields)
    if mode == "lora":
        model = ModelConfig(
            backbone="tiny-causal",
            mode="lora",
            max_length=16,
            latent_dim=8,
            hidden_dim=16,
            lora_dropout=0.0,
        )
    return ExperimentConfig(
        method=method,
        model=model,
        objective=ObjectiveConfig(beta=beta),
        train=TrainConfig(
            context_size=4,
            query_size=2,
            episodes_per_step=episodes_per_step,
            local_steps=local_steps,
            learning_rate=0.05,
            lora_learning_rate=0.05,
        ),
        dp=dp,
    )


def tiny_model(cfg: ExperimentConfig, seed: int = 0) -> PreferenceModel:
    torch.manual_seed(seed)
    backbone = None
    embed = EMBED
    if cfg.model.mode == "lora":
        from fedvpa_secure.model.backbone import Backbone
        from fedvpa_secure.train.features import add_lora

        backbone = add_lora(Backbone("tiny-causal", cfg.model.max_length), cfg.model)
        embed = backbone.info.hidden_size
    return PreferenceModel(cfg.spec, cfg.model, cfg.objective, embed, 2, backbone, seed=seed)


def expected_dp_step(cfg, client, before, clip, noise_std, seed, rng) -> dict:
    """One DP-SGD step by hand from independent per-episode backward passes.

    Clip each episode's gradient to ``clip``, sum, add N(0, noise_std^2) from a generator seeded
    like the trainer's (none when ``noise_std`` is 0, as Opacus draws none then), divide by the
    number of episodes and take an SGD step: what ``train_local_dp`` must reproduce exactly.
    """
    ref = tiny_model(cfg, 0)
    ref.load_state_dict(before)
    rng.integers(2**31)  # the trainer's Gumbel seed
    items = sample_episodes([client], 4, 2, 10**9, rng)
    grads = []
    for item in items:
        ref.zero_grad()
        one = make_batch([item])
        bt_nll(ref(one)["logits"], one.query_label, one.query_mask).sum().backward()
        grads.append({n: p.grad.detach().clone() for n, p in ref.named_parameters()})
    gen = torch.Generator().manual_seed(seed)
    expected = {}
    for n, p in ref.named_parameters():  # optimizer order = parameter order (one group here)
        total = torch.zeros_like(p)
        for g in grads:
            norm = torch.sqrt(sum((gg**2).sum() for gg in g.values()))
            total += g[n] * min(1.0, clip / (float(norm) + 1e-6))
        noise = torch.normal(0.0, noise_std, size=p.shape, generator=gen) if noise_std else 0.0
        expected[n] = before[n] - cfg.train.learning_rate * (total + noise) / len(items)
    return expected
