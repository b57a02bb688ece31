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
from fedvpa_secure.model.heads import (
    ContextEncoder,
    LinearRewardDecoder,
    PairFeature,
    RewardDecoder,
)
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
    # (B, K) / (B, Q) float: 1.0 where the pair's prompt is a harmlessness one (Pair.domain);
    # the domain gate's training target only
    ctx_domain: torch.Tensor | None = None
    query_domain: torch.Tensor | None = None

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
        # logistic router on the pair's mean embedding (ModelConfig.domain_gate)
        self.domain_gate = nn.Linear(embed_dim, 1) if model_cfg.domain_gate else None
        gated_dim = 2 * embed_dim if model_cfg.domain_gate else embed_dim
        linear = model_cfg.head == "linear"
        self.feature: nn.Module = (
            nn.Identity() if linear else PairFeature(gated_dim, model_cfg.hidden_dim)
        )
        feature_dim = gated_dim if linear else model_cfg.hidden_dim
        self.encoder: ContextEncoder | None = None
        self.likelihood_posterior = spec.latent and model_cfg.posterior == "likelihood"
        self.logvar_min = model_cfg.logvar_min
        self.likelihood_temperature = model_cfg.likelihood_temperature
        cond_dim = 0
        if spec.latent and self.likelihood_posterior:
            cond_dim = model_cfg.latent_dim  # z = responsibility-weighted prototypes, no encoder
        elif spec.latent:
            self.encoder = ContextEncoder(
                feature_dim,
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
        decoder = LinearRewardDecoder if linear else RewardDecoder
        self.decoder = decoder(feature_dim, cond_dim)
        self.prototypes: nn.Parameter | None = None
        if spec.has_prototypes:
            self.prototypes = nn.Parameter(
                init_prototypes(
                    model_cfg.n_components, model_cfg.latent_dim, objective_cfg.prior_scale, seed
                )
            )
        if self.likelihood_posterior:
            # per-pair mean context log-likelihood of each component over the training population,
            # rebuilt by the server from summed statistics (the balancing offset of the E-step)
            self.register_buffer("ll_offset", torch.zeros(model_cfg.n_components))
        if spec.mixture_prior:
            k = model_cfg.n_components
            self.register_buffer("log_pi", torch.full((k,), -torch.log(torch.tensor(float(k)))))
            self.register_buffer("prior_var", torch.ones(k))

    # -- text -> features -------------------------------------------------------------------
    def _embeddings(self, batch: EpisodeBatch, name: str) -> torch.Tensor:
        if self.backbone is None or batch.token_ids is None:
            return getattr(batch, name)
        ids, att = batch.token_ids[name], batch.token_att[name]
        b, n, t = ids.shape
        return self.backbone(ids.reshape(b * n, t), att.reshape(b * n, t)).reshape(b, n, -1)

    def pair_features(
        self, batch: EpisodeBatch, first: str, second: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Features of both responses of every pair, and the domain gate's logit per pair.

        The gate reads the mean of the pair's two embeddings (the shared prompt dominates it),
        so both responses of a pair are routed alike. Its value is detached from the reward:
        the router learns the domain from the source tags only, never from preference labels.
        """
        e1, e2 = self._embeddings(batch, first), self._embeddings(batch, second)
        gate_logit = None
        if self.domain_gate is not None:
            gate_logit = self.domain_gate((e1 + e2) / 2).squeeze(-1)  # (B, N)
            g = torch.sigmoid(gate_logit).detach().unsqueeze(-1)
            e1 = torch.cat([e1 * (1 - g), e1 * g], dim=-1)
            e2 = torch.cat([e2 * (1 - g), e2 * g], dim=-1)
        return self.feature(e1), self.feature(e2), gate_logit

    # -- pieces -------------------------------------------------------------------------------
    def encode(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior q(z | C) from the context pairs only (never the query pairs)."""
        if self.likelihood_posterior:
            mu, _ = self.context_responsibilities(batch)
            return mu, torch.full_like(mu, self.logvar_min)
        if self.encoder is None:
            raise RuntimeError(f"method {self.spec.name!r} has no latent")
        fc, fr, _ = self.pair_features(batch, "ctx_chosen", "ctx_rejected")
        return self.encoder(fc, fr, batch.ctx_mask)

    def context_mean_loglik(self, batch: EpisodeBatch) -> torch.Tensor:
        """(B, K): per-pair mean Bradley-Terry log-likelihood of the user's own context labels
        under each prototype, sum_C log sigmoid(r(chosen, P_k) - r(rejected, P_k)) / |C|.

        Only context pairs enter (never the query pairs being scored).
        """
        if self.prototypes is None:
            raise RuntimeError("the likelihood posterior needs prototypes")
        fc, fr, _ = self.pair_features(batch, "ctx_chosen", "ctx_rejected")  # (B, N, H) each
        b, n, h = fc.shape
        k = self.prototypes.shape[0]
        z = self.prototypes[None, :, None, :]  # (1, K, 1, d): one condition per prototype
        margin = self.decoder(fc.unsqueeze(1).expand(b, k, n, h), z) - self.decoder(
            fr.unsqueeze(1).expand(b, k, n, h), z
        )  # (B, K, N)
        m = batch.ctx_mask.to(margin.dtype).unsqueeze(1)
        return (torch.nn.functional.logsigmoid(margin) * m).sum(-1) / m.sum(-1).clamp(min=1.0)

    def context_responsibilities(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The likelihood posterior (ModelConfig.posterior): (z, r) with r (B, K), z = r @ P.

        r_k = softmax_k(|C| * (mean context log-likelihood under P_k - offset_k) / T). The
        offset is the training population's mean of the same quantity, rebuilt by the server from
        summed statistics: a balanced E-step. Without it a component that merely fits the pairs
        EVERY user agrees on better wins every user (measured on synthetic: all users on one
        component by round 2, 0.49-0.57 on controversial pairs).
        """
        mean_ll = self.context_mean_loglik(batch)
        n_ctx = batch.ctx_mask.to(mean_ll.dtype).sum(-1, keepdim=True).clamp(min=1.0)
        logits = n_ctx * (mean_ll - self.ll_offset) / self.likelihood_temperature
        resp = torch.softmax(logits, dim=-1)
        return resp @ self.prototypes, resp

    def query_logits(self, batch: EpisodeBatch, cond: torch.Tensor | None) -> torch.Tensor:
        """r(a, z) - r(b, z) for every query pair: the Bradley-Terry logit that a wins."""
        return self._query_scores(batch, cond)[0]

    def _query_scores(
        self, batch: EpisodeBatch, cond: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        fa, fb, gate_logit = self.pair_features(batch, "query_a", "query_b")
        c = None if cond is None else cond.unsqueeze(1)
        return self.decoder(fa, c) - self.decoder(fb, c), gate_logit

    @staticmethod
    def domain_nll(
        gate_logit: torch.Tensor, domain: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """(B,) the router's mean cross-entropy against the query pairs' source tags."""
        nll = torch.nn.functional.binary_cross_entropy_with_logits(
            gate_logit, domain, reduction="none"
        )
        m = mask.to(nll.dtype)
        return (nll * m).sum(-1) / m.sum(-1).clamp(min=1.0)

    def condition(self, batch: EpisodeBatch, sample: bool) -> dict[str, torch.Tensor]:
        """The conditioning vector for the decoder, by method."""
        if self.spec.oracle:
            # a comparison, not F.one_hot: one_hot reads the max index (.item()), which
            # torch.func.vmap (the DP-SGD vmap engine) cannot trace
            types = torch.arange(self.n_types, device=batch.user_type.device)
            return {"cond": (batch.user_type.unsqueeze(-1) == types).to(torch.float32)}
        if not self.spec.latent:
            return {}
        if self.likelihood_posterior:
            mu, resp = self.context_responsibilities(batch)
            logvar = torch.full_like(mu, self.logvar_min)
            return {"cond": mu, "mu": mu, "logvar": logvar, "z": mu, "resp": resp}
        mu, logvar = self.encode(batch)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        return {"cond": z, "mu": mu, "logvar": logvar, "z": z}

    def forward(self, batch: EpisodeBatch, sample: bool = True) -> dict[str, torch.Tensor]:
        out = self.condition(batch, sample)
        out["logits"], gate_logit = self._query_scores(batch, out.get("cond"))
        if gate_logit is not None and batch.query_domain is not None:
            out["domain_nll"] = self.domain_nll(gate_logit, batch.query_domain, batch.query_mask)
        return out

    def trainable_state(self) -> dict[str, torch.Tensor]:
        """Every tensor that is trained and therefore leaves the client (averaged by the server)."""
        return {n: p.detach() for n, p in self.named_parameters() if p.requires_grad}
