"""Episodes: disjoint context/query sets, each pair in at most one episode per draw."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedvpa_secure.data.episodes import Episode, cross_fit_splits, eval_split, partition_episodes
from fedvpa_secure.errors import ConfigError


@given(
    n_pairs=st.integers(min_value=1, max_value=600),
    context_size=st.integers(min_value=0, max_value=40),
    query_size=st.integers(min_value=1, max_value=40),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_episodes_are_disjoint_and_use_every_pair_at_most_once(
    n_pairs: int, context_size: int, query_size: int, seed: int
) -> None:
    size = context_size + query_size
    if n_pairs < size:
        with pytest.raises(ConfigError, match="cannot form one episode"):
            partition_episodes(n_pairs, context_size, query_size, np.random.default_rng(seed))
        return
    episodes = partition_episodes(n_pairs, context_size, query_size, np.random.default_rng(seed))
    assert len(episodes) == n_pairs // size
    used: list[int] = []
    for episode in episodes:
        assert len(episode.context) == context_size and len(episode.query) == query_size
        assert not set(episode.context) & set(episode.query)
        assert all(type(i) is int and 0 <= i < n_pairs for i in (*episode.context, *episode.query))
        used.extend((*episode.context, *episode.query))
    assert len(used) == len(set(used)), "a pair is in two episodes"
    assert n_pairs - len(used) < size  # only the leftover that cannot fill an episode is unused


def test_each_call_draws_a_fresh_partition() -> None:
    rng = np.random.default_rng(0)
    first = partition_episodes(64, 8, 8, rng)
    second = partition_episodes(64, 8, 8, rng)
    assert first != second
    assert partition_episodes(64, 8, 8, np.random.default_rng(0)) == first


def test_partition_is_uniform_over_pairs() -> None:
    """Data-independent and unbiased: every index is a context member equally often."""
    rng = np.random.default_rng(1)
    counts = np.zeros(20)
    for _ in range(2000):
        for episode in partition_episodes(20, 3, 5, rng):
            counts[list(episode.context)] += 1
    expected = 2000 * 2 * 3 / 20
    assert np.all(np.abs(counts - expected) < 0.15 * expected)


def test_episode_is_frozen() -> None:
    episode = Episode(context=(0, 1), query=(2,))
    with pytest.raises(AttributeError):
        episode.context = (3,)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((10, -1, 2), "context_size must be an integer >= 0"),
        ((10, 2, 0), "query_size must be an integer >= 1"),
        ((-1, 2, 2), "n_pairs"),
        ((10, 2.5, 2), "context_size"),
        ((10, True, 2), "context_size"),
    ],
)
def test_bad_sizes(args: tuple, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        partition_episodes(*args, np.random.default_rng(0))


def test_eval_split_first_k_without_rng() -> None:
    assert eval_split(6, 2) == ((0, 1), (2, 3, 4, 5))
    assert eval_split(3, 0) == ((), (0, 1, 2))


@given(
    n_pairs=st.integers(min_value=2, max_value=300),
    data=st.data(),
)
def test_eval_split_random_context_and_all_other_pairs_as_queries(
    n_pairs: int, data: st.DataObject
) -> None:
    context_size = data.draw(st.integers(min_value=0, max_value=n_pairs - 1))
    seed = data.draw(st.integers(min_value=0, max_value=2**32 - 1))
    context, query = eval_split(n_pairs, context_size, np.random.default_rng(seed))
    assert len(context) == context_size
    assert not set(context) & set(query)
    assert sorted((*context, *query)) == list(range(n_pairs))


def test_eval_split_needs_a_query_left() -> None:
    with pytest.raises(ConfigError, match="none left to score"):
        eval_split(8, 8, np.random.default_rng(0))


@given(
    n_pairs=st.integers(min_value=2, max_value=400),
    context_size=st.integers(min_value=0, max_value=399),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_cross_fit_scores_every_pair_once_with_a_disjoint_full_context(
    n_pairs: int, context_size: int, seed: int
) -> None:
    if context_size >= n_pairs:
        with pytest.raises(ConfigError, match="none left to score"):
            cross_fit_splits(n_pairs, context_size, np.random.default_rng(seed))
        return
    splits = cross_fit_splits(n_pairs, context_size, np.random.default_rng(seed))
    scored = [i for _, query in splits for i in query]
    assert sorted(scored) == list(range(n_pairs)), "every pair is scored exactly once"
    for context, query in splits:
        assert len(context) == context_size == len(set(context))
        assert not set(context) & set(query), "a scored pair is in its own context"
    # as few folds as the context allows: one more fold would not be needed
    assert len(splits) == -(-n_pairs // (n_pairs - context_size))


def test_cross_fit_contexts_are_uniform_draws_from_the_other_folds() -> None:
    """320 pairs, K_ctx 64: two folds of 160, each scored with 64 of the other fold's pairs.

    Control against a fixed block (e.g. always the first 64 other pairs): over many seeds every
    pair lands in a context about 64/160 of the times its fold is not being scored.
    """
    counts = np.zeros(320)
    seeds = 300
    for seed in range(seeds):
        splits = cross_fit_splits(320, 64, np.random.default_rng(seed))
        assert [len(q) for _, q in splits] == [160, 160]
        (ctx_a, query_a), (ctx_b, query_b) = splits
        assert set(ctx_a) <= set(query_b) and set(ctx_b) <= set(query_a)
        for context, _ in splits:
            counts[list(context)] += 1
    rate = counts / seeds  # each pair is outside the scored fold in exactly one of the two
    assert abs(rate.mean() - 64 / 160) < 1e-9
    assert rate.min() > 0.25 and rate.max() < 0.55
