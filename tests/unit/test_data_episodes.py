"""Episodes: disjoint context/query sets, each pair in at most one episode per draw."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fedvpa_secure.data.episodes import Episode, eval_split, partition_episodes
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
