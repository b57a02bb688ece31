"""The generated two-persona set: determinism, balance, variety and persona labels."""

from __future__ import annotations

import pytest

from fedvpa_secure.data.protocols import make_pairs
from fedvpa_secure.data.synthetic import CAT_LOVER, DOG_LOVER, generate_synthetic
from fedvpa_secure.data.types import Pair
from fedvpa_secure.errors import ConfigError

CAT_WORDS = ("cat", "kitten", "maine coon", "british shorthair")
DOG_WORDS = (
    "dog", "puppy", "retriever", "labrador", "beagle", "corgi", "collie", "poodle", "dachshund",
    "spaniel",
)  # fmt: skip


def preferred_text(pair: Pair, user_type: str) -> str:
    return (pair.response_a, pair.response_b)[pair.labels_by_type[user_type]]


def test_synthetic_is_deterministic_from_the_seed() -> None:
    assert generate_synthetic(200, seed=5) == generate_synthetic(200, seed=5)
    assert generate_synthetic(200, seed=5) != generate_synthetic(200, seed=6)
    first = make_pairs("synthetic", generate_synthetic(100, seed=5), seed=1)
    assert first == make_pairs("synthetic", generate_synthetic(100, seed=5), seed=1)


def test_synthetic_is_balanced_distinct_and_short() -> None:
    raw = generate_synthetic(401, seed=2)
    assert sum(bool(p.extra["controversial"]) for p in raw) == 200
    assert len({p.pair_id for p in raw}) == 401
    for pair in raw:
        for text in (pair.prompt, pair.chosen, pair.rejected):
            assert 0 < len(text.split()) < 60
    # Enough variety that no phrasing dominates: many distinct responses per side.
    assert len({p.chosen for p in raw[:200]}) > 150
    assert len({p.rejected for p in raw[200:]}) > 100


def test_synthetic_controversial_pairs_split_the_personas() -> None:
    pairs = make_pairs("synthetic", generate_synthetic(300, seed=4), seed=0)
    for pair in pairs:
        cat, dog = (preferred_text(pair, t) for t in (CAT_LOVER, DOG_LOVER))
        assert set(pair.labels_by_type) == {CAT_LOVER, DOG_LOVER}
        if pair.conflicting:
            assert cat != dog
            assert any(w in cat for w in CAT_WORDS) and not any(w in cat for w in DOG_WORDS)
            assert any(w in dog for w in DOG_WORDS) and not any(w in dog for w in CAT_WORDS)
        else:
            assert cat == dog  # both prefer the helpful answer
            other = (pair.response_a, pair.response_b)[1 - pair.labels_by_type[CAT_LOVER]]
            assert len(other.split()) < 20  # the rude one-liner


def test_synthetic_rejects_a_negative_count() -> None:
    with pytest.raises(ConfigError, match="n_pairs"):
        generate_synthetic(-1, seed=0)


def test_synthetic_personas_need_no_real_data() -> None:
    """The offline default: pairs carry both personas' labels and a random display order."""
    pairs = make_pairs("synthetic", generate_synthetic(200, seed=9), seed=9)
    assert {p.user_type for p in pairs} == {CAT_LOVER, DOG_LOVER}
    assert 60 < sum(p.preferred for p in pairs) < 140
