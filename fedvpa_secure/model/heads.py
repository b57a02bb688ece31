"""Small trainable heads on top of the backbone embedding (METHOD.md section 2).

All layers are ``nn.Linear`` / ``nn.LayerNorm`` so that Opacus computes exact per-sample
gradients for them. Attention is written out by hand for the same reason.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PairFeature(nn.Module):
    """The shared MLP f applied to each response embedding."""

    def __init__(self, embed_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(embed_dim),
            nn.Linear(embed_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
        )

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.net(e)


class SelfAttentionBlock(nn.Module):
    """One pre-norm multi-head self-attention layer with a key padding mask."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        h = self.heads
        q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, n, h, dim // h).transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // h)
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        attn = torch.softmax(scores, dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(b, n, dim)
        return x + self.out(y)


class ContextEncoder(nn.Module):
    """q(z | C): labelled pairs of one user -> mean and log-variance of a Gaussian over z.

    A context pair is (chosen, rejected) as THIS user labelled it. Its vector is
    [f(e_c) - f(e_r), f(e_c) + f(e_r)]: a linear re-parametrisation of VPL's concatenation in
    which swapping the label negates the first half, so "which side this user picked" and
    "what the pair is about" sit in separate coordinates.
    """

    def __init__(
        self,
        feature_dim: int,
        hidden_dim: int,
        latent_dim: int,
        heads: int,
        logvar_min: float,
        logvar_max: float,
    ) -> None:
        super().__init__()
        self.inp = nn.Linear(2 * feature_dim, hidden_dim)
        self.attn = SelfAttentionBlock(hidden_dim, heads)
        self.post = nn.Sequential(
            nn.LayerNorm(hidden_dim), nn.Linear(hidden_dim, hidden_dim), nn.GELU()
        )
        self.mu = nn.Linear(hidden_dim, latent_dim)
        self.logvar = nn.Linear(hidden_dim, latent_dim)
        self.logvar_min, self.logvar_max = logvar_min, logvar_max

    def forward(
        self, f_chosen: torch.Tensor, f_rejected: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inp(torch.cat([f_chosen - f_rejected, f_chosen + f_rejected], dim=-1))
        x = self.attn(x, mask)
        m = mask.to(x.dtype).unsqueeze(-1)
        pooled = self.post((x * m).sum(1) / m.sum(1).clamp(min=1.0))
        logvar = self.logvar(pooled).clamp(self.logvar_min, self.logvar_max)
        return self.mu(pooled), logvar


class RewardDecoder(nn.Module):
    """r(x, y, z) = MLP([f(e), z]) -> scalar, plus a bilinear z-term.

    The bilinear term z^T W f(e) lets z flip the sign of a direction in feature space, which is
    exactly what two conflicting user types need; the MLP alone learns it far more slowly.
    ``cond_dim = 0`` gives the monolithic reward.
    """

    def __init__(self, hidden_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.mlp = nn.Sequential(
            nn.Linear(hidden_dim + cond_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, 1)
        )
        self.bilinear = nn.Linear(hidden_dim, cond_dim, bias=False) if cond_dim else None

    def forward(self, f: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        if self.bilinear is None or z is None:
            return self.mlp(f).squeeze(-1)
        z = z.expand(*f.shape[:-1], z.shape[-1])
        out = self.mlp(torch.cat([f, z], dim=-1)).squeeze(-1)
        return out + (self.bilinear(f) * z).sum(-1) / math.sqrt(self.cond_dim)


class LinearRewardDecoder(nn.Module):
    """r(x, y, z) = w . f + z^T V f / sqrt(d): a linear Bradley-Terry reward for each z.

    On frozen sentence embeddings a linear reward generalises to unseen users
    where an MLP memorises each client's pairs (measured on p3: train BT loss 0.13, unseen users
    at chance). ``cond_dim = 0`` gives the monolithic reward.
    """

    def __init__(self, feature_dim: int, cond_dim: int) -> None:
        super().__init__()
        self.cond_dim = cond_dim
        self.linear = nn.Linear(feature_dim, 1, bias=False)  # a bias cancels in r(a) - r(b)
        self.bilinear = nn.Linear(feature_dim, cond_dim, bias=False) if cond_dim else None

    def forward(self, f: torch.Tensor, z: torch.Tensor | None) -> torch.Tensor:
        out = self.linear(f).squeeze(-1)
        if self.bilinear is None or z is None:
            return out
        z = z.expand(*f.shape[:-1], z.shape[-1])
        return out + (self.bilinear(f) * z).sum(-1) / math.sqrt(self.cond_dim)
