"""Secret randomness is secret: replaying a client's DP round with its public seed and other
data gives noise uncorrelated with the victim's; with the noise seed fixed (the control, the
old rule of seeding it from the public round seed) the replay recovers the noise exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dp_testkit import frozen_client, tiny_config, tiny_model

from fedvpa_secure.train import secret_noise
from fedvpa_secure.train.dp_config import DPConfig
from fedvpa_secure.train.dp_local import train_local_dp
from fedvpa_secure.train.dp_round import release_prior_statistics
from fedvpa_secure.train.local import ClientState

CPU = torch.device("cpu")
PUBLIC_SEED = 1234  # what the server and report.json know
CLIP, Z = 0.05, 2.0


def _step(client, z: float, q_episodes: int = 100) -> np.ndarray:
    """One DP-SGD step from the public seed; the flat parameter delta it releases."""
    cfg = tiny_config("monolithic", local_steps=1, episodes_per_step=q_episodes)
    model = tiny_model(cfg, 0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    rng = np.random.default_rng(PUBLIC_SEED)
    train_local_dp(model, [client], ClientState(), cfg, 1, 1.0, rng, CPU, z, CLIP, "hooks")
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    return (after - before).double().numpy()


def _noise(client) -> np.ndarray:
    """The noise in a release: the noisy step minus the same step without noise (SGD is linear)."""
    return _step(client, Z) - _step(client, 0.0)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def test_replayed_dp_sgd_noise_is_uncorrelated_with_the_victims() -> None:
    victim, attacker_data = frozen_client(seed=0), frozen_client(seed=99)
    victim_noise, replay_noise = _noise(victim), _noise(attacker_data)
    dim = victim_noise.size
    assert dim > 200
    assert np.std(victim_noise) > 0  # there is noise to find
    assert abs(_corr(victim_noise, replay_noise)) < 4.0 / np.sqrt(dim)


def test_control_fixed_noise_seed_lets_the_replay_recover_the_noise(monkeypatch) -> None:
    """The same replay with the noise seed fixed (as when it came from the public round seed)."""
    monkeypatch.setattr(secret_noise, "os_entropy", lambda: PUBLIC_SEED)
    victim, attacker_data = frozen_client(seed=0), frozen_client(seed=99)
    victim_noise, replay_noise = _noise(victim), _noise(attacker_data)
    # equal up to float32 rounding of the two parameter updates it was estimated from
    np.testing.assert_allclose(replay_noise, victim_noise, atol=1e-6)
    assert _corr(victim_noise, replay_noise) > 0.9999


def _prior_release(client) -> np.ndarray:
    cfg = tiny_config("fedvpa-gp", dp=DPConfig(target_epsilon=8.0, prior_noise_multiplier=2.0))
    model = tiny_model(cfg, 0)
    dp = cfg.dp
    rng = np.random.default_rng(PUBLIC_SEED)
    stats = release_prior_statistics(model, client, cfg, dp, rng, CPU)
    assert stats is not None
    return torch.cat([v.flatten() for v in stats.values()]).numpy()


@pytest.mark.parametrize("fixed", [False, True])
def test_prior_release_noise_is_secret_unless_the_seed_is_fixed(monkeypatch, fixed: bool) -> None:
    """Two releases of the SAME data from the same public seed: equal only under the control."""
    if fixed:
        monkeypatch.setattr(secret_noise, "os_entropy", lambda: PUBLIC_SEED)
    client = frozen_client(seed=0)
    first, second = _prior_release(client), _prior_release(client)
    assert np.array_equal(first, second) == fixed


@pytest.mark.parametrize("fixed", [False, True])
def test_poisson_sampling_of_episodes_is_secret(monkeypatch, fixed: bool) -> None:
    """With q < 1 the episodes in a step are drawn secretly: replays from the public seed pick
    other batches (over 8 steps some batch size differs); the control picks the same ones."""
    if fixed:
        monkeypatch.setattr(secret_noise, "os_entropy", lambda: PUBLIC_SEED)
    cfg = tiny_config("monolithic", local_steps=8, episodes_per_step=2)
    client = frozen_client(n=60)
    sizes = []
    for _ in range(2):
        model = tiny_model(cfg, 0)
        rng = np.random.default_rng(PUBLIC_SEED)
        result = train_local_dp(model, [client], ClientState(), cfg, 8, 1.0, rng, CPU, Z, CLIP)
        sizes.append(result.batch_sizes)
    assert (sizes[0] == sizes[1]) == fixed
