"""The client's own privacy policy: a floor that no server message can lower.

A server that follows the wire format can still choose every field it sends: ``secure=false``,
no user-level noise, a tiny sigma, a 3-client round, a SecAgg+ degree of 2, hardened mode off.
The client therefore checks each TRAIN task against this policy (``client.toml [policy]``)
BEFORE it fetches the model or touches its data, and refuses a task that asks for less with a
:class:`PolicyViolation` naming the field, what the server asked and what the policy allows.
The round goes on without this client.

What the checks rest on (SECURITY.md, "Threats and defences"):

* **Secure aggregation.** ``n >= min_clients`` and, hardened, ``t >= floor(2n/3) + 1``: a server
  colluding with fewer than ``n/3`` clients cannot collect ``t`` shares of both secrets of an
  honest client (Bonawitz et al. 2017, Sec. 6). SecAgg+ (degree ``k < n - 1``) is accepted only
  when ``k >= min_secure_degree(n, ...)`` for the policy's assumed colluding and dropout rates.
* **User-level DP.** The client recomputes the Gaussian-equivalent noise multiplier of the sum
  from public parameters -- its clip, the round's quantisation scale, the update dimension, the
  noise kind, its sigma share and ``t_min`` -- with the same accountant math the server uses,
  and refuses a round whose multiplier is below the floor implied by its own budget, or which
  would cross that budget in its own ledger (composed without amplification: the server knows
  who took part).
* **Record-level DP.** The server's DP-SGD settings can only be tightened by the client's own
  epsilon, delta, clip and minimum noise multiplier (:func:`record_dp_config`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from fedvpa_secure.errors import AbortRound, ConfigError
from fedvpa_secure.secagg import SecAggConfig
from fedvpa_secure.secagg.config import default_threshold
from fedvpa_secure.secagg.degree import (
    DEFAULT_COLLUDING_FRACTION,
    DEFAULT_DROPOUT_FRACTION,
    DEFAULT_SECURITY_BITS,
    min_secure_degree,
)
from fedvpa_secure.toml_config import check_keys
from privacy import DistributedNoiseEvent, PrivacyError, calibrate_noise_multiplier
from privacy.accountants import canonical_name
from privacy.distributed import NOISE_KINDS, quantized_l2_sensitivity

CALIBRATION_SLACK = 1e-3
"""Relative tolerance of the calibration routines: a plan calibrated to exactly the floor passes."""


class PolicyViolation(AbortRound):
    """A task asked for less privacy than this client's policy allows; the client sits it out."""

    def __init__(self, field_name: str, asked: object, allowed: str) -> None:
        self.field_name = field_name
        self.asked = asked
        self.allowed = allowed
        super().__init__(
            f"refused by the client's privacy policy: {field_name}={asked!r}, policy allows "
            f"{allowed}"
        )


@dataclass(frozen=True)
class PrivacyPolicy:
    """What this client accepts; every default is the safe choice.

    Attributes:
        allow_plain: accept clear-text (non-secure) rounds; only for in-process baselines and
            benchmarks on data that is not private.
        require_hardened: accept only the malicious-server mode of secure aggregation.
        min_clients: fewest clients a secure round may sample.
        min_threshold: fewest shares that reconstruct a secret (on top of the ``2n/3`` rule).
        colluding_fraction: the share of sampled clients assumed to collude with the server,
            for the SecAgg+ degree bound.
        dropout_fraction: the share of clients assumed to drop out, for the same bound.
        security_bits: the statistical security parameter sigma of the degree bound.
        require_user_dp: accept only rounds that carry user-level distributed noise.
        user_epsilon, user_delta: this client's user-level budget towards the server.
        user_max_clip: the largest whole-update clip norm S the client accepts.
        user_min_survivors: the smallest ``t_min`` the noise may be calibrated to.
        user_min_rounds: the budget must last at least this many rounds; sets the per-round
            noise floor (one round may not spend more than its share).
        require_record_dp: run record-level DP-SGD even when the server's experiment does not.
        record_epsilon, record_delta: this client's record-level budget (DP-SGD).
        record_max_clip: the largest per-episode clipping norm the client accepts.
        record_min_noise_multiplier: the DP-SGD noise multiplier never goes below this.
        accountant: the accountant of the client's own ledgers.
    """

    allow_plain: bool = False
    require_hardened: bool = True
    min_clients: int = 5
    min_threshold: int = 4
    colluding_fraction: float = DEFAULT_COLLUDING_FRACTION
    dropout_fraction: float = DEFAULT_DROPOUT_FRACTION
    security_bits: int = DEFAULT_SECURITY_BITS
    require_user_dp: bool = True
    user_epsilon: float = 8.0
    user_delta: float = 1e-5
    user_max_clip: float = 1.0
    user_min_survivors: int = 4
    user_min_rounds: int = 5
    require_record_dp: bool = False
    record_epsilon: float = 8.0
    record_delta: float = 1e-5
    record_max_clip: float = 1.0
    record_min_noise_multiplier: float = 0.0
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "bool" and not isinstance(value, bool):
                raise _bad(f.name, value, "true or false")
        _positive_int(self, "min_clients", low=3)
        _positive_int(self, "min_threshold", low=2)
        _positive_int(self, "security_bits", low=1)
        _positive_int(self, "user_min_survivors", low=3)
        _positive_int(self, "user_min_rounds", low=1)
        _fraction(self, "colluding_fraction")
        _fraction(self, "dropout_fraction")
        if self.colluding_fraction + self.dropout_fraction >= 1.0:
            raise _bad(
                "colluding_fraction + dropout_fraction",
                self.colluding_fraction + self.dropout_fraction,
                "a sum below 1",
            )
        for name in ("user_epsilon", "user_max_clip", "record_epsilon", "record_max_clip"):
            _positive_real(self, name)
        for name in ("user_delta", "record_delta"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
                raise _bad(name, value, "a number in (0, 1)")
        z = self.record_min_noise_multiplier
        if not (isinstance(z, (int, float)) and math.isfinite(z) and z >= 0):
            raise _bad("record_min_noise_multiplier", z, "a finite number >= 0")
        if self.allow_plain and self.require_user_dp:
            raise _bad(
                "allow_plain",
                True,
                "false while require_user_dp = true (a plain round carries no user-level noise, "
                "so every plain task would be refused anyway); set require_user_dp = false too",
            )
        try:
            canonical_name(self.accountant)
        except PrivacyError as err:
            raise _bad("accountant", self.accountant, str(err)) from err

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> PrivacyPolicy:
        """``client.toml``'s ``[policy]`` table; an unknown key is an error naming it."""
        check_keys(table, [f.name for f in fields(cls)], "client config [policy]")
        return cls(**dict(table))

    def describe(self) -> list[str]:
        """The policy as the client logs it at start-up, one line per concern."""
        plain = "allowed (NOT private)" if self.allow_plain else "refused"
        user = (
            f"required: epsilon <= {self.user_epsilon:g} (delta {self.user_delta:g}) towards the "
            f"server over all rounds, clip <= {self.user_max_clip:g}, t_min >= "
            f"{self.user_min_survivors}, budget lasts >= {self.user_min_rounds} rounds"
            if self.require_user_dp
            else "optional (rounds without user-level noise are accepted)"
        )
        record = (
            f"{'required' if self.require_record_dp else 'when asked'}: epsilon <= "
            f"{self.record_epsilon:g} (delta {self.record_delta:g}), clip <= "
            f"{self.record_max_clip:g}, noise multiplier >= {self.record_min_noise_multiplier:g}"
        )
        return [
            f"plain (unmasked) rounds: {plain}",
            f"secure aggregation: {'hardened only' if self.require_hardened else 'any mode'}, "
            f"n >= {self.min_clients}, t >= max({self.min_threshold}, floor(2n/3)+1), SecAgg+ "
            f"degree from Bell et al. for {self.colluding_fraction:.2g} colluding and "
            f"{self.dropout_fraction:.2g} dropping out at {self.security_bits} bits",
            f"user-level DP: {user}",
            f"record-level DP: {record}",
        ]

    # -- derived ------------------------------------------------------------------------------

    def user_noise_floor(self) -> float:
        """The smallest per-round noise multiplier: the budget must last ``user_min_rounds``
        rounds without amplification (each round the client is in, the server knows it)."""
        return calibrate_noise_multiplier(
            target_epsilon=self.user_epsilon,
            delta=self.user_delta,
            sample_rate=1.0,
            steps=self.user_min_rounds,
            accountant=self.accountant,
        )


def _bad(name: str, value: object, allowed: str) -> ConfigError:
    return ConfigError(f"client config [policy] {name}={value!r} is invalid: expected {allowed}")


def _positive_int(policy: PrivacyPolicy, name: str, *, low: int) -> None:
    value = getattr(policy, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(name, value, f"an integer >= {low}")


def _positive_real(policy: PrivacyPolicy, name: str) -> None:
    value = getattr(policy, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(name, value, "a finite number > 0")
    if not (math.isfinite(value) and value > 0):
        raise _bad(name, value, "a finite number > 0")


def _fraction(policy: PrivacyPolicy, name: str) -> None:
    value = getattr(policy, name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise _bad(name, value, "a number in [0, 1)")


# -- secure aggregation ---------------------------------------------------------------------------


def check_secagg(policy: PrivacyPolicy, config: SecAggConfig) -> None:
    """Refuse a round configuration weaker than the policy (field, asked, allowed)."""
    n = config.n_clients
    if policy.require_hardened and not config.hardened:
        raise PolicyViolation("secagg.hardened", config.hardened, "true (malicious-server mode)")
    if n < policy.min_clients:
        raise PolicyViolation("secagg.n_clients", n, f">= {policy.min_clients}")
    if config.min_clients < 3:
        raise PolicyViolation("secagg.min_clients", config.min_clients, ">= 3")
    low_t = max(policy.min_threshold, default_threshold(n, True))
    if config.threshold is None or config.threshold < low_t:
        raise PolicyViolation("secagg.threshold", config.threshold, f">= {low_t} for n={n}")
    if config.degree is not None:
        need = min_secure_degree(
            n, policy.colluding_fraction, policy.dropout_fraction, policy.security_bits
        )
        if need is None or config.degree < need:
            allowed = "the full graph" if need is None else f"degree >= {need} or the full graph"
            raise PolicyViolation("secagg.degree", config.degree, f"{allowed} for n={n}")
        group = config.degree + 1
        low_nt = max(default_threshold(group, True), 3)
        if config.neighbour_threshold is None or config.neighbour_threshold < low_nt:
            raise PolicyViolation(
                "secagg.neighbour_threshold", config.neighbour_threshold, f">= {low_nt}"
            )


# -- user-level DP --------------------------------------------------------------------------------


def user_dp_event(
    *,
    noise: str,
    local_sigma: float,
    min_survivors: int,
    clip_norm: float,
    config: SecAggConfig,
    dim: int,
) -> DistributedNoiseEvent:
    """The round's distributed-noise event as the CLIENT computes it, without amplification.

    The scale is the finest quantisation of any group (the largest sensitivity in quantised
    units), the summands the most the config admits: both conservative.
    """
    scale = 2.0 ** max(config.frac_bits.values())  # type: ignore[union-attr]
    sensitivity = quantized_l2_sensitivity(clip_norm=clip_norm, scale=scale, dim=dim, beta=0.0)
    return DistributedNoiseEvent(
        noise=noise,
        local_sigma=local_sigma,
        min_survivors=min_survivors,
        max_summands=int(config.max_clients),  # type: ignore[arg-type]
        l2_sensitivity=sensitivity,
        dim=dim,
        sample_rate=1.0,
        steps=1,
    )


def check_user_dp(
    policy: PrivacyPolicy, share: Any | None, config: SecAggConfig, dim: int
) -> DistributedNoiseEvent | None:
    """Refuse user-level noise parameters below the policy; returns the round's event.

    ``share`` is the task's ``UserDpShare`` (None when the task carries none).
    """
    if share is None:
        if policy.require_user_dp:
            raise PolicyViolation("user_dp", None, "a user-level noise share in every round")
        return None
    clip, sigma = share.clip_norm, share.local_sigma
    if not (math.isfinite(clip) and 0 < clip <= policy.user_max_clip):
        raise PolicyViolation("user_dp.clip_norm", clip, f"a number in (0, {policy.user_max_clip}]")
    if share.noise not in NOISE_KINDS:
        raise PolicyViolation("user_dp.noise", share.noise, f"one of {NOISE_KINDS}")
    if not (math.isfinite(sigma) and sigma > 0):
        raise PolicyViolation("user_dp.local_sigma", sigma, "a finite number > 0")
    if share.min_survivors < policy.user_min_survivors:
        raise PolicyViolation(
            "user_dp.min_survivors", share.min_survivors, f">= {policy.user_min_survivors}"
        )
    if config.threshold is None or config.threshold < share.min_survivors:
        raise PolicyViolation(
            "secagg.threshold",
            config.threshold,
            f">= t_min={share.min_survivors} (fewer survivors must not unmask)",
        )
    event = user_dp_event(
        noise=share.noise,
        local_sigma=float(sigma),
        min_survivors=int(share.min_survivors),
        clip_norm=float(clip),
        config=config,
        dim=dim,
    )
    floor = policy.user_noise_floor()
    z = event.effective_noise_multiplier
    if z < floor * (1.0 - CALIBRATION_SLACK):
        raise PolicyViolation(
            "user_dp.local_sigma",
            sigma,
            f"a sum whose noise multiplier is >= {floor:.4g} (this round's is {z:.4g}: "
            f"epsilon {policy.user_epsilon:g} must last {policy.user_min_rounds} rounds)",
        )
    return event


# -- record-level DP ------------------------------------------------------------------------------


def record_dp_config(policy: PrivacyPolicy, server_dp: Any | None) -> Any | None:
    """The DP-SGD settings this client trains with: the server's, tightened by the policy.

    Without a server request the client still runs DP-SGD when its policy requires it, with its
    own budget. Returns a :class:`~fedvpa_secure.train.dp_config.DPConfig` or ``None``.
    """
    from fedvpa_secure.train.dp_config import DPConfig

    if server_dp is None:
        if not policy.require_record_dp:
            return None
        return DPConfig(
            target_epsilon=policy.record_epsilon,
            delta=policy.record_delta,
            max_grad_norm=policy.record_max_clip,
            epsilon_max=policy.record_epsilon,
        )
    if server_dp.mutant is not None:
        raise PolicyViolation("dp.mutant", server_dp.mutant, "none (test-only mechanism breakers)")
    target = server_dp.target_epsilon
    if target is not None:
        target = min(target, policy.record_epsilon)
    z = server_dp.noise_multiplier
    if z is not None:
        z = max(z, policy.record_min_noise_multiplier)
    budget = server_dp.epsilon_max if server_dp.epsilon_max is not None else policy.record_epsilon
    return replace(
        server_dp,
        target_epsilon=target,
        noise_multiplier=z,
        delta=min(server_dp.delta, policy.record_delta),
        max_grad_norm=min(server_dp.max_grad_norm, policy.record_max_clip),
        epsilon_max=min(budget, policy.record_epsilon),
    )
