"""User-type protocols: labels, conflict flags and display order, on real HH-RLHF rows."""

from __future__ import annotations

from collections import Counter
from functools import cache

import numpy as np
import pytest
from learner_kit import HH_RLHF as REAL

from fedvpa_secure.data.hh_rlhf import RawDataset, load_folder
from fedvpa_secure.data.protocols import (
    CHOSEN,
    REJECTED,
    assign,
    make_candidates,
    make_pairs,
    normalise_type_mix,
    protocol_user_types,
)
from fedvpa_secure.data.synthetic import CAT_LOVER, DOG_LOVER
from fedvpa_secure.data.types import Pair, RawPair
from fedvpa_secure.errors import ConfigError, DataError

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"no HH-RLHF folder at {REAL}")
CAP = 120


@cache
def real() -> RawDataset:
    return load_folder(REAL, max_pairs_per_subset=CAP)


def responses(pair: Pair) -> tuple[str, str]:
    return pair.response_a, pair.response_b


def preferred_text(pair: Pair, user_type: str | None = None) -> str:
    label = pair.preferred if user_type is None else pair.labels_by_type[user_type]
    return responses(pair)[label]


def raw_by_id() -> dict[str, RawPair]:
    return {p.pair_id: p for p in real().pairs if p.subset != "relabeled-dpl"}


def relabeled_by_id() -> dict[str, RawPair]:
    return {p.pair_id: p for p in real().pairs if p.subset == "relabeled-dpl"}


def test_user_types_are_sorted_per_protocol() -> None:
    assert protocol_user_types("p1") == ("harmless", "helpful")
    assert protocol_user_types("p2") == ("harmless", "helpful")
    assert protocol_user_types("p3") == ("harmless-first", "helpful-first")
    assert protocol_user_types("synthetic") == (CAT_LOVER, DOG_LOVER)
    with pytest.raises(ConfigError, match="unknown data protocol 'p9'"):
        protocol_user_types("p9")


@needs_real
def test_p1_type_is_subset_family_with_original_labels() -> None:
    pairs = make_pairs("p1", real().pairs, seed=0)
    raw = raw_by_id()
    assert len(pairs) == 4 * CAP  # the four HH subsets; relabeled-dpl is not part of P1
    for pair in pairs:
        source = raw[pair.pair_id]
        expected = "harmless" if source.subset == "harmless-base" else "helpful"
        assert pair.user_type == expected and pair.subset == source.subset
        assert preferred_text(pair) == source.chosen
        assert dict(pair.labels_by_type) == {expected: pair.preferred}  # other type unknown
        assert pair.conflicting is False
    assert Counter(p.user_type for p in pairs) == {"helpful": 3 * CAP, "harmless": CAP}


@needs_real
def test_p2_type_is_objective_label_is_relabel_and_conflict_is_disagreement() -> None:
    pairs = make_pairs("p2", real().pairs, seed=0)
    relabeled = relabeled_by_id()
    assert len(pairs) == CAP
    for pair in pairs:
        row = relabeled[pair.pair_id]
        assert pair.user_type == row.extra["objective"]
        assert preferred_text(pair) == row.chosen  # chosen == responses[label]
        assert pair.conflicting == (row.extra["label"] != row.extra["original_label"])
        assert dict(pair.labels_by_type) == {pair.user_type: pair.preferred}
    assert 0 < sum(p.conflicting for p in pairs) < len(pairs)


@needs_real
def test_p2_conflicting_pairs_prefer_the_response_hh_rejected() -> None:
    """On a disagreeing relabeled row the relabel picks the original HH *rejected* response."""
    hh = {p.pair_id: p for p in load_folder(REAL, subsets=["helpful-base", "harmless-base"]).pairs}
    checked = 0
    for pair in make_pairs("p2", real().pairs, seed=0):
        if pair.pair_id in hh:
            original = hh[pair.pair_id]
            expected = original.rejected if pair.conflicting else original.chosen
            assert preferred_text(pair) == expected
            checked += 1
    assert checked > 0.9 * CAP


def test_p2_rejects_unknown_objective() -> None:
    row = RawPair("id", "Human: Q?", "a", "b", "relabeled-dpl", "x:1", {"objective": "funny"})
    with pytest.raises(DataError, match=r"x:1: p2 needs .* got 'funny'"):
        make_candidates("p2", [row])


@needs_real
def test_p3_reverses_harmless_base_for_helpful_first_only() -> None:
    pairs = make_pairs("p3", real().pairs, seed=0)
    raw = raw_by_id()
    assert len(pairs) == 4 * CAP  # helpful subsets + harmless-base, not relabeled-dpl
    for pair in pairs:
        source = raw[pair.pair_id]
        harmless_base = source.subset == "harmless-base"
        assert set(pair.labels_by_type) == {"harmless-first", "helpful-first"}  # both known
        assert preferred_text(pair, "harmless-first") == source.chosen
        expected_helpful = source.rejected if harmless_base else source.chosen
        assert preferred_text(pair, "helpful-first") == expected_helpful
        assert pair.conflicting == harmless_base
        assert pair.preferred == pair.labels_by_type[pair.user_type]


@needs_real
def test_p3_type_mix_draws_types_per_pair() -> None:
    pairs = make_pairs(
        "p3", real().pairs, seed=3, type_mix={"helpful-first": 0.3, "harmless-first": 0.7}
    )
    share = Counter(p.user_type for p in pairs)["helpful-first"] / len(pairs)
    assert 0.22 < share < 0.38


@needs_real
def test_candidates_are_unique_by_pair_id() -> None:
    doubled = list(real().pairs) * 2
    for protocol in ("p1", "p2", "p3"):
        ids = [c.raw.pair_id for c in make_candidates(protocol, doubled)]
        assert len(ids) == len(set(ids)) > 0


@needs_real
@pytest.mark.parametrize("protocol", ["p1", "p2", "p3"])
def test_display_order_is_random_and_preferred_follows_it(protocol: str) -> None:
    pairs = make_pairs(protocol, real().pairs, seed=11)
    raw = {
        p.pair_id: p for p in real().pairs if (p.subset == "relabeled-dpl") == (protocol == "p2")
    }
    chosen_first = [p.response_a == raw[p.pair_id].chosen for p in pairs]
    assert 0.35 < np.mean(chosen_first) < 0.65
    assert 0.35 < np.mean([p.preferred for p in pairs]) < 0.65


@needs_real
def test_assign_swaps_every_label_with_the_order() -> None:
    cand = make_candidates("p3", [p for p in real().pairs if p.subset == "harmless-base"][:1])[0]
    seen = set()
    for seed in range(20):
        pair = assign(cand, "helpful-first", np.random.default_rng(seed))
        swapped = pair.response_a == cand.raw.rejected
        seen.add(swapped)
        assert pair.labels_by_type["harmless-first"] == (CHOSEN ^ swapped)
        assert pair.labels_by_type["helpful-first"] == (REJECTED ^ swapped)
    assert seen == {True, False}


@needs_real
def test_assign_refuses_a_type_that_cannot_hold_the_pair() -> None:
    cand = make_candidates("p1", [p for p in real().pairs if p.subset == "harmless-base"][:1])[0]
    with pytest.raises(ConfigError, match="cannot go to a 'helpful' user"):
        assign(cand, "helpful", np.random.default_rng(0))


def test_type_mix_validation() -> None:
    assert normalise_type_mix("p3", {"helpful-first": 3, "harmless-first": 7}) == {
        "harmless-first": 0.7,
        "helpful-first": 0.3,
    }
    assert normalise_type_mix("p1", None) == {"harmless": 0.5, "helpful": 0.5}
    with pytest.raises(
        ConfigError, match=r"does not have; its user types are \['harmless', 'helpful'\]"
    ):
        normalise_type_mix("p1", {"helpful-first": 1.0})
    with pytest.raises(ConfigError, match="non-negative shares"):
        normalise_type_mix("p3", {"helpful-first": -1.0, "harmless-first": 2.0})
    with pytest.raises(ConfigError, match="non-negative shares"):
        normalise_type_mix("p3", {"helpful-first": 0.0})
