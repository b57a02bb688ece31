"""Correctness of the sum: exact integers, float round trip, unbiased rounding, uniform masks.

PROTOCOL.md, "Tests that must exist", first bullet.
"""

from __future__ import annotations

import secrets

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from scipy.stats import chisquare
from secagg_testkit import make_updates, true_sum

from fedvpa_secure.secagg import (
    InProcessRound,
    Layout,
    SecAggConfig,
    Stage,
    keys,
    masking,
    run_in_process,
)
from fedvpa_secure.secagg.messages import MaskedInput


@pytest.mark.parametrize("n", [3, 5, 10, 50])
def test_exact_sum_of_random_integer_vectors(n: int) -> None:
    """Integer inputs with 0 fractional bits come back exactly, through the whole protocol."""
    gen = np.random.default_rng(n)
    cfg = SecAggConfig(n_clients=n, clip={"": 1000.0}, frac_bits={"": 0})
    updates = [
        {
            "a": gen.integers(-1000, 1001, size=(6, 5)).astype(np.float64),
            "b": gen.integers(-1000, 1001, size=7).astype(np.float64),
        }
        for _ in range(n)
    ]
    weights = [float(w) for w in gen.integers(0, 500, size=n)]
    result = run_in_process(updates, cfg, weights=weights)
    expected = true_sum(updates, range(n))
    for name in expected:
        np.testing.assert_array_equal(result.tensors[name], expected[name])
    assert result.weight == sum(weights)
    assert result.count == n
    assert len(result.survivors) == n


@pytest.mark.parametrize("n", [3, 5, 10, 50])
def test_masks_cancel_exactly_on_random_ring_vectors(n: int) -> None:
    """Uniform uint32 inputs (every wrap-around case) sum exactly mod 2^32 after unmasking,
    also when one client's input never arrives and its pairwise masks must be rebuilt."""
    gen = np.random.default_rng(100 + n)
    length = 1000
    ids = [f"c{i:03d}" for i in range(n)]
    session = bytes(range(32))
    mask_keys = {u: X25519PrivateKey.generate() for u in ids}
    publics = {u: keys.public_bytes(k) for u, k in mask_keys.items()}
    seeds = {u: gen.bytes(32) for u in ids}
    inputs = {u: gen.integers(0, 2**32, size=length, dtype=np.uint32) for u in ids}
    dropped = ids[-1]
    survivors = ids[:-1]
    acc = np.zeros(length, np.uint32)
    for u in survivors:
        peers = {v: publics[v] for v in ids if v != u}
        streams = masking.client_streams(u, seeds[u], session, mask_keys[u], peers)
        y = masking.apply(inputs[u].copy(), streams, algorithm="aes-256-ctr", workers=1)
        acc += y
    streams = masking.server_streams(
        session,
        {u: seeds[u] for u in survivors},
        {dropped: keys.private_bytes(mask_keys[dropped])},
        {dropped: survivors},
        publics,
    )
    masking.apply(acc, streams, algorithm="aes-256-ctr", workers=1)
    expected = np.zeros(length, np.uint32)
    for u in survivors:
        expected += inputs[u]
    np.testing.assert_array_equal(acc, expected)


@pytest.mark.parametrize(("n", "hardened"), [(3, True), (10, False), (10, True)])
def test_float_round_trip_within_n_over_2f(n: int, hardened: bool) -> None:
    """Each client's stochastic rounding errs by less than one quantum 2^-f, so n clients' sum
    errs by less than n / 2^f per coordinate; values beyond the clip are clipped first."""
    cfg = SecAggConfig(n_clients=n, hardened=hardened, clip={"": 0.5, "head": 2.0})
    updates = make_updates(n, seed=7, low=-1.5, high=1.5)
    result = run_in_process(updates, cfg)
    for name, got in result.tensors.items():
        clip = 2.0 if name == "head" else 0.5
        bits = cfg.frac_bits["head" if name == "head" else ""]
        clipped = sum(np.clip(u[name].astype(np.float64), -clip, clip) for u in updates)
        assert np.abs(got - clipped).max() < n / 2.0**bits


def test_quantisation_is_unbiased_over_repeats() -> None:
    """E[decode(encode(x))] = x: averaged over repeats the error vanishes like 1/sqrt(repeats)."""
    cfg = SecAggConfig(n_clients=3, clip={"": 1.0}, frac_bits={"": 4})  # quantum 1/16
    values = np.array([0.1, -0.1, 0.03, -0.47, 0.5 / 16, 0.999], dtype=np.float64)
    layout = Layout.build({"x": values}, cfg)
    repeats = 20000
    total = np.zeros(values.size)
    entry = layout.entry("x")
    for _ in range(repeats):
        ring = layout.quantize({"x": values}, secrets.token_bytes)
        total += ring[entry.offset : entry.stop].view(np.int32) / 16.0
    mean = total / repeats
    # per-sample std <= 0.5/16; 6 sigma of the mean
    assert np.abs(mean - values).max() < 6 * (0.5 / 16) / np.sqrt(repeats)
    # and rounding is genuinely random (not deterministic nearest rounding)
    assert abs(mean[0] - 0.125) > 0.01 and abs(mean[0] - 0.0625) > 0.01


def test_one_call_masks_tensors_extras_weight_and_count() -> None:
    """Named tensors plus extra vectors (the prior's sufficient statistics) and the weight."""
    n = 4
    cfg = SecAggConfig(n_clients=n, clip={"": 1.0, "prior.n_k": 64.0, "prior.v_k": 64.0})
    updates = make_updates(n, seed=3)
    gen = np.random.default_rng(5)
    extras = [
        {"prior.n_k": gen.uniform(0, 32, 2), "prior.v_k": gen.uniform(0, 10, 2)} for _ in range(n)
    ]
    weights = [12.0, 3.0, 5000.0, 7.5]  # one above the cap of 1000
    result = run_in_process(updates, cfg, extras=extras, weights=weights)
    bits = cfg.frac_bits["prior.n_k"]
    for name in ("prior.n_k", "prior.v_k"):
        expected = sum(e[name] for e in extras)
        assert np.abs(result.extras[name] - expected).max() < n / 2.0**bits
    assert abs(result.weight - (12.0 + 3.0 + 1000.0 + 7.5)) < 1e-3
    assert result.count == n


def test_masked_vector_alone_looks_uniform() -> None:
    """A masked input of an all-zero update passes a chi-square uniformity test on its bytes;
    the same test flags the unmasked quantised vector (negative control)."""
    n = 3
    length = 1 << 16
    cfg = SecAggConfig(n_clients=n, clip={"": 1.0})
    updates = [{"w": np.zeros(length, np.float32)} for _ in range(n)]
    rnd = InProcessRound(updates, cfg)
    rnd.run()
    masked = next(m for st, u, m in rnd.transcript if st is Stage.MASKED_INPUT and u == "c000")
    assert isinstance(masked, MaskedInput)
    y = np.frombuffer(masked.payload, dtype="<u4")[:length]
    for shift in (0, 8, 16, 24):
        counts = np.bincount((y >> shift) & 0xFF, minlength=256)
        assert chisquare(counts).pvalue > 1e-6, f"byte at shift {shift} is not uniform"
    plain = rnd.layout.quantize(updates[0], secrets.token_bytes)[:length]
    counts = np.bincount((plain >> 24) & 0xFF, minlength=256)
    assert chisquare(counts).pvalue < 1e-12
