"""Each loss term against a hand computation, and the prior rebuilt from sums."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from fedvpa_secure.config import ObjectiveConfig, method_spec
from fedvpa_secure.model.objective import (
    PriorContext,
    bt_nll,
    episode_loss,
    kl_to_prior,
    pull_to_component,
)
from fedvpa_secure.model.prior import (
    gumbel_softmax_weights,
    init_prototypes,
    orthogonality_gradient,
    orthogonality_penalty,
    rebuild_prior,
    sufficient_statistics,
    tau_schedule,
)


def test_bt_nll_matches_hand_computation_and_ignores_padding():
    logits = torch.tensor([[2.0, -1.0, 7.0]])
    labels = torch.tensor([[1.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    expected = (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(1.0))) / 2
    assert bt_nll(logits, labels, mask).item() == pytest.approx(expected, rel=1e-6)


def test_kl_standard_normal_closed_form():
    mu = torch.tensor([[1.0, -2.0]])
    logvar = torch.tensor([[0.0, math.log(0.25)]])
    hand = 0.5 * (1 + 1 - 1 - 0) + 0.5 * (4 + 0.25 - 1 - math.log(0.25))
    got = kl_to_prior(mu, logvar, method_spec("fedvpl"), PriorContext(None, None, None), 1)
    assert got.item() == pytest.approx(hand, rel=1e-6)


def test_mixture_kl_monte_carlo_matches_hand_computation_with_fixed_noise():
    torch.manual_seed(3)
    mu, logvar = torch.tensor([[0.5, 0.0]]), torch.tensor([[0.0, 0.0]])
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    var = torch.tensor([1.0, 4.0])
    log_w = torch.log(torch.tensor([0.3, 0.7]))
    prior = PriorContext(protos, var, log_w)
    torch.manual_seed(11)
    got = kl_to_prior(mu, logvar, method_spec("fedvpa-gp"), prior, n_samples=5)
    torch.manual_seed(11)
    eps = torch.randn(5, 1, 2)
    total = 0.0
    for s in range(5):
        z = (mu + eps[s]).squeeze(0)
        log_q = sum(-0.5 * ((z[i] - mu[0, i]) ** 2 + math.log(2 * math.pi)) for i in range(2))
        comps = []
        for k in range(2):
            sq = float(((z - protos[k]) ** 2).sum())
            comps.append(
                math.log(float(log_w[k].exp()))
                - 0.5
                * (sq / float(var[k]) + 2 * math.log(float(var[k])) + 2 * math.log(2 * math.pi))
            )
        log_p = math.log(sum(math.exp(c) for c in comps))
        total += float(log_q) - log_p
    assert got.item() == pytest.approx(total / 5, rel=1e-5)


def test_mixture_kl_converges_to_exact_kl_for_a_single_component():
    mu, logvar = torch.tensor([[0.3, -0.2]]), torch.tensor([[-0.5, 0.2]])
    protos = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # both components identical: a Gaussian
    var = torch.tensor([2.0, 2.0])
    prior = PriorContext(protos, var, torch.log(torch.tensor([0.5, 0.5])))
    torch.manual_seed(0)
    mc = kl_to_prior(mu, logvar, method_spec("fedvpl-gb"), prior, n_samples=200_000).item()
    s2, v = 2.0, logvar.exp()
    exact = 0.5 * float((v / s2 + (mu - 1.0) ** 2 / s2 - 1 - torch.log(v / s2)).sum())
    assert mc == pytest.approx(exact, abs=0.01)


def test_pull_uses_the_most_responsible_component():
    protos = torch.tensor([[5.0, 0.0], [0.0, 5.0]])
    prior = PriorContext(protos, torch.ones(2), torch.log(torch.tensor([0.5, 0.5])))
    mu = torch.tensor([[4.0, 1.0], [0.5, 3.0]])
    z = torch.tensor([[4.5, 0.5], [1.0, 4.0]])
    got = pull_to_component(z, mu, prior, method_spec("fedvpa-gp"))
    hand = torch.tensor([0.5**2 + 0.5**2, 1.0**2 + 1.0**2]) / 2
    assert torch.allclose(got, hand)


def test_orthogonality_penalty_hand_computation_and_zero_at_init():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # P P^T = [[1,1],[1,2]]; minus 4 I -> [[-3,1],[1,-2]] -> 9+1+1+4
    assert orthogonality_penalty(p, 2.0).item() == pytest.approx(15.0)
    init = init_prototypes(3, 8, 5.0, seed=1)
    assert orthogonality_penalty(init, 5.0).item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(init.norm(dim=1), torch.full((3,), 5.0))


def test_orthogonality_gradient_closed_form_equals_autograd():
    p = torch.randn(3, 6, generator=torch.Generator().manual_seed(2), requires_grad=True)
    (auto,) = torch.autograd.grad(orthogonality_penalty(p, 2.5), [p])
    torch.testing.assert_close(orthogonality_gradient(p, 2.5), auto)
    assert auto.abs().max() > 1e-3  # a non-trivial point, not the minimum


def test_pull_with_one_prototype_copy_per_episode_equals_the_shared_prototypes():
    """The DP hooks engine hands the loss (B, K, d) copies of P; the value must not change."""
    gen = torch.Generator().manual_seed(4)
    protos = torch.randn(2, 3, generator=gen)
    mu, z = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    copies = protos.expand(5, -1, -1).clone()
    for name in ("fedvpl-ortho", "fedvpa-gp"):
        spec = method_spec(name)
        lw = torch.log(torch.tensor([0.3, 0.7])) if spec.mixture_prior else None
        var = torch.ones(2) if spec.mixture_prior else None
        shared = pull_to_component(z, mu, PriorContext(protos, var, lw), spec)
        per_episode = pull_to_component(z, mu, PriorContext(copies, var, lw), spec)
        torch.testing.assert_close(per_episode, shared)


def test_episode_loss_adds_the_terms_with_their_weights():
    cfg = ObjectiveConfig(beta=0.1, pull_weight=0.5, ortho_weight=0.2, kl_samples=3)
    spec = method_spec("fedvpa-gp")
    protos = init_prototypes(2, 4, cfg.prior_scale, seed=0).requires_grad_(True)
    prior = PriorContext(protos, torch.ones(2), torch.log(torch.tensor([0.5, 0.5])))
    out = {
        "logits": torch.tensor([[0.3, -0.2]]),
        "mu": torch.zeros(1, 4),
        "logvar": torch.zeros(1, 4),
        "z": torch.ones(1, 4),
    }
    labels, mask = torch.tensor([[1.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool)
    torch.manual_seed(5)
    parts = episode_loss(out, labels, mask, spec, cfg, prior)
    expected = parts.bt + 0.1 * parts.kl + 0.5 * parts.pull
    assert torch.allclose(parts.per_episode, expected)
    assert parts.ortho.item() == pytest.approx(0.2 * orthogonality_penalty(protos, 5.0).item())
    mono = episode_loss(out, labels, mask, method_spec("monolithic"), cfg, prior)
    assert mono.kl is None and mono.pull is None and torch.allclose(mono.per_episode, mono.bt)


def test_prior_from_summed_statistics_equals_prior_from_pooled_statistics():
    torch.manual_seed(0)
    protos = init_prototypes(3, 6, 5.0, seed=2)
    log_pi = torch.log(torch.tensor([0.2, 0.3, 0.5]))
    var = torch.tensor([1.0, 2.0, 0.5])
    clients = [torch.randn(n, 6) * 4 for n in (3, 7, 11)]
    sums_n = torch.zeros(3)
    sums_v = torch.zeros(3)
    for mu in clients:
        n_k, v_k = sufficient_statistics(mu, protos, log_pi, var, mu_clip=20.0)
        sums_n += n_k
        sums_v += v_k
    pooled_n, pooled_v = sufficient_statistics(torch.cat(clients), protos, log_pi, var, 20.0)
    a = rebuild_prior(sums_n, sums_v, 1e-2)
    b = rebuild_prior(pooled_n, pooled_v, 1e-2)
    assert torch.allclose(a[0], b[0], atol=1e-6) and torch.allclose(a[1], b[1], atol=1e-5)
    assert sums_n.sum().item() == pytest.approx(21.0, rel=1e-5)  # responsibilities sum to 1


def test_prior_rebuild_hand_values_and_floor():
    log_pi, var = rebuild_prior(torch.tensor([3.0, 1.0]), torch.tensor([6.0, 0.0]), 0.01)
    assert torch.allclose(log_pi.exp(), torch.tensor([0.75, 0.25]))
    assert torch.allclose(var, torch.tensor([2.0, 0.01]))


def test_tau_annealing_endpoints_and_monotone():
    taus = [tau_schedule(r, 10, 1.0, 0.1) for r in range(10)]
    assert taus[0] == pytest.approx(1.0) and taus[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in itertools.pairwise(taus))
    assert tau_schedule(0, 1, 1.0, 0.1) == pytest.approx(0.1)


def test_gumbel_softmax_sharpens_as_tau_falls():
    alpha = torch.log(torch.tensor([0.5, 0.5]))
    gen = torch.Generator().manual_seed(0)
    hot = torch.stack([gumbel_softmax_weights(alpha, 0.05, gen) for _ in range(200)])
    warm = torch.stack([gumbel_softmax_weights(alpha, 5.0, gen) for _ in range(200)])
    assert hot.max(1).values.mean() > 0.95 > warm.max(1).values.mean()
    assert torch.allclose(hot.sum(1), torch.ones(200))
