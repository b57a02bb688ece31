"""Giving pairs to training and unseen evaluation clients."""

from __future__ import annotations

from collections import Counter
from functools import cache

import pytest
from hypothesis import given
from hypothesis import strategies as st
from learner_kit import HH_RLHF as REAL

from fedvpa_secure.data.dialogue import first_human_turn
from fedvpa_secure.data.hh_rlhf import RawDataset, load_folder
from fedvpa_secure.data.partition import allocate_clients, build_federated_data
from fedvpa_secure.data.source import SYNTHETIC
from fedvpa_secure.data.split import split_pairs
from fedvpa_secure.data.types import FederatedData
from fedvpa_secure.errors import ConfigError

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"no HH-RLHF folder at {REAL}")
P3_MIX = {"helpful-first": 0.3, "harmless-first": 0.7}


@cache
def real() -> RawDataset:
    return load_folder(REAL, max_pairs_per_subset=300)


def all_clients(fed: FederatedData) -> list:
    return [*fed.train_clients, *fed.eval_clients]


def assert_well_formed(fed: FederatedData, pairs_per_client: int) -> None:
    ids = [p.pair_id for c in all_clients(fed) for p in c.pairs]
    assert len(ids) == len(set(ids)), "a pair is held by two clients"
    client_ids = [c.client_id for c in all_clients(fed)]
    assert len(client_ids) == len(set(client_ids))
    for client in all_clients(fed):
        assert client.user_type in fed.user_types
        assert all(p.user_type == client.user_type for p in client.pairs)
        assert all(p.preferred == p.labels_by_type[client.user_type] for p in client.pairs)
    assert all(len(c.pairs) == pairs_per_client for c in fed.train_clients)


@needs_real
@pytest.mark.parametrize("protocol", ["p1", "p2", "p3"])
def test_hh_protocols_give_disjoint_single_type_clients(protocol: str) -> None:
    fed = build_federated_data(
        protocol, real(), n_clients=10, pairs_per_client=16, n_eval_clients=4, seed=0
    )
    assert fed.protocol == protocol
    assert len(fed.train_clients) == 10 and len(fed.eval_clients) == 4
    assert_well_formed(fed, 16)
    assert Counter(c.user_type for c in fed.train_clients) == dict.fromkeys(fed.user_types, 5)
    # Unseen users: no conversation opener in both training and evaluation clients.
    train_openers = {first_human_turn(p.prompt) for c in fed.train_clients for p in c.pairs}
    eval_openers = {first_human_turn(p.prompt) for c in fed.eval_clients for p in c.pairs}
    assert not train_openers & eval_openers
    assert "openers set aside" in fed.description


@needs_real
def test_type_mix_30_70_is_respected_on_both_sides() -> None:
    fed = build_federated_data(
        "p3",
        real(),
        n_clients=20,
        pairs_per_client=8,
        n_eval_clients=10,
        type_mix=P3_MIX,
        seed=1,
    )
    assert Counter(c.user_type for c in fed.train_clients) == {
        "helpful-first": 6,
        "harmless-first": 14,
    }
    assert Counter(c.user_type for c in fed.eval_clients) == {
        "helpful-first": 3,
        "harmless-first": 7,
    }
    # Client types are shuffled, not grouped by index.
    types = [c.user_type for c in fed.train_clients]
    assert types != sorted(types) and types != sorted(types, reverse=True)


@needs_real
def test_p3_pairs_are_typed_when_dealt_and_conflict_on_harmless_base() -> None:
    fed = build_federated_data(
        "p3", real(), n_clients=12, pairs_per_client=32, n_eval_clients=0, seed=2
    )
    pairs = [p for c in fed.train_clients for p in c.pairs]
    assert {p.conflicting for p in pairs} == {True, False}
    assert all(p.conflicting == (p.subset == "harmless-base") for p in pairs)
    assert all(set(p.labels_by_type) == set(fed.user_types) for p in pairs)
    disagreeing = [
        p for p in pairs if p.labels_by_type["helpful-first"] != p.labels_by_type["harmless-first"]
    ]
    assert disagreeing == [p for p in pairs if p.conflicting]


@needs_real
def test_same_seed_same_federation_other_seed_other() -> None:
    kwargs = {"n_clients": 6, "pairs_per_client": 8, "n_eval_clients": 2}
    first = build_federated_data("p2", real(), seed=4, **kwargs)
    assert first == build_federated_data("p2", real(), seed=4, **kwargs)
    assert first != build_federated_data("p2", real(), seed=5, **kwargs)


@needs_real
def test_eval_raw_pairs_supply_the_eval_clients() -> None:
    train_raw, eval_raw = split_pairs(real().pairs, 0.3, seed=7)
    # Put one eval opener back into training data: it must be dropped from training.
    leaked = next(p for p in eval_raw if p.subset == "harmless-base")
    fed = build_federated_data(
        "p1",
        [*train_raw, leaked],
        n_clients=6,
        pairs_per_client=16,
        n_eval_clients=4,
        eval_pairs_per_client=10,
        seed=0,
        eval_raw_pairs=eval_raw,
    )
    eval_ids = {p.pair_id for p in eval_raw}
    assert all(p.pair_id in eval_ids for c in fed.eval_clients for p in c.pairs)
    assert all(len(c.pairs) == 10 for c in fed.eval_clients)
    train_pairs = [p for c in fed.train_clients for p in c.pairs]
    assert all(p.pair_id not in eval_ids for p in train_pairs)
    assert leaked.pair_id not in {p.pair_id for p in train_pairs}
    assert "1 training pairs sharing an opener dropped" in fed.description


@needs_real
def test_not_enough_pairs_of_a_type_is_a_clear_config_error() -> None:
    with pytest.raises(ConfigError) as info:
        build_federated_data(
            "p1", real(), n_clients=10, pairs_per_client=100, n_eval_clients=0, seed=0
        )
    message = str(info.value)
    assert "5 training clients of type 'harmless' x 100 pairs need 500 pairs" in message
    assert "only 300 'harmless' pairs" in message
    assert "lower the number of clients or pairs per client" in message


@needs_real
def test_not_enough_pairs_in_the_shared_pool() -> None:
    with pytest.raises(
        ConfigError, match=r"p3: 40 training clients x 64 pairs need 2560 pairs, but only"
    ):
        build_federated_data(
            "p3", real(), n_clients=40, pairs_per_client=64, n_eval_clients=0, seed=0
        )


def test_hh_protocol_with_synthetic_source_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"needs HH-RLHF pairs.*--data"):
        build_federated_data(
            "p3", SYNTHETIC, n_clients=2, pairs_per_client=4, n_eval_clients=0, seed=0
        )


def test_synthetic_protocol_builds_balanced_clients_offline() -> None:
    fed = build_federated_data(
        "synthetic", SYNTHETIC, n_clients=8, pairs_per_client=40, n_eval_clients=4, seed=3
    )
    assert_well_formed(fed, 40)
    train_pairs = [p for c in fed.train_clients for p in c.pairs]
    assert sum(p.conflicting for p in train_pairs) == len(train_pairs) // 2
    assert Counter(c.user_type for c in fed.train_clients) == {"cat-lover": 4, "dog-lover": 4}
    assert fed == build_federated_data(
        "synthetic", None, n_clients=8, pairs_per_client=40, n_eval_clients=4, seed=3
    )


def test_synthetic_refuses_hh_pairs() -> None:
    with pytest.raises(ConfigError, match="generates its own pairs"):
        build_federated_data(
            "synthetic", [], n_clients=1, pairs_per_client=2, n_eval_clients=0, seed=0
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_clients": 0}, "n_clients must be an integer >= 1"),
        ({"pairs_per_client": 0}, "pairs_per_client"),
        ({"n_eval_clients": -1}, "n_eval_clients must be an integer >= 0"),
        ({"eval_pairs_per_client": 0}, "eval_pairs_per_client"),
        ({"type_mix": {"dogs": 1.0}}, "type_mix names"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"n_clients": 2, "pairs_per_client": 4, "n_eval_clients": 1, "seed": 0} | kwargs
    with pytest.raises(ConfigError, match=message):
        build_federated_data("synthetic", SYNTHETIC, **args)


def test_unknown_protocol() -> None:
    with pytest.raises(ConfigError, match="unknown data protocol"):
        build_federated_data(
            "p4", SYNTHETIC, n_clients=1, pairs_per_client=1, n_eval_clients=0, seed=0
        )


@given(
    n=st.integers(min_value=0, max_value=500),
    share=st.floats(min_value=0.0, max_value=1.0),
)
def test_allocate_clients_sums_and_rounds_by_largest_remainder(n: int, share: float) -> None:
    counts = allocate_clients(n, {"a": share, "b": 1.0 - share})
    assert sum(counts.values()) == n
    assert abs(counts["a"] - n * share) <= 1
    assert allocate_clients(10, {"a": 0.3, "b": 0.7}) == {"a": 3, "b": 7}
