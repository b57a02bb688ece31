"""DP-SGD local training: the DP path with no noise and no clipping IS plain training, and the
per-episode gradients, clipping and noise are exactly what DP-SGD prescribes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from dp_testkit import expected_dp_step, frozen_client, tiny_config, tiny_model
from hypothesis import given, settings
from hypothesis import strategies as st

from fedvpa_secure.errors import ConfigError
from fedvpa_secure.train.dp_config import DPConfig, UserDPConfig
from fedvpa_secure.train.dp_local import (
    per_sample_loop,
    per_sample_vmap,
    sample_rate,
    train_local_dp,
)
from fedvpa_secure.train.local import ClientState, prior_context, sample_episodes, train_local
from fedvpa_secure.train.tensors import make_batch

CPU = torch.device("cpu")
NO_CLIP = 1e12  # far above any per-episode gradient norm
MIXTURE_METHODS = ("fedvpl-gb", "fedvpa-gp")  # a Gumbel-Softmax prior with local logits alpha


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        float((p - q).detach().abs().max())
        for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def _train_both(method, beta, seed, engine="hooks", noise=0.0, clip=NO_CLIP, steps=2):
    cfg = tiny_config(method, beta=beta)
    client = frozen_client(seed=seed)
    plain = tiny_model(cfg, seed)
    private = copy.deepcopy(plain)
    torch.manual_seed(seed + 100)
    train_local(plain, [client], ClientState(), cfg, steps, 0.5, np.random.default_rng(seed), CPU)
    torch.manual_seed(seed + 100)
    train_local_dp(
        private,
        [client],
        ClientState(),
        cfg,
        steps,
        0.5,
        np.random.default_rng(seed),
        CPU,
        noise,
        clip,
        engine,
        torch.Generator().manual_seed(seed),
    )
    return plain, private


@settings(max_examples=6, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    method=st.sampled_from(["monolithic", "fedvpl", "fedvpl-ortho", "fedvpl-gb", "fedvpa-gp"]),
)
def test_zero_noise_no_clipping_equals_plain_training(seed: int, method: str) -> None:
    # the hooks engine (the default) runs the plain forward pass, so every random draw lines
    # up with plain training, the Monte Carlo KL against the mixture included
    # alpha is learnt by plain training but not under DP (it would carry every episode into every
    # later step): for the mixture methods the paths agree for the first step, before alpha moves
    steps = 1 if method in MIXTURE_METHODS else 2
    plain, private = _train_both(method, 0.05, seed, steps=steps)
    assert _max_diff(plain, private) < 1e-5


@settings(max_examples=3, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    method=st.sampled_from(["monolithic", "fedvpl", "fedvpl-ortho", "fedvpa-gp"]),
)
def test_zero_noise_no_clipping_equals_plain_training_vmap_engine(seed: int, method: str) -> None:
    # fedvpa-gp with beta = 0: its Monte Carlo KL draws its noise in a different tensor layout
    # under vmap (same distribution, other numbers); every other random draw lines up.
    beta = 0.0 if method == "fedvpa-gp" else 0.05
    plain, private = _train_both(method, beta, seed, engine="vmap")
    assert _max_diff(plain, private) < 1e-5


@pytest.mark.parametrize("engine", ["hooks", "vmap"])
def test_oracle_takes_the_dp_path_like_plain_training(engine: str) -> None:
    """The oracle's type one-hot runs under both engines (F.one_hot did not under vmap)."""
    plain, private = _train_both("oracle", 0.05, 3, engine=engine)
    assert _max_diff(plain, private) < 1e-5


def test_control_noise_or_clipping_changes_the_result() -> None:
    """The property above would pass vacuously if the DP path ignored its parameters."""
    plain, noisy = _train_both("fedvpl-ortho", 0.05, 1, noise=1e-12)  # std 1
    assert _max_diff(plain, noisy) > 1e-3
    plain, clipped = _train_both("fedvpl-ortho", 0.05, 1, clip=1e-3)
    assert _max_diff(plain, clipped) > 1e-3


def test_loop_engine_equals_plain_training_for_a_deterministic_model() -> None:
    plain, private = _train_both("monolithic", 0.0, 3, engine="loop")
    assert _max_diff(plain, private) < 1e-5


def test_per_episode_gradients_match_single_episode_backward_passes() -> None:
    cfg = tiny_config("monolithic")
    model = tiny_model(cfg, 0)
    items = sample_episodes([frozen_client()], 4, 2, 10**9, np.random.default_rng(0))
    batch = make_batch(items)
    prior, _ = prior_context(model, ClientState(), 1.0, torch.Generator().manual_seed(0))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    vm = per_sample_vmap(model, batch, cfg, prior, names)
    lp = per_sample_loop(model, batch, cfg, prior, names)
    for n in names:
        assert vm.grads[n].shape[0] == len(items)
        torch.testing.assert_close(vm.grads[n], lp.grads[n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("engine", ["hooks", "vmap", "loop"])
def test_one_dp_step_is_clip_sum_noise_scale_by_hand(engine: str) -> None:
    """Recompute one DP-SGD step from independent per-episode gradients."""
    cfg = tiny_config("monolithic", local_steps=1)
    client = frozen_client()
    model = tiny_model(cfg, 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    clip, z, seed = 0.05, 0.7, 11
    rng = np.random.default_rng(5)
    train_local_dp(
        model,
        [client],
        ClientState(),
        cfg,
        1,
        1.0,
        rng,
        CPU,
        z,
        clip,
        engine,
        torch.Generator().manual_seed(seed),
    )
    assert sample_rate([client], cfg) == 1.0  # every episode in the step, as done by hand
    expected = expected_dp_step(cfg, client, before, clip, z * clip, seed, np.random.default_rng(5))
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), expected[n], rtol=1e-5, atol=1e-6)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        DPConfig()
    with pytest.raises(ConfigError, match="exactly one"):
        DPConfig(target_epsilon=1.0, noise_multiplier=1.0)
    with pytest.raises(ConfigError, match="max_grad_norm"):
        DPConfig(target_epsilon=1.0, max_grad_norm=0.0)
    with pytest.raises(ConfigError, match="accountant"):
        DPConfig(target_epsilon=1.0, accountant="gdp")
    with pytest.raises(ConfigError, match="min_survivors"):
        UserDPConfig(target_epsilon=1.0, min_survivors=2)
    assert DPConfig(noise_multiplier=1.0, epsilon_max=3.0).budget_epsilon == 3.0
