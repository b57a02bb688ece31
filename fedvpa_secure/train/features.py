"""Backbone set-up per mode: cached embeddings (frozen) or token ids + LoRA adapters (lora)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedvpa_secure.config import ModelConfig
from fedvpa_secure.data.types import ClientData
from fedvpa_secure.model.backbone import Backbone
from fedvpa_secure.model.embedding_cache import EmbeddingCache
from fedvpa_secure.train.progress import progress_bar
from fedvpa_secure.train.tensors import ClientTensors, frozen_client_tensors, token_client_tensors

log = logging.getLogger(__name__)


@dataclass
class PreparedClients:
    train: list[ClientTensors]
    eval: list[ClientTensors]
    embed_dim: int
    backbone: Backbone | None  # set in lora mode: it becomes part of the trained model
    cache_info: dict


def add_lora(backbone: Backbone, cfg: ModelConfig) -> Backbone:
    """Wrap the backbone's transformer with peft LoRA adapters; base weights stay frozen."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=list(backbone.info.lora_targets),
        bias="none",
    )
    backbone.model = get_peft_model(backbone.model, lora)
    return backbone


def _all_texts(clients: Sequence[ClientData]) -> list[str]:
    return [t for c in clients for p in c.pairs for t in (p.text_a(), p.text_b())]


def fill_embedding_cache(
    backbone: Backbone,
    texts: Sequence[str],
    cache_dir: str,
    label: str,
    batch_size: int = 32,
) -> tuple[EmbeddingCache, dict]:
    """Embed whatever of ``texts`` the on-disk cache lacks (with a progress bar); the cache
    then serves every text. The info dict says how much was embedded now and how long it took.
    """
    dim = backbone.info.hidden_size
    cache = EmbeddingCache(cache_dir, backbone.info.key, dim)
    missing = len(cache.missing(texts))

    @torch.inference_mode()
    def embed_batch(batch: list[str]) -> np.ndarray:
        return backbone.embed(batch).float().cpu().numpy()

    start = time.perf_counter()
    if missing:
        with progress_bar(f"embedding {missing} texts with {label}", missing) as advance:
            cache.fill(texts, embed_batch, batch_size=batch_size, progress=advance)
    info = {
        "mode": "frozen",
        "cache_dir": str(cache.directory),
        "texts": len(set(texts)),
        "embedded_now": missing,
        "embedding_seconds": round(time.perf_counter() - start, 2),
    }
    return cache, info


def prepare_clients(
    train: Sequence[ClientData],
    evaluation: Sequence[ClientData],
    user_types: Sequence[str],
    cfg: ModelConfig,
    cache_dir: str,
    device: torch.device,
    batch_size: int = 32,
) -> PreparedClients:
    """Load the backbone once and turn every client's pairs into tensors."""
    backbone = Backbone(cfg.backbone, cfg.max_length).to(device)
    dim = backbone.info.hidden_size
    if cfg.mode == "lora":
        backbone = add_lora(backbone, cfg)

        def tokenize(texts: list[str]) -> dict[str, torch.Tensor]:
            return backbone.tokenizer(
                texts,
                padding="max_length",
                truncation=True,
                max_length=cfg.max_length,
                return_tensors="pt",
            )

        return PreparedClients(
            token_client_tensors(train, user_types, tokenize),
            token_client_tensors(evaluation, user_types, tokenize),
            dim,
            backbone,
            {"mode": "lora"},
        )
    for p in backbone.parameters():
        p.requires_grad_(False)
    cache, info = fill_embedding_cache(
        backbone, _all_texts(train) + _all_texts(evaluation), cache_dir, cfg.backbone, batch_size
    )
    return PreparedClients(
        frozen_client_tensors(train, user_types, cache.get),
        frozen_client_tensors(evaluation, user_types, cache.get),
        dim,
        None,
        info,
    )
