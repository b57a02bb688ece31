"""The personalised reward model: backbone features, context encoder, prior, reward decoder.

One module serves every method of METHOD.md section 5; the :class:`MethodSpec` switches decide
which parts exist and which code path runs, so a comparison between methods changes one switch
and nothing else. The batch dimension is the episode (context + query pairs of ONE user): that is
the unit Opacus clips per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedvpa_secure.config import MethodSpec, ModelConfig, ObjectiveConfig
from fedvpa_secure.model.backbone import Backbone
from fedvpa_secure.model.heads import ContextEncoder, PairFeature, RewardDecoder
from fedvpa_secure.model.prior import init_prototypes


@dataclass
class EpisodeBatch:
    """B episodes. Text inputs are embeddings (frozen mode) or token ids (lora mode).

    ``*_ids`` / ``*_att`` are only set in lora mode; then ``ctx_chosen`` etc. are None.
    """

    ctx_chosen: torch.Tensor | None  # (B, K, H) user-preferred response of each context pair
    ctx_rejected: torch.Tensor | None  # (B, K, H)
    ctx_mask: torch.Tensor  # (B, K) bool: real context pair (False = padding)
    query_a: torch.Tensor | None  # (B, Q, H) response shown first
    query_b: torch.Tensor | None  # (B, Q, H)
    query_label: torch.Tensor  # (B, Q) float: 1.0 if this user prefers a
    query_mask: torch.Tensor  # (B, Q) bool
    user_type: torch.Tensor  # (B,) long: index into the sorted user types (oracle only)
    token_ids: dict[str, torch.Tensor] | None = None  # lora: name -> (B, N, T) ids
    token_att: dict[str, torch.Tensor] | None = None  # lora: name -> (B, N, T) attention mask

    def to(self, device: torch.device) -> EpisodeBatch:
        def move(x):
            if x is None:
                return None
            if isinstance(x, dict):
                return {k: v.to(device) for k, v in x.items()}
            return x.to(device)

        return EpisodeBatch(**{k: move(v) for k, v in self.__dict__.items()})


class PreferenceModel(nn.Module):
    """FedVPA-GP and its baselines behind one forward pass."""

    def __init__(
        self,
        spec: MethodSpec,
        model_cfg: ModelConfig,
        objective_cfg: ObjectiveConfig,
        embed_dim: int,
        n_types: int,
        backbone: Backbone | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.latent_dim = model_cfg.latent_dim
        self.feature = PairFeature(embed_dim, model_cfg.hidden_dim)
        self.encoder: ContextEncoder | None = None
        cond_dim = 0
        if spec.latent:
            self.encoder = ContextEncoder(
                model_cfg.hidden_dim,
                model_cfg.latent_dim,
                model_cfg.attention_heads,
                model_cfg.logvar_min,
                model_cfg.logvar_max,
            )
            cond_dim = model_cfg.latent_dim
        elif spec.oracle:
            cond_dim = n_types
        self.n_types = n_types
        self.decoder = RewardDecoder(model_cfg.hidden_dim, cond_dim)
        self.prototypes: nn.Parameter | None = None
        if spec.latent and (spec.mixture_prior or spec.ortho_pull):
            self.prototypes = nn.Parameter(
                init_prototypes(
                    model_cfg.n_components, model_cfg.latent_dim, objective_cfg.prior_scale, seed
                )
            )
        if spec.mixture_prior:
            k = model_cfg.n_components
            self.register_buffer("log_pi", torch.full((k,), -torch.log(torch.tensor(float(k)))))
            self.register_buffer("prior_var", torch.ones(k))

    # -- text -> features -------------------------------------------------------------------
    def _features(self, batch: EpisodeBatch, name: str) -> torch.Tensor:
        if self.backbone is None or batch.token_ids is None:
            e = getattr(batch, name)
        else:
            ids, att = batch.token_ids[name], batch.token_att[name]
            b, n, t = ids.shape
            e = self.backbone(ids.reshape(b * n, t), att.reshape(b * n, t)).reshape(b, n, -1)
        return self.feature(e)

    # -- pieces -------------------------------------------------------------------------------
    def encode(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z | C) from the context pairs only (never the query pairs)."""
        if self.encoder is None:
            raise RuntimeError(f"method {self.spec.name!r} has no latent")
        fc = self._features(batch, "ctx_chosen")
        fr = self._features(batch, "ctx_rejected")
        return self.encoder(fc, fr, batch.ctx_mask)

    def query_logits(self, batch: EpisodeBatch, cond: torch.Tensor | None) -> torch.Tensor:
        """r(a, z) - r(b, z) for every query pair: the Bradley-Terry logit that a wins."""
        fa = self._features(batch, "query_a")
        fb = self._features(batch, "query_b")
        c = None if cond is None else cond.unsqueeze(1)
        return self.decoder(fa, c) - self.decoder(fb, c)

    def condition(self, batch: EpisodeBatch, sample: bool) -> dict[str, torch.Tensor]:
        """The conditioning vector for the decoder, by method."""
        if self.spec.oracle:
            # a comparison, not F.one_hot: one_hot reads the max index (.item()), which
            # torch.func.vmap (the DP-SGD vmap engine) cannot trace
            types = torch.arange(self.n_types, device=batch.user_type.device)
            return {"cond": (batch.user_type.unsqueeze(-1) == types).to(torch.float32)}
        if not self.spec.latent:
            return {}
        mu, logvar = self.encode(batch)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        return {"cond": z, "mu": mu, "logvar": logvar, "z": z}

    def forward(self, batch: EpisodeBatch, sample: bool = True) -> dict[str, torch.Tensor]:
        out = self.condition(batch, sample)
        out["logits"] = self.query_logits(batch, out.get("cond"))
        return out

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every tensor that is trained and therefore leaves the client (averaged by the server)."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
