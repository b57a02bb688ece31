"""Tiny clients and models for the DP training tests (CPU, a second or two each)."""

from __future__ import annotations

import torch

from fedvpa_secure.config import ExperimentConfig, ModelConfig, ObjectiveConfig, TrainConfig
from fedvpa_secure.model.preference_model import PreferenceModel
from fedvpa_secure.train.dp_config import DPConfig
from fedvpa_secure.train.tensors import ClientTensors

EMBED = 32


def frozen_client(client_id: str = "c0", n: int = 40, seed: int = 0) -> ClientTensors:
    """A client whose pairs are random embeddings (frozen mode)."""
    gen = torch.Generator().manual_seed(seed)
    label = (torch.rand(n, generator=gen) > 0.5).float()
    return ClientTensors(
        client_id,
        0,
        label,
        torch.zeros(n, dtype=torch.bool),
        torch.zeros(n, 2, dtype=torch.long),
        emb_a=torch.randn(n, EMBED, generator=gen),
        emb_b=torch.randn(n, EMBED, generator=gen),
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
) -> ExperimentConfig:
    model = ModelConfig(latent_dim=8, hidden_dim=16)
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
