"""The prior release's noise is calibrated to a share of the budget, so low targets are usable."""

from __future__ import annotations

import pytest

from fedvpa_secure.config import ExperimentConfig, TrainConfig
from fedvpa_secure.errors import BudgetExceededError, ConfigError
from fedvpa_secure.train.dp_config import PRIOR_BUDGET_SHARE, DPConfig, resolve_prior_noise
from fedvpa_secure.train.dp_round import calibrate_client_noise
from privacy import GaussianEvent, make_accountant


def _prior_epsilon(dp: DPConfig, rounds: int) -> float:
    acc = make_accountant(dp.accountant)
    acc.compose(GaussianEvent(dp.prior_noise_multiplier), count=rounds)
    return acc.get_epsilon(dp.delta)


@pytest.mark.parametrize(("epsilon", "rounds"), [(1.0, 40), (4.0, 40), (8.0, 5)])
def test_prior_releases_spend_their_share_of_the_budget(epsilon: float, rounds: int) -> None:
    cfg = ExperimentConfig(dp=DPConfig(target_epsilon=epsilon), train=TrainConfig(rounds=rounds))
    spent = _prior_epsilon(cfg.dp, rounds)
    assert spent <= PRIOR_BUDGET_SHARE * epsilon * 1.0001
    assert spent >= 0.95 * PRIOR_BUDGET_SHARE * epsilon  # the smallest such noise, not any


def test_low_target_calibrates_where_a_fixed_prior_noise_could_not() -> None:
    rounds, q, steps = 40, 0.5, 5
    auto = ExperimentConfig(dp=DPConfig(target_epsilon=1.0), train=TrainConfig(rounds=rounds)).dp
    z = calibrate_client_noise(auto, q, steps, rounds, with_prior=True)
    assert 0 < z < 1e4
    # control: the old fixed multiplier spends the whole budget on the prior alone
    fixed = DPConfig(target_epsilon=1.0, prior_noise_multiplier=5.0)
    with pytest.raises(BudgetExceededError, match="prior releases alone"):
        calibrate_client_noise(fixed, q, steps, rounds, with_prior=True)


def test_a_given_multiplier_is_kept_and_an_impossible_share_is_a_clear_error() -> None:
    given = DPConfig(target_epsilon=1.0, prior_noise_multiplier=7.0)
    assert resolve_prior_noise(given, 40).prior_noise_multiplier == 7.0
    with pytest.raises(ConfigError, match="too small for 40 rounds"):
        resolve_prior_noise(DPConfig(target_epsilon=0.01), 40)
