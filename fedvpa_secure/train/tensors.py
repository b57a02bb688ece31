"""Turn clients' pairs into tensors once, then cut episodes into model batches.

Frozen mode stores each client's response embeddings; lora mode stores token ids. Either way a
batch is built by indexing, with no text handling in the training loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedvpa_secure.data.protocols import HARMLESS
from fedvpa_secure.data.types import ClientData
from fedvpa_secure.model.preference_model import EpisodeBatch

UNKNOWN_LABEL = -1


@dataclass
class ClientTensors:
    """One client's pairs as tensors (rows follow ``ClientData.pairs``)."""

    client_id: str
    user_type: int
    label: torch.Tensor  # (n,) float: 1.0 if the user prefers response a
    conflicting: torch.Tensor  # (n,) bool
    type_labels: torch.Tensor  # (n, n_types) long: 1 = a, 0 = b, -1 unknown for that type
    domain: torch.Tensor | None = None  # (n,) float: 1.0 if the prompt is a harmlessness one
    emb_a: torch.Tensor | None = None  # frozen: (n, H)
    emb_b: torch.Tensor | None = None
    ids_a: torch.Tensor | None = None  # lora: (n, T)
    att_a: torch.Tensor | None = None
    ids_b: torch.Tensor | None = None
    att_b: torch.Tensor | None = None

    @property
    def n_pairs(self) -> int:
        return int(self.label.shape[0])


def label_tensors(
    client: ClientData, user_types: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(label, conflicting, type_labels) for a client: labels say whether response a wins."""
    label = torch.tensor([1.0 if p.preferred == 0 else 0.0 for p in client.pairs])
    conflicting = torch.tensor([p.conflicting for p in client.pairs], dtype=torch.bool)
    type_labels = torch.full((len(client.pairs), len(user_types)), UNKNOWN_LABEL, dtype=torch.long)
    for i, pair in enumerate(client.pairs):
        for t, name in enumerate(user_types):
            if name in pair.labels_by_type:
                type_labels[i, t] = 1 if pair.labels_by_type[name] == 0 else 0
    return label, conflicting, type_labels


def domain_tensor(client: ClientData) -> torch.Tensor:
    """(n,) 1.0 where the pair's prompt comes from the harmlessness collection (Pair.domain).

    The target of a domain-gated model's router during training; never read at evaluation.
    """
    return torch.tensor([1.0 if p.domain == HARMLESS else 0.0 for p in client.pairs])


def frozen_client_tensors(
    clients: Sequence[ClientData],
    user_types: Sequence[str],
    embed: Callable[[list[str]], np.ndarray],
) -> list[ClientTensors]:
    """Client tensors from an embedding lookup (the frozen-mode cache)."""
    out = []
    for client in clients:
        label, conflicting, type_labels = label_tensors(client, user_types)
        emb_a = torch.from_numpy(embed([p.text_a() for p in client.pairs]))
        emb_b = torch.from_numpy(embed([p.text_b() for p in client.pairs]))
        out.append(
            ClientTensors(
                client.client_id,
                user_types.index(client.user_type),
                label,
                conflicting,
                type_labels,
                domain=domain_tensor(client),
                emb_a=emb_a,
                emb_b=emb_b,
            )
        )
    return out


def token_client_tensors(
    clients: Sequence[ClientData],
    user_types: Sequence[str],
    tokenize: Callable[[list[str]], dict[str, torch.Tensor]],
) -> list[ClientTensors]:
    """Client tensors of token ids (lora mode: the backbone runs inside the training step)."""
    out = []
    for client in clients:
        label, conflicting, type_labels = label_tensors(client, user_types)
        ta = tokenize([p.text_a() for p in client.pairs])
        tb = tokenize([p.text_b() for p in client.pairs])
        out.append(
            ClientTensors(
                client.client_id,
                user_types.index(client.user_type),
                label,
                conflicting,
                type_labels,
                domain=domain_tensor(client),
                ids_a=ta["input_ids"],
                att_a=ta["attention_mask"],
                ids_b=tb["input_ids"],
                att_b=tb["attention_mask"],
            )
        )
    return out


def _pad_index(rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max((len(r) for r in rows), default=1))
    idx = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        idx[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = True
    return idx, mask


def _gather_rows(values: Sequence[torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
    """Stack per-episode gathers: values[i][idx[i]] -> (B, N, ...)."""
    return torch.stack([v[i] for v, i in zip(values, idx, strict=True)])


def make_batch(
    items: Sequence[tuple[ClientTensors, Sequence[int], Sequence[int]]],
) -> EpisodeBatch:
    """Build a batch from (client, context indices, query indices) triples.

    Context pairs are ordered as the user labelled them (chosen, rejected); query pairs keep the
    shown order (a, b) and their label. Padding is masked out everywhere.
    """
    clients = [c for c, _, _ in items]
    ctx_idx, ctx_mask = _pad_index([c for _, c, _ in items])
    q_idx, q_mask = _pad_index([q for _, _, q in items])
    ctx_label = _gather_rows([c.label for c in clients], ctx_idx)  # 1: a chosen
    a_first = ctx_label.bool()
    user_type = torch.tensor([c.user_type for c in clients], dtype=torch.long)
    query_label = _gather_rows([c.label for c in clients], q_idx) * q_mask
    domains = {}
    if all(c.domain is not None for c in clients):
        domains = {
            "ctx_domain": _gather_rows([c.domain for c in clients], ctx_idx),
            "query_domain": _gather_rows([c.domain for c in clients], q_idx),
        }
    if clients[0].emb_a is not None:
        ctx_a = _gather_rows([c.emb_a for c in clients], ctx_idx)
        ctx_b = _gather_rows([c.emb_b for c in clients], ctx_idx)
        sel = a_first.unsqueeze(-1)
        return EpisodeBatch(
            ctx_chosen=torch.where(sel, ctx_a, ctx_b),
            ctx_rejected=torch.where(sel, ctx_b, ctx_a),
            ctx_mask=ctx_mask,
            query_a=_gather_rows([c.emb_a for c in clients], q_idx),
            query_b=_gather_rows([c.emb_b for c in clients], q_idx),
            query_label=query_label,
            query_mask=q_mask,
            user_type=user_type,
            **domains,
        )
    ids: dict[str, torch.Tensor] = {}
    att: dict[str, torch.Tensor] = {}
    sel = a_first.unsqueeze(-1)
    ca_ids = _gather_rows([c.ids_a for c in clients], ctx_idx)
    cb_ids = _gather_rows([c.ids_b for c in clients], ctx_idx)
    ca_att = _gather_rows([c.att_a for c in clients], ctx_idx)
    cb_att = _gather_rows([c.att_b for c in clients], ctx_idx)
    ids["ctx_chosen"], ids["ctx_rejected"] = (
        torch.where(sel, ca_ids, cb_ids),
        torch.where(sel, cb_ids, ca_ids),
    )
    att["ctx_chosen"], att["ctx_rejected"] = (
        torch.where(sel, ca_att, cb_att),
        torch.where(sel, cb_att, ca_att),
    )
    ids["query_a"] = _gather_rows([c.ids_a for c in clients], q_idx)
    ids["query_b"] = _gather_rows([c.ids_b for c in clients], q_idx)
    att["query_a"] = _gather_rows([c.att_a for c in clients], q_idx)
    att["query_b"] = _gather_rows([c.att_b for c in clients], q_idx)
    # padded slots point at row 0; zero their attention so they cost nothing meaningful
    for name, mask in (
        ("ctx_chosen", ctx_mask),
        ("ctx_rejected", ctx_mask),
        ("query_a", q_mask),
        ("query_b", q_mask),
    ):
        att[name] = att[name] * mask.unsqueeze(-1)
        att[name][..., 0] = 1  # keep one token so pooling never divides by zero
    width = int(max(a.sum(-1).max() for a in att.values()))  # trim shared right padding
    ids = {k: v[..., :width] for k, v in ids.items()}
    att = {k: v[..., :width] for k, v in att.items()}
    return EpisodeBatch(
        ctx_chosen=None,
        ctx_rejected=None,
        ctx_mask=ctx_mask,
        query_a=None,
        query_b=None,
        query_label=query_label,
        query_mask=q_mask,
        user_type=user_type,
        token_ids=ids,
        token_att=att,
        **domains,
    )
