"""ModelConfig.posterior="likelihood": the balanced E-step that replaces the context encoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from learner_kit import random_clients

from fedvpa_secure.config import ExperimentConfig, ModelConfig, ObjectiveConfig, TrainConfig
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.model.preference_model import PreferenceModel
from fedvpa_secure.train.aggregation import LL_FLOOR, PRIOR_LL, PRIOR_N, apply_sums
from fedvpa_secure.train.evaluate import EvalEpisodes
from fedvpa_secure.train.federation import client_prior_statistics, run_federation
from fedvpa_secure.train.local import sample_episodes
from fedvpa_secure.train.tensors import make_batch

DIM = 16
TYPES = ["type-0", "type-1"]
MODEL = ModelConfig(latent_dim=8, hidden_dim=16, attention_heads=2, posterior="likelihood")


def _cfg(method: str = "fedvpa-gp", rounds: int = 2) -> ExperimentConfig:
    return ExperimentConfig(
        method=method,
        model=MODEL,
        objective=ObjectiveConfig(prior_warmup_fraction=0.0, warmup_fraction=0.0),
        train=TrainConfig(rounds=rounds, local_steps=2, context_size=4, query_size=2),
    )


def _model() -> PreferenceModel:
    cfg = _cfg()
    return PreferenceModel(cfg.spec, cfg.model, cfg.objective, DIM, len(TYPES))


def _batch(seed: int = 0):
    clients = random_clients(2, 12, DIM, seed)
    return make_batch(sample_episodes(clients, 4, 2, 8, np.random.default_rng(seed)))


@pytest.mark.parametrize("method", ["monolithic", "oracle", "fedvpl", "central-vpl"])
def test_methods_without_prototypes_refuse_it(method):
    with pytest.raises(ConfigError, match="posterior"):
        _cfg(method)


def test_record_level_dp_refuses_it_with_the_way_out():
    from fedvpa_secure.train.dp_config import DPConfig

    with pytest.raises(ConfigError, match="does not run under record-level DP-SGD"):
        ExperimentConfig(method="fedvpa-gp", model=MODEL, dp=DPConfig(noise_multiplier=1.0))


def test_the_dp_hooks_engine_refuses_prototypes_used_in_the_forward_pass():
    """The engine takes per-episode prototype gradients from the loss only; this posterior
    also conditions the decoder on them, so the engine must refuse rather than drop a term."""
    from fedvpa_secure.train.dp_hooks import per_sample_hooks
    from fedvpa_secure.train.local import ClientState, prior_context

    cfg, model = _cfg(), _model()
    prior, _ = prior_context(model, ClientState(), 1.0, torch.Generator().manual_seed(0))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    with pytest.raises(ConfigError, match="forward pass: use engine='loop'"):
        per_sample_hooks(model, _batch(), cfg, prior, names)


def test_z_is_a_mixture_of_prototypes_from_the_context_only():
    model = _model()
    assert model.encoder is None
    batch = _batch()
    out = model(batch, sample=False)
    resp = out["resp"]
    assert torch.allclose(resp.sum(-1), torch.ones(resp.shape[0]))
    assert torch.allclose(out["z"], resp @ model.prototypes)
    # the query pairs never enter z
    batch.query_a, batch.query_b = batch.query_b, batch.query_a
    assert torch.equal(out["z"], model(batch, sample=False)["z"])
    # flipping every context label changes it
    batch.ctx_chosen, batch.ctx_rejected = batch.ctx_rejected, batch.ctx_chosen
    assert not torch.allclose(out["z"], model(batch, sample=False)["z"])


def test_the_offset_balances_the_e_step_and_comes_from_sums():
    model = _model()
    with torch.no_grad():
        mean_ll = model.context_mean_loglik(_batch())
    n = mean_ll.shape[0]
    sums = {
        PRIOR_N: np.array([n / 2, n / 2]),
        "prior/v": np.ones(2),
        PRIOR_LL: mean_ll.sum(0).double().numpy(),
        "weight": np.array([1.0]),
    }
    apply_sums(model, sums, 1.0)
    expected = mean_ll.mean(0) - mean_ll.mean()
    assert torch.allclose(model.ll_offset, expected, atol=1e-6)
    # with the population's own offset, the mean E-step logit difference is zero
    logits = mean_ll - model.ll_offset
    assert abs(float((logits[:, 0] - logits[:, 1]).mean())) < 1e-5


def _offset_from(n_total: float, ll: list[float]) -> torch.Tensor:
    model = _model()
    sums = {
        PRIOR_N: np.array([n_total / 2, n_total / 2]),
        "prior/v": np.ones(2),
        PRIOR_LL: np.array(ll),
        "weight": np.array([1.0]),
    }
    apply_sums(model, sums, 1.0)
    return model.ll_offset.clone()


@pytest.mark.parametrize("n_total", [0.05, -3.0])
def test_a_noisy_sum_cannot_push_the_offset_outside_the_clamped_range(n_total: float):
    """User-level DP noise on a few users' sums: sum(n) near zero or negative, ll noisy."""
    # the means are clipped into [-LL_FLOOR, 0] (-40 -> -10, +3 -> 0), then centred; unclamped
    # they would be -40 and +3 (episodes floored at 1), centred -21.5 / +21.5
    offset = _offset_from(n_total, [-40.0, 3.0])
    assert torch.allclose(offset, torch.tensor([-LL_FLOOR / 2, LL_FLOOR / 2]))


def test_an_offset_inside_the_range_is_left_as_the_sums_say():
    """CONTROL for the clamp: sums a real population produces pass through unchanged."""
    offset = _offset_from(4.0, [-8.0, -4.0])  # means -2 and -1
    assert torch.allclose(offset, torch.tensor([-0.5, 0.5]))


def test_clients_release_the_summed_log_likelihood_statistic():
    cfg = _cfg()
    model = PreferenceModel(cfg.spec, cfg.model, cfg.objective, DIM, len(TYPES))
    client = random_clients(1, 12, DIM, 3)[0]
    stats = client_prior_statistics(
        model, client, cfg, np.random.default_rng(0), torch.device("cpu")
    )
    assert stats["ll"].shape == (2,)
    assert torch.all(stats["ll"] <= 0) and torch.all(stats["ll"] >= -LL_FLOOR * stats["n"].sum())


def test_a_short_federation_runs_and_sets_the_offset():
    cfg = _cfg(rounds=2)
    model = PreferenceModel(cfg.spec, cfg.model, cfg.objective, DIM, len(TYPES))
    train = random_clients(4, 12, DIM, 0)
    episodes = EvalEpisodes.build(random_clients(2, 12, DIM, 1), 4, 1)
    history = run_federation(model, train, episodes, episodes, TYPES, cfg, torch.device("cpu"))
    assert all(np.isfinite(r.loss) for r in history.rounds)
    assert torch.any(model.ll_offset != 0)
