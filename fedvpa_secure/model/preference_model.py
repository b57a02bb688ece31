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
        self.likelihood_posterior = spec.latent and model_cfg.posterior == "likelihood"
        self.logvar_min = model_cfg.logvar_min
        self.likelihood_temperature = model_cfg.likelihood_temperature
        cond_dim = 0
        if spec.latent and self.likelihood_posterior:
            cond_dim = model_cfg.latent_dim  # z = responsibility-weighted prototypes, no encoder
        elif spec.latent:
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
        if self.likelihood_posterior:
            # per-pair mean context log-likelihood of each component over the training population,
            # rebuilt by the server from summed statistics (the balancing offset of the E-step)
            self.register_buffer("ll_offset", torch.zeros(model_cfg.n_components))
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
        if self.likelihood_posterior:
            mu, _ = self.context_responsibilities(batch)
            return mu, torch.full_like(mu, self.logvar_min)
        if self.encoder is None:
            raise RuntimeError(f"method {self.spec.name!r} has no latent")
        fc = self._features(batch, "ctx_chosen")
        fr = self._features(batch, "ctx_rejected")
        return self.encoder(fc, fr, batch.ctx_mask)

    def context_mean_loglik(self, batch: EpisodeBatch) -> torch.Tensor:
        """(B, K): per-pair mean Bradley-Terry log-likelihood of the user's own context labels
        under each prototype, sum_C log sigmoid(r(chosen, P_k) - r(rejected, P_k)) / |C|.

        Only context pairs enter (never the query pairs being scored).
        """
        if self.prototypes is None:
            raise RuntimeError("the likelihood posterior needs prototypes")
        fc = self._features(batch, "ctx_chosen")  # (B, N, H)
        fr = self._features(batch, "ctx_rejected")
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
        if self.likelihood_posterior:
            mu, resp = self.context_responsibilities(batch)
            logvar = torch.full_like(mu, self.logvar_min)
            return {"cond": mu, "mu": mu, "logvar": logvar, "z": mu, "resp": resp}
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
