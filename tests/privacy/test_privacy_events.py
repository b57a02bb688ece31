"""Events: validation, immutability and exact JSON round trips."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from privacy.errors import InvalidParameterError
from privacy.events import (
    ComposedEvent,
    DistributedNoiseEvent,
    GaussianEvent,
    SampledGaussianEvent,
    compose,
    event_from_dict,
    event_from_json,
)

noise = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False)
rates = st.floats(min_value=1e-6, max_value=1.0, exclude_min=True)
steps = st.integers(min_value=1, max_value=10**7)
simple = st.one_of(
    st.builds(GaussianEvent, noise),
    st.builds(SampledGaussianEvent, noise, rates, steps),
    st.builds(
        DistributedNoiseEvent,
        st.sampled_from(["discrete_gaussian", "skellam"]),
        st.floats(min_value=0.5, max_value=1e4),
        st.integers(1, 50),
        st.just(100),
        st.floats(min_value=1.0, max_value=1e3),
        st.integers(1, 10**6),
        rates,
        steps,
    ),
)
events = st.one_of(simple, st.builds(ComposedEvent, st.lists(simple, min_size=1, max_size=4)))


@given(events)
def test_json_round_trip_is_exact(event) -> None:
    assert event_from_json(event.to_json()) == event
    assert event_from_dict(event.to_dict()) == event
    assert event_from_json(event.to_json()).to_json() == event.to_json()


@given(events)
def test_components_are_preserved_by_json(event) -> None:
    assert event_from_json(event.to_json()).gaussian_components() == event.gaussian_components()


def test_events_are_immutable() -> None:
    event = SampledGaussianEvent(1.0, 0.01, 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.noise_multiplier = 0.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"noise_multiplier": 0.0, "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": -1.0, "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": float("nan"), "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": float("inf"), "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.0, "steps": 1}, "sample_rate"),
        ({"noise_multiplier": 1.0, "sample_rate": 1.5, "steps": 1}, "sample_rate"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 0}, "steps"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 2.5}, "steps"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": True}, "steps"),
        ({"noise_multiplier": "1", "sample_rate": 0.1, "steps": 1}, "noise_multiplier"),
    ],
)
def test_invalid_parameters_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(InvalidParameterError, match=message):
        SampledGaussianEvent(**kwargs)


def test_numeric_types_are_normalised() -> None:
    event = SampledGaussianEvent(np.float32(1.5), 1, np.int64(10))
    assert event.to_dict() == {
        "type": "sampled_gaussian",
        "noise_multiplier": 1.5,
        "sample_rate": 1.0,
        "steps": 10,
    }
    assert isinstance(event.steps, int) and isinstance(event.sample_rate, float)


def test_gaussian_event_is_one_full_batch_step() -> None:
    assert (
        GaussianEvent(2.0).gaussian_components()
        == SampledGaussianEvent(2.0, 1.0, 1).gaussian_components()
    )


def test_composed_event_concatenates_components() -> None:
    a, b = SampledGaussianEvent(1.0, 0.01, 10), GaussianEvent(3.0)
    composed = ComposedEvent([a, b])
    assert composed.gaussian_components() == a.gaussian_components() + b.gaussian_components()
    assert composed.summary() is None
    assert compose([a]) is a
    with pytest.raises(InvalidParameterError):
        ComposedEvent(())


def test_distributed_event_validates_survivors() -> None:
    with pytest.raises(InvalidParameterError, match="max_summands"):
        DistributedNoiseEvent("discrete_gaussian", 5.0, 10, 5, 10.0, 100, 0.1, 1)
    with pytest.raises(InvalidParameterError, match="noise"):
        DistributedNoiseEvent("laplace", 5.0, 10, 10, 10.0, 100, 0.1, 1)


@pytest.mark.parametrize(
    "data",
    [
        {"type": "nope"},
        {"type": "gaussian"},
        {"type": "gaussian", "noise_multiplier": 1.0, "extra": 1},
        {"type": "composed", "events": {"type": "gaussian", "noise_multiplier": 1.0}},
        ["gaussian"],
    ],
)
def test_strict_parsing_rejects_malformed_events(data) -> None:
    with pytest.raises(InvalidParameterError):
        event_from_dict(data)


def test_invalid_json_is_reported() -> None:
    with pytest.raises(InvalidParameterError, match="JSON"):
        event_from_json("{not json")
