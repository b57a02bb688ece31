"""Evaluation of METHOD.md section 7 on unseen users.

Each evaluation user is personalised from K_ctx of its OWN pairs (disjoint from the pairs
scored), with z = the posterior mean; cross-fitted, so every pair of the user is scored once.
Accuracy is pooled over all scored pairs; per type, on conflicting pairs, and for preference
switching (z set to the prototype of a type, no context).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedvpa_secure.config import TrainConfig
from fedvpa_secure.data.episodes import cross_fit_splits, eval_split
from fedvpa_secure.model.preference_model import EpisodeBatch, PreferenceModel
from fedvpa_secure.model.prior import (
    kl_standard_normal,
    log_diag_gaussian,
    log_mixture_density,
    responsibilities,
)
from fedvpa_secure.train.tensors import ClientTensors, make_batch


@dataclass
class EvalEpisodes:
    """The fixed context/query splits of the evaluation users (the same for all rounds).

    ``clients[i]`` is scored on ``splits[i]``. With cross-fitting a user appears once per fold,
    so every one of its pairs is scored exactly once (each time with a disjoint context); the
    latent diagnostics (silhouette, purity) and the latent scatter then count one posterior
    mean per (user, fold), each inferred from a different context of that user.
    """

    clients: list[ClientTensors]
    splits: list[tuple[tuple[int, ...], tuple[int, ...]]]

    @classmethod
    def build(
        cls,
        clients: Sequence[ClientTensors],
        context_size: int,
        seed: int,
        cross_fit: bool = False,
    ) -> EvalEpisodes:
        rng = np.random.default_rng(seed)
        owners, splits = [], []
        for c in clients:
            k = min(context_size, max(1, c.n_pairs - 1))
            if cross_fit:
                user_splits = cross_fit_splits(c.n_pairs, k, rng)
            else:
                user_splits = [eval_split(c.n_pairs, k, rng)]
            owners += [c] * len(user_splits)
            splits += [(tuple(ctx), tuple(query)) for ctx, query in user_splits]
        return cls(owners, splits)

    @classmethod
    def for_unseen_users(
        cls, clients: Sequence[ClientTensors], train_cfg: TrainConfig
    ) -> EvalEpisodes:
        """The evaluation protocol of reports: the configured evaluation context, cross-fitted."""
        return cls.build(clients, train_cfg.evaluation_context_size, train_cfg.seed + 1, True)

    def batches(self, size: int = 32):
        items = [(c, ctx, q) for c, (ctx, q) in zip(self.clients, self.splits, strict=True)]
        for start in range(0, len(items), size):
            chunk = items[start : start + size]
            yield chunk, make_batch(chunk)


def _accuracy(correct: np.ndarray) -> float:
    return float(correct.mean()) if correct.size else float("nan")


def _prototype_for_types(
    model: PreferenceModel, mus: np.ndarray, types: np.ndarray, n_types: int
) -> tuple[torch.Tensor | None, str]:
    """The conditioning vector standing for each user type when scoring with no context.

    Mixture/ortho methods: the prototype that carries most responsibility for that type's users
    (labels are used only to NAME prototypes, after training). Other latent methods have no
    prototypes: the mean posterior of the type's users stands in, and the report says so.
    """
    if model.spec.oracle:
        return torch.eye(n_types), "type one-hot"
    if not model.spec.latent or len(mus) == 0:
        return None, "none (no latent)"
    mu_t = torch.as_tensor(mus)
    if model.prototypes is not None:
        protos = model.prototypes.detach()
        log_pi = getattr(model, "log_pi", torch.zeros(protos.shape[0]))
        var = getattr(model, "prior_var", torch.ones(protos.shape[0]))
        resp = responsibilities(mu_t, protos, log_pi, var).numpy()
        out = []
        for t in range(n_types):
            sel = resp[types == t]
            k = int(sel.mean(0).argmax()) if len(sel) else 0
            out.append(protos[k])
        return torch.stack(out), "prototype with the highest mean responsibility for the type"
    out = [mu_t[types == t].mean(0) if (types == t).any() else mu_t.mean(0) for t in range(n_types)]
    return torch.stack(out), "mean posterior of the type's users (method has no prototypes)"


@torch.no_grad()
def posterior_means(
    model: PreferenceModel, episodes: EvalEpisodes, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    mus, logvars = [], []
    for _, batch in episodes.batches():
        mu, logvar = model.encode(batch.to(device))
        mus.append(mu.cpu().numpy())
        logvars.append(logvar.cpu().numpy())
    return np.concatenate(mus), np.concatenate(logvars)


@torch.no_grad()
def evaluate(
    model: PreferenceModel,
    episodes: EvalEpisodes,
    user_types: Sequence[str],
    device: torch.device,
    reference: EvalEpisodes | None = None,
    full: bool = True,
) -> dict:
    """Accuracy, switching accuracy and latent diagnostics on the evaluation users.

    ``reference`` (training users) names the prototypes for switching; defaults to ``episodes``.
    """
    model.eval()
    n_types = len(user_types)
    correct, conflict, types, type_labels = [], [], [], []
    logits_all: list[np.ndarray] = []
    batches_for_switch: list[tuple[EpisodeBatch, np.ndarray]] = []
    for chunk, batch in episodes.batches():
        batch = batch.to(device)
        out = model(batch, sample=False)
        logits = out["logits"].cpu().numpy()
        mask = batch.query_mask.cpu().numpy()
        labels = batch.query_label.cpu().numpy()
        for i, (client, _, query) in enumerate(chunk):
            q = np.asarray(query)
            valid = mask[i, : len(q)]
            pred = logits[i, : len(q)][valid] > 0
            correct.append(pred == labels[i, : len(q)][valid].astype(bool))
            conflict.append(client.conflicting[q].numpy()[valid])
            types.append(np.full(valid.sum(), client.user_type))
            type_labels.append(client.type_labels[q].numpy()[valid])
            logits_all.append(logits[i, : len(q)][valid])
        if full:
            batches_for_switch.append((batch, mask))
    correct_a = np.concatenate(correct)
    conflict_a = np.concatenate(conflict)
    types_a = np.concatenate(types)
    result: dict = {
        "accuracy": {
            "overall": _accuracy(correct_a),
            "conflicting": _accuracy(correct_a[conflict_a]),
            "agreeing": _accuracy(correct_a[~conflict_a]),
            "per_type": {user_types[t]: _accuracy(correct_a[types_a == t]) for t in range(n_types)},
            "n_pairs": int(correct_a.size),
            "n_conflicting": int(conflict_a.sum()),
        }
    }
    if not full:
        return result
    result["switching_accuracy"] = _switching(
        model,
        episodes,
        reference or episodes,
        batches_for_switch,
        np.concatenate(type_labels),
        user_types,
        device,
    )
    result["latent"] = latent_diagnostics(model, episodes, device)
    return result


def _switching(model, episodes, reference, batches, type_labels, user_types, device) -> dict:
    n_types = len(user_types)
    ref_types = np.array([c.user_type for c in reference.clients])
    ref_mus = posterior_means(model, reference, device)[0] if model.spec.latent else np.zeros((0,))
    conds, how = _prototype_for_types(model, ref_mus, ref_types, n_types)
    per_type = {}
    flips = []
    for t in range(n_types):
        preds = []
        for batch, mask in batches:
            cond = None if conds is None else conds[t].to(device).expand(mask.shape[0], -1)
            logits = model.query_logits(batch, cond).cpu().numpy()
            preds.append(logits[mask] > 0)
        pred = np.concatenate(preds)
        known = type_labels[:, t] >= 0
        per_type[user_types[t]] = _accuracy(pred[known] == (type_labels[known, t] == 1))
        flips.append(pred)
    flip_rate = float(np.mean(flips[0] != flips[1])) if n_types >= 2 else float("nan")
    out = {"per_type": per_type, "prediction_flip_rate": flip_rate, "type_vector": how}
    return out | _published_type_vectors(model, episodes, user_types, device)


def _published_type_vectors(model, episodes, user_types, device) -> dict:
    """What a published model scores "as a type" with (RewardModel), named from the EVALUATION
    users only: naming from the training users would publish an un-noised statistic of their
    data next to a model whose guarantee does not cover it."""
    if not model.spec.latent or model.spec.oracle:
        return {}
    types = np.array([c.user_type for c in episodes.clients])
    mus = posterior_means(model, episodes, device)[0]
    conds, how = _prototype_for_types(model, mus, types, len(user_types))
    if conds is None:
        return {}
    out: dict = {
        "type_vectors": {user_types[t]: conds[t].cpu().tolist() for t in range(len(user_types))},
        "type_vectors_from": f"evaluation users: {how}",
    }
    if model.prototypes is not None and how.startswith("prototype"):
        protos = model.prototypes.detach().cpu()
        out["type_prototypes"] = {
            user_types[t]: int((protos - conds[t].cpu()).norm(dim=-1).argmin())
            for t in range(len(user_types))
        }
    return out


@torch.no_grad()
def latent_diagnostics(
    model: PreferenceModel, episodes: EvalEpisodes, device: torch.device
) -> dict:
    """Posterior collapse and separation: KL per dim, active units, silhouette, purity."""
    if not model.spec.latent:
        return {"silhouette": None, "kl_per_dim": None, "active_units": None, "purity": None}
    mus, logvars = posterior_means(model, episodes, device)
    types = np.array([c.user_type for c in episodes.clients])
    mu_t, lv_t = torch.as_tensor(mus), torch.as_tensor(logvars)
    d = mus.shape[1]
    kl_std = kl_standard_normal(mu_t, lv_t)  # (E, d)
    if model.spec.mixture_prior:
        gen = torch.Generator().manual_seed(0)
        z = mu_t + torch.randn((64, *mu_t.shape), generator=gen) * (0.5 * lv_t).exp()
        log_q = log_diag_gaussian(z, mu_t, lv_t)
        log_p = log_mixture_density(z, model.prototypes.detach(), model.log_pi, model.prior_var)
        kl_prior = float((log_q - log_p).mean()) / d
    else:
        kl_prior = float(kl_std.sum(-1).mean()) / d
    active = int((mus.var(0) > 0.01).sum()) if len(mus) > 1 else 0
    return {
        "kl_per_dim": kl_prior,
        "kl_per_dim_to_standard_normal": [float(v) for v in kl_std.mean(0)],
        "active_units": active,
        "silhouette": _silhouette(mus, types),
        "purity": _purity(model, mus, types),
    }


def _silhouette(mus: np.ndarray, types: np.ndarray) -> float | None:
    from sklearn.metrics import silhouette_score

    if len(np.unique(types)) < 2 or len(mus) <= len(np.unique(types)):
        return None
    if np.allclose(mus, mus[0]):
        return 0.0
    return float(silhouette_score(mus, types))


def _purity(model: PreferenceModel, mus: np.ndarray, types: np.ndarray) -> float | None:
    """k-way purity of the clustering of posterior means (prototype assignment, else k-means)."""
    from sklearn.cluster import KMeans

    k = len(np.unique(types))
    if len(mus) < k or k < 2:
        return None
    if model.prototypes is not None:
        assign = (
            ((mus[:, None, :] - model.prototypes.detach().numpy()[None]) ** 2).sum(-1).argmin(1)
        )
    else:
        assign = KMeans(n_clusters=k, n_init=4, random_state=0).fit_predict(mus)
    total = sum(np.bincount(types[assign == c]).max() for c in np.unique(assign))
    return float(total / len(types))


def finite_or_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x
