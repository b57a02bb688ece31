"""Warm-up schedules and the one-time prototype re-seeding from summed moments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedvpa_secure.config import ExperimentConfig, ModelConfig, ObjectiveConfig, TrainConfig
from fedvpa_secure.model.preference_model import PreferenceModel
from fedvpa_secure.model.prior import moment_statistics, orthogonality_penalty
from fedvpa_secure.train.aggregation import (
    PRIOR_M1,
    PRIOR_M2,
    PRIOR_N,
    ServerOptimizer,
    reseed_prototypes_from_sums,
    server_step,
)


def test_warmup_ramps_beta_and_switches_the_mixture_on_once():
    obj = ObjectiveConfig(beta=0.1, pull_weight=1.0, warmup_fraction=0.5, prior_warmup_fraction=0.5)
    rounds = 10
    sched = [obj.at_round(r, rounds) for r in range(rounds)]
    assert [s.use_mixture for s in sched] == [False] * 5 + [True] * 5
    assert sched[0].beta == pytest.approx(0.02) and sched[4].beta == pytest.approx(0.1)
    assert all(s.pull_weight == 0 for s in sched[:5])
    assert 0 < sched[5].pull_weight < sched[-1].pull_weight == pytest.approx(1.0)
    no_warmup = ObjectiveConfig(warmup_fraction=0.0, prior_warmup_fraction=0.0)
    assert no_warmup.at_round(0, 3).use_mixture and no_warmup.at_round(0, 3).beta == no_warmup.beta


def _model(k: int = 2, d: int = 6) -> PreferenceModel:
    cfg = ExperimentConfig(
        model=ModelConfig(latent_dim=d, n_components=k, hidden_dim=8, attention_heads=2)
    )
    return PreferenceModel(cfg.spec, cfg.model, cfg.objective, 8, 2)


def _sums_for(mu: np.ndarray, k: int) -> dict:
    m1, m2 = moment_statistics(torch.as_tensor(mu), mu_clip=100.0)
    return {PRIOR_N: np.full(k, len(mu) / k), PRIOR_M1: m1.numpy(), PRIOR_M2: m2.numpy().ravel()}


@pytest.mark.parametrize("k", [2, 3])
def test_reseeded_prototypes_are_orthogonal_and_split_the_population(k):
    rng = np.random.default_rng(0)
    d = 6
    # k groups of users around a shared offset, spread on a circle in the plane of axes 2 and 4
    angles = 2 * np.pi * np.arange(k) / k
    centres = np.full((k, d), 0.7)
    centres[:, 2] += 0.3 * np.cos(angles)
    centres[:, 4] += 0.3 * np.sin(angles)
    mu = np.concatenate([c + 0.01 * rng.standard_normal((20, d)) for c in centres])
    model = _model(k, d)
    bias_before = model.encoder.mu.bias.detach().clone()
    assert reseed_prototypes_from_sums(model, _sums_for(mu, k), scale=5.0)
    protos = model.prototypes.detach()
    assert orthogonality_penalty(protos, 5.0).item() == pytest.approx(0.0, abs=1e-4)
    # the encoder's output moves by the same shift for every user
    moved = torch.as_tensor(mu, dtype=torch.float32) + (
        model.encoder.mu.bias.detach() - bias_before
    )
    nearest = ((moved[:, None] - protos[None]) ** 2).sum(-1).argmin(1).reshape(k, 20)
    if k == 2:
        groups = [set(row.tolist()) for row in nearest]
        assert all(len(g) == 1 for g in groups), "each group must sit in one component"
        assert len(set().union(*groups)) == k, "the two groups must land in different components"
    else:
        # K >= 3: the plane of variation is found, its rotation is not (isotropic here); the
        # prototypes' differences must lie in that plane (axes 2 and 4)
        diffs = (protos[1:] - protos[0]).numpy()
        off_plane = np.delete(diffs, [2, 4], axis=1)
        assert np.abs(off_plane).max() < 0.2 * np.abs(diffs).max()


def test_random_prototypes_would_not_split_it_control():
    # control: the same population against the initial random prototypes ends in one component
    d = 6
    axis = np.zeros(d)
    axis[2] = 1.0
    mu = np.concatenate([np.full((20, d), 0.7) + o * axis for o in (0.05, -0.05)])
    model = _model(2, d)
    protos = model.prototypes.detach()
    nearest = (
        ((torch.as_tensor(mu, dtype=torch.float32)[:, None] - protos[None]) ** 2).sum(-1).argmin(1)
    )
    assert len(set(nearest.tolist())) == 1


def test_server_step_reseeds_exactly_when_the_warmup_ends():
    cfg = ExperimentConfig(
        model=ModelConfig(latent_dim=6, hidden_dim=8, attention_heads=2),
        objective=ObjectiveConfig(prior_warmup_fraction=0.5),
        train=TrainConfig(rounds=4),
    )
    model = PreferenceModel(cfg.spec, cfg.model, cfg.objective, 8, 2)
    opt = ServerOptimizer(model, "avg", 1.0)
    mu = np.random.default_rng(1).standard_normal((30, 6))
    sums = {**_sums_for(mu, 2), "prior/v": np.ones(2), "weight": np.array([1.0])}
    before = model.prototypes.detach().clone()
    server_step(model, sums, opt, cfg, round_index=0)
    assert torch.equal(before, model.prototypes.detach())
    server_step(model, sums, opt, cfg, round_index=1)  # next round (2) is the first mixture round
    after = model.prototypes.detach().clone()
    assert not torch.equal(before, after)
    server_step(model, sums, opt, cfg, round_index=2)
    assert torch.equal(after, model.prototypes.detach())


def test_fedadam_starts_only_after_the_fedavg_fraction():
    """server_adam_start_fraction: FedAvg (step = mean delta) first, FedAdam from then on."""
    cfg = ExperimentConfig(
        method="monolithic",
        model=ModelConfig(latent_dim=6, hidden_dim=8, attention_heads=2),
        train=TrainConfig(
            rounds=4,
            server_optimizer="adam",
            server_learning_rate=0.01,
            server_adam_start_fraction=0.5,
        ),
    )
    model = PreferenceModel(cfg.spec, cfg.model, cfg.objective, 8, 2)
    opt = ServerOptimizer(model, "adam", 0.01)
    name, param = next(iter(model.named_parameters()))
    sums = {f"delta/{name}": np.full(tuple(param.shape), 0.5), "weight": np.array([1.0])}
    for n, p in model.named_parameters():
        sums.setdefault(f"delta/{n}", np.zeros(tuple(p.shape)))
    for round_index, step in ((0, 0.5), (1, 0.5), (2, 0.01), (3, 0.01)):
        before = param.detach().clone()
        server_step(model, sums, opt, cfg, round_index)
        moved = (param.detach() - before).abs()
        assert torch.allclose(moved, torch.full_like(moved, step), rtol=1e-3), round_index
