"""Small in-memory clients for learner tests: random embeddings, two user types, known labels;
and where the real HH-RLHF copy lives for the tests that read it."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fedvpa_secure.train.tensors import ClientTensors

# HH_RLHF_DIR, else the project's copy beside the checkout (as CI has it)
HH_RLHF = Path(
    os.environ.get("HH_RLHF_DIR") or Path(__file__).resolve().parents[3] / "shared/data/hh-rlhf"
)


def random_clients(
    n_clients: int, n_pairs: int, dim: int = 16, seed: int = 0, conflict_every: int = 2
) -> list[ClientTensors]:
    """Two types that agree on most pairs and disagree on every ``conflict_every``-th pair."""
    gen = torch.Generator().manual_seed(seed)
    clients = []
    for c in range(n_clients):
        user_type = c % 2
        emb_a = torch.randn(n_pairs, dim, generator=gen)
        emb_b = torch.randn(n_pairs, dim, generator=gen)
        base = (emb_a[:, 0] > emb_b[:, 0]).float()
        conflicting = torch.arange(n_pairs) % conflict_every == 0
        type0 = base
        type1 = torch.where(conflicting, 1 - base, base)
        label = type0 if user_type == 0 else type1
        clients.append(
            ClientTensors(
                client_id=f"c{c}",
                user_type=user_type,
                label=label,
                conflicting=conflicting,
                type_labels=torch.stack([type0, type1], dim=1).long(),
                emb_a=emb_a,
                emb_b=emb_b,
            )
        )
    return clients
