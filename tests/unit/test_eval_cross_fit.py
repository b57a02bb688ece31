"""Evaluation of unseen users: a configurable context length, every pair scored once."""

from __future__ import annotations

import math

import pytest
import torch
from learner_kit import random_clients

from fedvpa_secure.config import ExperimentConfig, ModelConfig, TrainConfig
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.model.preference_model import PreferenceModel
from fedvpa_secure.train.evaluate import EvalEpisodes, evaluate

DIM = 16
TYPES = ["type-0", "type-1"]


def test_eval_context_size_defaults_to_the_training_context() -> None:
    assert TrainConfig(context_size=16).evaluation_context_size == 16
    assert TrainConfig(context_size=16, eval_context_size=64).evaluation_context_size == 64


@pytest.mark.parametrize("bad", [-1, 513])
def test_eval_context_size_out_of_range_is_refused(bad: int) -> None:
    with pytest.raises(ConfigError, match="eval_context_size"):
        TrainConfig(eval_context_size=bad)


def test_unseen_users_are_cross_fitted_with_the_evaluation_context() -> None:
    clients = random_clients(3, 40, DIM)
    train_cfg = TrainConfig(context_size=4, eval_context_size=30)
    episodes = EvalEpisodes.for_unseen_users(clients, train_cfg)
    folds = math.ceil(40 / (40 - 30))
    assert len(episodes.splits) == 3 * folds
    for client in clients:
        mine = [s for c, s in zip(episodes.clients, episodes.splits, strict=True) if c is client]
        assert len(mine) == folds
        assert sorted(i for _, query in mine for i in query) == list(range(40))
        for context, query in mine:
            assert len(context) == 30 and not set(context) & set(query)


def test_every_pair_of_every_unseen_user_is_scored_once() -> None:
    """Cross-fitting scores all pairs; the single split it replaces (control) scores only those
    left after the context, so a long context would otherwise cost most of the scored pairs."""
    clients = random_clients(4, 40, DIM)
    cfg = ExperimentConfig(
        method="fedvpl",
        model=ModelConfig(latent_dim=8, hidden_dim=16, attention_heads=2),
        train=TrainConfig(context_size=4, eval_context_size=30),
    )
    model = PreferenceModel(cfg.spec, cfg.model, cfg.objective, DIM, len(TYPES))
    cpu = torch.device("cpu")
    crossed = EvalEpisodes.for_unseen_users(clients, cfg.train)
    single = EvalEpisodes.build(clients, 30, 1)
    scored = evaluate(model, crossed, TYPES, cpu, full=False)["accuracy"]
    control = evaluate(model, single, TYPES, cpu, full=False)["accuracy"]
    assert scored["n_pairs"] == 4 * 40
    assert control["n_pairs"] == 4 * (40 - 30)
    assert scored["n_conflicting"] == sum(int(c.conflicting.sum()) for c in clients)
