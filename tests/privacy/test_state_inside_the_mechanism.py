"""Data-dependent state stays inside the mechanism (issue 14, item 5 and 6).

* The Gumbel logits alpha are not learnt under DP-SGD: trained on the noise-free batch gradient
  they would carry every episode into every later step. The control trains without DP, where
  alpha does move, so the test would fail if the DP path trained it too.
* A client's aggregation weight cannot wreck the round: the client refuses to mask a weight
  outside [0, cap], and the server divides by the number of survivors under DP and refuses a
  summed weight honest clients cannot produce otherwise. The control applies the forged sums
  the way the server used to (divide by the weight as sent) and shows the mean blowing up.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dp_testkit import frozen_client, tiny_config, tiny_model

from fedvpa_secure.client.user_dp import check_weight
from fedvpa_secure.errors import AbortRound
from fedvpa_secure.server.learner import checked_sums
from fedvpa_secure.train.aggregation import MAX_CLIENT_WEIGHT, WEIGHT
from fedvpa_secure.train.dp_local import train_local_dp
from fedvpa_secure.train.local import ClientState, train_local

CPU = torch.device("cpu")


def _alpha_after(dp: bool) -> tuple[torch.Tensor, torch.Tensor]:
    cfg = tiny_config("fedvpa-gp", beta=0.05)
    model = tiny_model(cfg, 0)
    state = ClientState()
    rng = np.random.default_rng(0)
    if dp:
        train_local_dp(model, [frozen_client()], state, cfg, 4, 0.5, rng, CPU, 1.0, 1.0, "hooks")
    else:
        train_local(model, [frozen_client()], state, cfg, 4, 0.5, rng, CPU)
    alpha = model.log_pi if state.alpha is None else state.alpha
    return alpha.detach().clone(), model.log_pi.detach().clone()


def test_alpha_is_not_learnt_under_dp_sgd() -> None:
    alpha, log_pi = _alpha_after(dp=True)
    torch.testing.assert_close(alpha, log_pi, rtol=0, atol=0)


def test_control_plain_training_does_learn_alpha() -> None:
    alpha, log_pi = _alpha_after(dp=False)
    assert float((alpha - log_pi).abs().max()) > 1e-4


def _forged_round(n: int = 5, clip: float = 1.0) -> tuple[dict[str, np.ndarray], float]:
    """4 honest clients (delta ~0.03, weight 1) and one at 4.5x the clip with weight -3.99."""
    gen = np.random.default_rng(0)
    honest = [gen.normal(0.03, 0.005, 16) for _ in range(n - 1)]
    forged = np.full(16, 4.5 * clip)
    sums = {
        "delta/w": np.sum(honest, axis=0) + forged,
        WEIGHT: np.array([float(n - 1) - 3.99]),
    }
    return sums, float(np.mean(honest))


def test_control_a_forged_weight_blows_up_the_mean_when_trusted() -> None:
    sums, honest_mean = _forged_round()
    naive = sums["delta/w"] / float(sums[WEIGHT][0])
    assert naive.mean() > 400 and honest_mean < 0.05  # the attack, on the old rule


def test_a_forged_weight_sum_is_refused_without_dp() -> None:
    sums, _ = _forged_round()
    with pytest.raises(AbortRound, match="forged weight"):
        checked_sums(sums, 5, dp=False)
    ok = dict(sums, **{WEIGHT: np.array([5.0])})
    assert checked_sums(ok, 5, dp=False)[WEIGHT][0] == 5.0  # an honest sum passes


def test_under_dp_the_mean_divides_by_the_survivors() -> None:
    sums, _ = _forged_round()
    out = checked_sums(sums, 5, dp=True)
    assert out[WEIGHT][0] == 5.0
    assert (out["delta/w"] / out[WEIGHT][0]).mean() < 1.0  # bounded by the clip, not ~450


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_sums_are_never_applied(bad: float) -> None:
    sums, _ = _forged_round()
    sums["delta/w"][3] = bad
    with pytest.raises(AbortRound, match="not finite"):
        checked_sums(sums, 5, dp=True)


@pytest.mark.parametrize(
    "weight", [-3.99, -1e-9, float("nan"), float("inf"), MAX_CLIENT_WEIGHT + 1]
)
def test_the_client_refuses_to_mask_an_out_of_range_weight(weight: float) -> None:
    with pytest.raises(AbortRound, match="outside"):
        check_weight(weight)


def test_control_the_client_masks_an_honest_weight() -> None:
    for weight in (0.0, 1.0, float(MAX_CLIENT_WEIGHT)):
        check_weight(weight)
