"""SecAggConfig: defaults, derived values, and refusals that name field, value and range."""

from __future__ import annotations

import math

import pytest

from fedvpa_secure.errors import ConfigError
from fedvpa_secure.secagg import SecAggConfig
from fedvpa_secure.secagg.config import default_degree
from fedvpa_secure.secagg.quantize import MAX_SUM_MAGNITUDE, quantum_bound


@pytest.mark.parametrize(
    ("n", "hardened", "t"),
    [
        (3, False, 3),
        (3, True, 3),
        (5, False, 3),
        (5, True, 4),
        (10, False, 6),
        (10, True, 7),
        (50, True, 34),
        (100, False, 51),
        (100, True, 67),
    ],
)
def test_default_thresholds(n: int, hardened: bool, t: int) -> None:
    assert SecAggConfig(n_clients=n, hardened=hardened).threshold == t


def test_hardened_is_the_default() -> None:
    assert SecAggConfig(n_clients=10).hardened is True


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_clients": 2}, "n_clients"),
        ({"n_clients": 5, "min_clients": 2}, "min_clients"),
        ({"n_clients": 5.0}, "n_clients"),
        ({"n_clients": 10, "threshold": 5}, "threshold"),  # hardened needs > 2n/3
        ({"n_clients": 10, "hardened": False, "threshold": 5}, "threshold"),  # needs > n/2
        ({"n_clients": 10, "threshold": 11}, "threshold"),
        ({"n_clients": 10, "hardened": 1}, "hardened"),
        ({"n_clients": 10, "max_clients": 9}, "max_clients"),
        ({"n_clients": 10, "clip": {}}, "clip"),
        ({"n_clients": 10, "clip": {"": -1.0}}, "clip"),
        ({"n_clients": 10, "clip": {"": math.inf}}, "clip"),
        ({"n_clients": 10, "clip": {"__x": 1.0}}, "clip"),
        ({"n_clients": 10, "frac_bits": {"nope": 3}}, "frac_bits"),
        ({"n_clients": 10, "frac_bits": {"": 99}}, "frac_bits"),
        ({"n_clients": 10, "weight_cap": 0.0}, "weight_cap"),
        ({"n_clients": 300, "degree": 5}, "degree"),
        ({"n_clients": 300, "degree": 10, "neighbour_threshold": 3}, "neighbour_threshold"),
        ({"n_clients": 10, "neighbour_threshold": 9}, "neighbour_threshold"),
        ({"n_clients": 10, "keystream": "rc4"}, "keystream"),
        ({"n_clients": 10, "stage_deadline_s": 0}, "stage_deadline_s"),
        ({"n_clients": 10, "max_message_factor": 0.5}, "max_message_factor"),
        ({"n_clients": 10, "full_graph_cutoff": 1}, "full_graph_cutoff"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=rf"SecAggConfig\.{field}"):
        SecAggConfig(**kwargs)


def test_overflow_is_refused_at_configuration_time() -> None:
    # n_max * c * 2^f must stay below 2^31: 1000 clients * clip 1 * 2^22 = 2^31.97 overflows
    with pytest.raises(ConfigError, match="overflows"):
        SecAggConfig(n_clients=1000, clip={"": 1.0}, frac_bits={"": 22})
    with pytest.raises(ConfigError, match="overflows"):
        SecAggConfig(n_clients=10, clip={"": 3e8})  # even f = 0 overflows
    with pytest.raises(ConfigError, match="overflows"):
        SecAggConfig(n_clients=10, max_clients=10_000_000, weight_cap=1000.0)


@pytest.mark.parametrize(("n", "clip"), [(3, 1.0), (100, 0.05), (1000, 7.5), (10, 1e-4)])
def test_derived_frac_bits_are_safe_and_maximal(n: int, clip: float) -> None:
    cfg = SecAggConfig(n_clients=n, clip={"": clip})
    f = cfg.frac_bits[""]
    assert n * quantum_bound(clip, f) <= MAX_SUM_MAGNITUDE
    assert f == 48 or n * quantum_bound(clip, f + 1) > MAX_SUM_MAGNITUDE


def test_max_clients_governs_the_overflow_check() -> None:
    small = SecAggConfig(n_clients=10, clip={"": 1.0})
    large = SecAggConfig(n_clients=10, clip={"": 1.0}, max_clients=10_000)
    assert large.frac_bits[""] < small.frac_bits[""]


def test_graph_cutoff_and_degrees() -> None:
    assert SecAggConfig(n_clients=200).full_graph
    big = SecAggConfig(n_clients=201)
    assert not big.full_graph and big.degree == default_degree(201) and big.degree % 2 == 0
    assert big.neighbour_threshold == (2 * (big.degree + 1)) // 3 + 1
    assert SecAggConfig(n_clients=30, degree=40).full_graph  # degree >= n - 1: full graph
    sparse = SecAggConfig(n_clients=30, degree=8, hardened=False)
    assert sparse.degree == 8 and sparse.share_threshold() == 9 // 2 + 1


def test_groups_use_the_longest_prefix() -> None:
    cfg = SecAggConfig(n_clients=5, clip={"": 1.0, "lora.": 0.5, "lora.B": 0.25})
    assert cfg.group_of("head") == ""
    assert cfg.group_of("lora.A") == "lora."
    assert cfg.group_of("lora.B.weight") == "lora.B"
    narrow = SecAggConfig(n_clients=5, clip={"lora.": 0.5})
    with pytest.raises(ConfigError, match="matches no"):
        narrow.group_of("head")


def test_digest_is_stable_and_covers_every_field() -> None:
    a = SecAggConfig(n_clients=10, clip={"b": 2.0, "": 1.0})
    b = SecAggConfig(n_clients=10, clip={"": 1.0, "b": 2.0})
    assert a.digest() == b.digest() and a == b and hash(a) == hash(b)
    changes = [
        {"n_clients": 11},
        {"hardened": False},
        {"clip": {"": 1.0, "b": 3.0}},
        {"weight_cap": 10.0},
        {"keystream": "chacha20"},
        {"max_clients": 20},
        {"threshold": 8},
    ]
    for change in changes:
        kwargs = {"n_clients": 10, "clip": {"": 1.0, "b": 2.0}, **change}
        assert SecAggConfig(**kwargs).digest() != a.digest(), change


def test_config_is_frozen() -> None:
    cfg = SecAggConfig(n_clients=5)
    with pytest.raises(AttributeError):
        cfg.n_clients = 6  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.clip[""] = 3.0  # type: ignore[index]


def test_a_low_full_graph_cutoff_falls_back_to_the_full_graph_when_no_degree_is_safe() -> None:
    """20 clients over a cutoff of 10: no SecAgg+ degree below 19 meets the bound, so the
    default is the full graph (it used to become an odd degree 19 and a confusing error)."""
    cfg = SecAggConfig(n_clients=20, full_graph_cutoff=10)
    assert cfg.full_graph and default_degree(20) is None
