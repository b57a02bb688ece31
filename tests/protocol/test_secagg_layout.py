"""The canonical layout, its hash, and quantisation of an update dict plus extra vectors."""

from __future__ import annotations

import secrets

import numpy as np
import pytest

from fedvpa_secure.errors import ConfigError
from fedvpa_secure.secagg import InvalidUpdateError, Layout, SecAggConfig
from fedvpa_secure.secagg.quantize import decode, encode_into

CFG = SecAggConfig(n_clients=5, clip={"": 1.0, "prior.": 50.0})
TENSORS = {"z.last": ((2, 3), "float32"), "a.first": ((4,), "float64"), "m": ((), "float16")}


def test_entries_are_sorted_and_contiguous() -> None:
    layout = Layout.build(TENSORS, CFG, extras={"prior.v_k": 2, "prior.n_k": 2})
    names = [e.name for e in layout.entries]
    assert names == ["a.first", "m", "z.last", "prior.n_k", "prior.v_k", "__weight__", "__count__"]
    offset = 0
    for e in layout.entries:
        assert e.offset == offset
        offset += e.size
    assert layout.size == offset == 4 + 1 + 6 + 2 + 2 + 2
    assert layout.entry("prior.n_k").clip == 50.0 and layout.entry("m").clip == 1.0


def test_layout_is_independent_of_dict_order_and_example_values() -> None:
    a = Layout.build(TENSORS, CFG)
    b = Layout.build(dict(reversed(list(TENSORS.items()))), CFG)
    c = Layout.build({k: np.zeros(s, d) for k, (s, d) in TENSORS.items()}, CFG)
    assert a.digest == b.digest == c.digest


@pytest.mark.parametrize(
    "change",
    [
        {"tensors": {**TENSORS, "z.last": ((3, 2), "float32")}},  # shape
        {"tensors": {**TENSORS, "z.last": ((2, 3), "float64")}},  # dtype
        {"tensors": {**{k: v for k, v in TENSORS.items() if k != "m"}, "n": ((), "float16")}},
        {"config": SecAggConfig(n_clients=5, clip={"": 0.5, "prior.": 50.0})},  # clip
        {"config": SecAggConfig(n_clients=5, clip={"": 1.0, "prior.": 50.0}, frac_bits={"": 8})},
        {"config": SecAggConfig(n_clients=5, clip={"": 1.0, "prior.": 50.0}, weight_cap=5.0)},
        {"extras": {"prior.n_k": 3}},
    ],
)
def test_hash_covers_names_shapes_dtypes_and_quantisation(change: dict) -> None:
    ref = Layout.build(TENSORS, CFG)
    other = Layout.build(
        change.get("tensors", TENSORS), change.get("config", CFG), extras=change.get("extras")
    )
    assert other.digest != ref.digest


@pytest.mark.parametrize(
    ("tensors", "extras", "match"),
    [
        ({"__w": ((1,), "float32")}, None, "invalid"),
        ({"a b": ((1,), "float32")}, None, "invalid"),
        ({"x": ((1,), "int32")}, None, "dtype"),
        ({"x": ((1,), "float32")}, {"x": 3}, "same name"),
        ({"x": ((1,), "float32")}, {"y": np.zeros((2, 2))}, "1-D"),
        ({"x": [1, 2]}, None, "ndarray"),
    ],
)
def test_invalid_layouts_are_refused(tensors, extras, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        Layout.build(tensors, CFG, extras=extras)


def test_quantize_then_decode_one_client() -> None:
    layout = Layout.build(TENSORS, CFG, extras={"prior.n_k": 2})
    gen = np.random.default_rng(0)
    tensors = {k: gen.uniform(-1, 1, s).astype(d) for k, (s, d) in TENSORS.items()}
    extras = {"prior.n_k": np.array([3.5, 40.25])}
    ring = layout.quantize(tensors, secrets.token_bytes, extras=extras, weight=7.0)
    decoded = layout.decode(ring)
    for k, v in tensors.items():
        f = layout.entry(k).frac_bits
        assert decoded.tensors[k].shape == v.shape
        assert np.abs(decoded.tensors[k] - v.astype(np.float64)).max() < 2.0**-f
    assert (
        np.abs(decoded.extras["prior.n_k"] - extras["prior.n_k"]).max()
        < 2.0 ** -layout.entry("prior.n_k").frac_bits
    )
    assert abs(decoded.weight - 7.0) < 1e-6 and decoded.count == 1
    assert layout.out_of_range_groups(ring, 1) == []


def test_two_complement_encoding_and_clipping() -> None:
    out = np.empty(4, np.uint32)
    encode_into(np.array([-3.0, 3.0, -0.5, 0.0]), 1.0, 2, out, np.zeros(4, np.uint32))
    assert out.view(np.int32).tolist() == [-4, 4, -2, 0]  # clipped to +-1, scale 4
    assert decode(out, 2).tolist() == [-1.0, 1.0, -0.5, 0.0]


def test_weight_is_capped() -> None:
    layout = Layout.build({"x": ((1,), "float32")}, SecAggConfig(n_clients=3, weight_cap=10.0))
    ring = layout.quantize({"x": np.zeros(1, np.float32)}, secrets.token_bytes, weight=1e9)
    assert layout.decode(ring).weight == 10.0


def test_quantize_refuses_mismatches() -> None:
    layout = Layout.build({"x": ((2,), "float32")}, CFG, extras={"prior.n_k": 2})
    good = {"x": np.zeros(2, np.float32)}
    extras = {"prior.n_k": np.zeros(2)}
    layout.quantize(good, secrets.token_bytes, extras=extras)
    with pytest.raises(InvalidUpdateError, match="missing extras"):
        layout.quantize(good, secrets.token_bytes)
    with pytest.raises(InvalidUpdateError, match="unexpected"):
        layout.quantize({**good, "y": np.zeros(1, np.float32)}, secrets.token_bytes, extras=extras)
    with pytest.raises(InvalidUpdateError, match="NaN"):
        layout.quantize(good, secrets.token_bytes, extras={"prior.n_k": np.array([1.0, np.nan])})
    with pytest.raises(InvalidUpdateError, match="not ndarray"):
        layout.quantize({"x": [0.0, 0.0]}, secrets.token_bytes, extras=extras)  # type: ignore[dict-item]
    with pytest.raises(InvalidUpdateError, match="weight"):
        layout.quantize(good, secrets.token_bytes, extras=extras, weight=float("inf"))
