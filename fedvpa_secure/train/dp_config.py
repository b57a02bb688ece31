"""Frozen, validated settings of the two DP guarantees (PRIVACY.md sections 1 and 2).

This module imports nothing from the rest of the learner so that :mod:`fedvpa_secure.config` can
hold a :class:`DPConfig` without an import cycle. Every check raises
:class:`~fedvpa_secure.errors.ConfigError` naming the field, the value and the allowed range.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from fedvpa_secure.errors import ConfigError

ACCOUNTANT_CHOICES = ("rdp", "prv")
GRAD_SAMPLE_ENGINES = ("auto", "vmap", "hooks", "loop")
NOISE_KINDS = ("discrete_gaussian", "skellam")
PRIOR_BUDGET_SHARE = 0.2  # of a client's epsilon, for the prior releases of all rounds
DEFAULT_MAX_NOISE_STEP = 0.01  # measured on the synthetic protocol, see max_noise_step
DP_MUTANTS = ("zero-noise", "no-clipping")  # TEST ONLY: broken mechanisms the audit must catch


_mutants_allowed = 0  # > 0 only inside allow_test_mutants()


@contextmanager
def allow_test_mutants() -> Iterator[None]:
    """TEST ONLY: let ``DPConfig.mutant`` break DP-SGD inside this block.

    A client takes its whole experiment configuration, ``dp`` included, from the server's Join
    answer. Without this gate a server could ask clients for a mutant and get un-noised updates
    while every client ledger records the honest guarantee. Only the empirical audit and tests
    open the gate; :func:`require_mutant_allowed` refuses a mutant anywhere else.
    """
    global _mutants_allowed
    _mutants_allowed += 1
    try:
        yield
    finally:
        _mutants_allowed -= 1


def require_mutant_allowed(mutant: str | None) -> None:
    """Refuse a broken-DP mutant outside :func:`allow_test_mutants` (no-op for ``None``)."""
    if mutant is not None and _mutants_allowed <= 0:
        raise ConfigError(
            f"dp.mutant={mutant!r} is a TEST-ONLY broken mechanism and is refused here: it runs "
            "only inside the empirical audit (audit --empirical --mutant) or tests"
        )


def _check(cond: bool, name: str, value: object, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{name}={value!r} is invalid: expected {allowed}")


def _finite_positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class DPConfig:
    """Record-level DP-SGD on each client (unit: one preference pair of one client).

    Attributes:
        target_epsilon: Calibrate the noise multiplier so that a client that takes part in every
            round stays within this epsilon (DP-SGD steps and prior releases together). Give this
            or ``noise_multiplier``.
        noise_multiplier: DP-SGD noise multiplier z (noise std = z * max_grad_norm). 0 is allowed
            only for tests of the DP code path (nothing can be accounted then).
        delta: The delta of every reported epsilon; must be well below 1 / (pairs per client).
        max_grad_norm: Per-episode L2 clipping norm C (Abadi et al. 2016).
        accountant: ``rdp`` (Mironov 2017) or ``prv`` (Gopi, Lee, Wutschitz 2021).
        epsilon_max: The client's budget: a round that would cross it is refused. Defaults to
            ``target_epsilon``; required with ``noise_multiplier``.
        prior_noise_multiplier: Noise multiplier of the prior's sufficient-statistics release
            (a separate Gaussian mechanism, Dwork and Roth 2014 Thm. A.1, composed in the same
            accountant). ``None`` (the default): calibrated by :func:`resolve_prior_noise` when
            the run's :class:`~fedvpa_secure.config.ExperimentConfig` is built, so that the
            releases of all rounds spend :data:`PRIOR_BUDGET_SHARE` of the budget and DP-SGD
            gets the rest. (A fixed 5.0 spent 6.2 of epsilon 8 over 40 rounds on the prior alone
            and made any target <= 6 impossible.)
        prior_v_clip: Per-episode bound on ``||mu_e - P_k||^2 / d`` in the v-statistics; ``None``
            derives ``(mu_clip + max_k ||P_k||)^2 / d`` each round from public quantities.
        engine: Per-episode gradient engine: ``hooks`` (one forward and one backward pass;
            per-layer contributions summed per episode, exact norms, clipped sum handed to
            Opacus for the noise; frozen and lora mode; the fastest), ``vmap`` (torch.func over
            whole episodes; frozen mode), ``loop`` (one backward pass per episode; any model,
            slowest), ``auto`` (hooks).
        learning_rate: The client's head learning rate under DP-SGD; ``None`` keeps
            ``train.learning_rate``. Either way the noise cap below applies.
        max_noise_step: Cap on ``lr * z * C / B``, the standard deviation of the noise one
            DP-SGD step adds to every trainable coordinate (B: the expected batch of episodes).
            Each optimiser group's learning rate is lowered until the cap holds. Without it a
            small batch at low epsilon turns every step into a random walk far larger than the
            weights themselves (default synthetic run: B = 2 episodes, z = 15 at eps 8 and 60
            at eps 1, so ``lr * z * C / B`` is 0.75 to 3 at lr 0.1) and training ends in
            non-finite losses. The default keeps the random walk of a whole run (200 steps,
            averaged over 10 clients: about 4.5 times the cap per coordinate) below the scale
            of freshly initialised weights. ``None`` switches the cap off.
        mutant: TEST ONLY. ``"zero-noise"`` (Opacus adds no noise) or ``"no-clipping"`` (no
            per-episode clipping; the noise stays scaled to the nominal ``max_grad_norm``) break
            the mechanism while the ledger keeps recording the honest event, so that the
            empirical audit (PRIVACY.md section 5) can be shown to catch a broken DP-SGD
            (Tramer et al. 2022, "Debugging Differential Privacy"). Training refuses it outside
            :func:`allow_test_mutants` (the ``audit --empirical --dp --mutant`` path and tests),
            so neither a config file nor a server can switch it on for a real client.
    """

    target_epsilon: float | None = None
    noise_multiplier: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: str = "rdp"
    epsilon_max: float | None = None
    prior_noise_multiplier: float | None = None
    prior_v_clip: float | None = None
    engine: str = "auto"
    learning_rate: float | None = None
    max_noise_step: float | None = DEFAULT_MAX_NOISE_STEP
    mutant: str | None = None

    def __post_init__(self) -> None:
        _check(
            (self.target_epsilon is None) != (self.noise_multiplier is None),
            "target_epsilon/noise_multiplier",
            (self.target_epsilon, self.noise_multiplier),
            "exactly one of the two",
        )
        if self.target_epsilon is not None:
            _check(
                _finite_positive(self.target_epsilon),
                "target_epsilon",
                self.target_epsilon,
                "a finite number > 0",
            )
        if self.noise_multiplier is not None:
            _check(
                math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0,
                "noise_multiplier",
                self.noise_multiplier,
                "a finite number >= 0",
            )
        _check(0 < self.delta < 1, "delta", self.delta, "0 < delta < 1")
        _check(
            _finite_positive(self.max_grad_norm),
            "max_grad_norm",
            self.max_grad_norm,
            "> 0",
        )
        _check(
            self.accountant in ACCOUNTANT_CHOICES,
            "accountant",
            self.accountant,
            f"one of {ACCOUNTANT_CHOICES}",
        )
        if self.epsilon_max is not None:
            _check(
                _finite_positive(self.epsilon_max),
                "epsilon_max",
                self.epsilon_max,
                "a finite number > 0",
            )
        _check(
            self.prior_noise_multiplier is None or _finite_positive(self.prior_noise_multiplier),
            "prior_noise_multiplier",
            self.prior_noise_multiplier,
            "None (calibrated) or a finite number > 0",
        )
        if self.prior_v_clip is not None:
            _check(
                _finite_positive(self.prior_v_clip),
                "prior_v_clip",
                self.prior_v_clip,
                "a finite number > 0",
            )
        _check(
            self.engine in GRAD_SAMPLE_ENGINES,
            "engine",
            self.engine,
            f"one of {GRAD_SAMPLE_ENGINES}",
        )
        for name in ("learning_rate", "max_noise_step"):
            value = getattr(self, name)
            if value is not None:
                _check(_finite_positive(value), name, value, "None or a finite number > 0")
        _check(
            self.mutant is None or self.mutant in DP_MUTANTS,
            "mutant",
            self.mutant,
            f"None or (test only) one of {DP_MUTANTS}",
        )

    @property
    def budget_epsilon(self) -> float | None:
        """The epsilon a client's accountant enforces (``None``: nothing is accounted)."""
        return self.epsilon_max if self.epsilon_max is not None else self.target_epsilon


@dataclass(frozen=True)
class UserDPConfig:
    """User-level distributed DP across rounds (unit: one client's whole data).

    Attributes:
        target_epsilon: Calibrate the integer noise so that ``rounds`` rounds stay within it.
        delta: Delta of the user-level guarantee.
        clip_norm: Whole-update L2 clip S of each client's round update.
        min_survivors: ``t_min``: the noise is calibrated so that any ``t_min`` honest shares
            suffice (Kairouz, Liu, Steinke 2021); a round with fewer survivors aborts.
        noise: ``discrete_gaussian`` (Canonne, Kamath, Steinke 2020) or ``skellam``
            (Agarwal, Kairouz, Liu 2021).
        accountant: ``rdp`` or ``prv``.
        epsilon_max: The server's budget (defaults to ``target_epsilon``).
    """

    target_epsilon: float
    delta: float = 1e-5
    clip_norm: float = 1.0
    min_survivors: int = 3
    noise: str = "discrete_gaussian"
    accountant: str = "rdp"
    epsilon_max: float | None = None

    def __post_init__(self) -> None:
        _check(
            _finite_positive(self.target_epsilon),
            "user_dp.target_epsilon",
            self.target_epsilon,
            "a finite number > 0",
        )
        _check(0 < self.delta < 1, "user_dp.delta", self.delta, "0 < delta < 1")
        _check(
            _finite_positive(self.clip_norm), "user_dp.clip_norm", self.clip_norm, "a number > 0"
        )
        _check(
            isinstance(self.min_survivors, int) and self.min_survivors >= 3,
            "user_dp.min_survivors",
            self.min_survivors,
            "an integer >= 3 (secure aggregation needs at least 3)",
        )
        _check(self.noise in NOISE_KINDS, "user_dp.noise", self.noise, f"one of {NOISE_KINDS}")
        _check(
            self.accountant in ACCOUNTANT_CHOICES,
            "user_dp.accountant",
            self.accountant,
            f"one of {ACCOUNTANT_CHOICES}",
        )
        if self.epsilon_max is not None:
            _check(
                _finite_positive(self.epsilon_max),
                "user_dp.epsilon_max",
                self.epsilon_max,
                "a finite number > 0",
            )

    @property
    def budget_epsilon(self) -> float:
        """The epsilon the server's accountant enforces."""
        return self.epsilon_max if self.epsilon_max is not None else self.target_epsilon


def resolve_prior_noise(dp: DPConfig, rounds: int) -> DPConfig:
    """``dp`` with a concrete prior noise multiplier for a run of ``rounds`` rounds.

    A given multiplier is kept. ``None`` becomes the smallest multiplier whose ``rounds``
    Gaussian releases spend at most :data:`PRIOR_BUDGET_SHARE` of the budget (``target_epsilon``,
    else ``epsilon_max``), so the DP-SGD steps keep the larger part whatever the target and the
    number of rounds. Only public settings enter, so the choice itself costs no privacy.

    Raises:
        ConfigError: there is no budget to take a share of, or even the largest multiplier
            cannot fit the share (a budget far too small for this many rounds).
    """
    from dataclasses import replace

    from privacy import GaussianEvent, make_accountant
    from privacy.accountants import CalibrationError, solve_decreasing

    if dp.prior_noise_multiplier is not None:
        return dp
    budget = dp.target_epsilon if dp.target_epsilon is not None else dp.epsilon_max
    if budget is None:
        raise ConfigError(
            "prior_noise_multiplier=None needs a budget to take a share of: set target_epsilon "
            "or epsilon_max, or give prior_noise_multiplier"
        )
    share = PRIOR_BUDGET_SHARE * float(budget)

    def epsilon(z: float) -> float:
        acc = make_accountant(dp.accountant)
        acc.compose(GaussianEvent(z), count=int(rounds))
        return acc.get_epsilon(dp.delta)

    try:
        z = solve_decreasing(epsilon, share, low=1.0, high=50.0, rtol=1e-3, limits=(0.1, 1e5))
    except CalibrationError as err:
        raise ConfigError(
            f"epsilon {budget} is too small for {rounds} rounds of prior releases (their share "
            f"{share:.3g} cannot be met: {err}); raise the budget, run fewer rounds, or give "
            "prior_noise_multiplier"
        ) from err
    return replace(dp, prior_noise_multiplier=z)
