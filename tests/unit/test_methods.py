"""Each --method switch really changes the code path; batches never leak query pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from learner_kit import random_clients

from fedvpa_secure.config import (
    ExperimentConfig,
    ModelConfig,
    ObjectiveConfig,
    TrainConfig,
    method_spec,
)
from fedvpa_secure.model import objective as objective_module
from fedvpa_secure.model.preference_model import PreferenceModel
from fedvpa_secure.train.aggregation import plain_sum
from fedvpa_secure.train.evaluate import EvalEpisodes
from fedvpa_secure.train.federation import run_federation
from fedvpa_secure.train.local import sample_episodes
from fedvpa_secure.train.tensors import make_batch

DIM = 16
TYPES = ["type-0", "type-1"]


def _cfg(method: str, rounds: int = 2) -> ExperimentConfig:
    return ExperimentConfig(
        method=method,
        model=ModelConfig(latent_dim=8, hidden_dim=16, attention_heads=2),
        objective=ObjectiveConfig(prior_warmup_fraction=0.0, warmup_fraction=0.0),
        train=TrainConfig(rounds=rounds, local_steps=2, context_size=4, query_size=2),
    )


def _model(method: str) -> PreferenceModel:
    cfg = _cfg(method)
    return PreferenceModel(cfg.spec, cfg.model, cfg.objective, DIM, len(TYPES))


def _batch(seed: int = 0):
    clients = random_clients(2, 12, DIM, seed)
    rng = np.random.default_rng(seed)
    return make_batch(sample_episodes(clients, 4, 2, 8, rng))


def test_monolithic_has_no_latent_and_ignores_the_context():
    model = _model("monolithic")
    assert model.encoder is None and model.prototypes is None
    batch = _batch()
    out1 = model(batch, sample=False)["logits"]
    batch.ctx_chosen, batch.ctx_rejected = batch.ctx_rejected, batch.ctx_chosen
    assert "mu" not in model(batch, sample=False)
    assert torch.equal(out1, model(batch, sample=False)["logits"])


def test_latent_methods_depend_on_the_context():
    model = _model("fedvpl")
    batch = _batch()
    out1 = model(batch, sample=False)["logits"]
    batch.ctx_chosen, batch.ctx_rejected = batch.ctx_rejected, batch.ctx_chosen
    assert not torch.allclose(out1, model(batch, sample=False)["logits"])


def test_oracle_is_told_the_type():
    model = _model("oracle")
    assert model.encoder is None
    batch = _batch()
    out1 = model(batch, sample=False)["logits"]
    batch.user_type = 1 - batch.user_type
    assert not torch.allclose(out1, model(batch, sample=False)["logits"])


@pytest.mark.parametrize(
    ("method", "has_prototypes", "has_mixture"),
    [
        ("fedvpl", False, False),
        ("fedvpl-ortho", True, False),
        ("fedvpl-gb", True, True),
        ("fedvpa-gp", True, True),
        ("central-vpl", False, False),
    ],
)
def test_prior_parts_exist_only_where_the_method_has_them(method, has_prototypes, has_mixture):
    model = _model(method)
    assert (model.prototypes is not None) == has_prototypes
    assert hasattr(model, "log_pi") == has_mixture


def _spy(monkeypatch, name):
    calls = []
    real = getattr(objective_module, name)

    def wrapped(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(objective_module, name, wrapped)
    return calls


@pytest.mark.parametrize(
    ("method", "mixture_kl", "pull", "ortho"),
    [
        ("fedvpl", False, False, False),
        ("fedvpl-ortho", False, True, True),
        ("fedvpl-gb", True, False, False),
        ("fedvpa-gp", True, True, True),
    ],
)
def test_loss_terms_follow_the_method(monkeypatch, method, mixture_kl, pull, ortho):
    mixture_calls = _spy(monkeypatch, "log_mixture_density")
    standard_calls = _spy(monkeypatch, "kl_standard_normal")
    pull_calls = _spy(monkeypatch, "pull_to_component")
    ortho_calls = _spy(monkeypatch, "orthogonality_penalty")
    cfg = _cfg(method, rounds=1)
    clients = random_clients(4, 12, DIM)
    model = PreferenceModel(cfg.spec, cfg.model, cfg.objective, DIM, 2)
    episodes = EvalEpisodes.build(clients, 4, 0)
    run_federation(model, clients, episodes, episodes, TYPES, cfg, torch.device("cpu"))
    assert bool(mixture_calls) == mixture_kl
    assert bool(standard_calls) == (not mixture_kl)
    assert bool(pull_calls) == pull
    assert bool(ortho_calls) == ortho


@pytest.mark.parametrize(("method", "federated"), [("central-vpl", False), ("fedvpl", True)])
def test_only_federated_methods_aggregate(method, federated):
    calls = []

    def counting_sum(updates):
        calls.append(len(updates))
        return plain_sum(updates)

    cfg = _cfg(method, rounds=2)
    clients = random_clients(4, 12, DIM)
    model = PreferenceModel(cfg.spec, cfg.model, cfg.objective, DIM, 2)
    episodes = EvalEpisodes.build(clients, 4, 0)
    run_federation(
        model, clients, episodes, episodes, TYPES, cfg, torch.device("cpu"), counting_sum
    )
    assert calls == ([4, 4] if federated else [])


def test_method_spec_table_matches_method_md():
    assert method_spec("fedvpa-gp").mixture_prior and method_spec("fedvpa-gp").ortho_pull
    assert not method_spec("fedvpl-gb").ortho_pull
    assert method_spec("fedvpl-ortho").ortho_pull and not method_spec("fedvpl-ortho").mixture_prior
    assert not method_spec("central-vpl").federated
    assert method_spec("oracle").oracle and not method_spec("oracle").latent


def test_episodes_in_a_batch_keep_context_and_query_apart():
    clients = random_clients(3, 30, DIM)
    rng = np.random.default_rng(1)
    for _ in range(20):
        items = sample_episodes(clients, 5, 3, 100, rng)
        seen: dict[str, set[int]] = {}
        for client, ctx, query in items:
            assert not set(ctx) & set(query)
            used = seen.setdefault(client.client_id, set())
            assert not used & (set(ctx) | set(query)), "a pair is in two episodes of one step"
            used |= set(ctx) | set(query)


def test_batch_orders_context_pairs_as_the_user_labelled_them():
    clients = random_clients(1, 10, DIM)
    c = clients[0]
    batch = make_batch([(c, (0, 1, 2, 3), (4, 5))])
    for slot, idx in enumerate((0, 1, 2, 3)):
        chosen = c.emb_a[idx] if c.label[idx] == 1 else c.emb_b[idx]
        assert torch.equal(batch.ctx_chosen[0, slot], chosen)
    assert torch.equal(batch.query_a[0, 0], c.emb_a[4])
    assert torch.equal(batch.query_label[0], c.label[[4, 5]])
