"""Shamir sharing over GF(2^521 - 1) and the checks on rebuilt secrets.

PROTOCOL.md: reconstruct from t, t+1 and all shares; t-1 fails; duplicate or zero points and
shares from another session are rejected; a corrupted share fails the public-key check.
"""

from __future__ import annotations

import secrets
from dataclasses import replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from secagg_testkit import make_updates

from fedvpa_secure.errors import AbortRound, IntegrityError, ProtocolError
from fedvpa_secure.secagg import Hooks, InProcessRound, SecAggConfig, Stage, keys, shamir
from fedvpa_secure.secagg import client as client_module
from fedvpa_secure.secagg.messages import UnmaskShares

N, T = 7, 4
POINTS = list(range(1, N + 1))


@pytest.fixture
def secret() -> bytes:
    return secrets.token_bytes(32)


@pytest.mark.parametrize("count", [T, T + 1, N])
def test_reconstruct_from_t_t_plus_1_and_all(secret: bytes, count: int) -> None:
    shares = shamir.split(secret, POINTS, T, secrets.token_bytes)
    for start in range(N - count + 1):
        assert shamir.reconstruct(shares[start : start + count], T) == secret
    picked = [shares[i] for i in np.random.default_rng(count).permutation(N)[:count]]
    assert shamir.reconstruct(picked, T) == secret


def test_t_minus_1_shares_fail(secret: bytes) -> None:
    shares = shamir.split(secret, POINTS, T, secrets.token_bytes)
    with pytest.raises(ProtocolError, match="need 4 shares"):
        shamir.reconstruct(shares[: T - 1], T)
    # and interpolating t-1 points anyway yields an unrelated value (information-theoretic)
    chosen = shares[: T - 1]
    coeffs = shamir.lagrange_at_zero(tuple(s.x for s in chosen))
    guess = sum(c * s.y for c, s in zip(coeffs, chosen, strict=True)) % shamir.PRIME
    assert guess != int.from_bytes(secret, "big")


def test_threshold_one_and_all_points() -> None:
    secret = bytes(32)
    assert shamir.reconstruct(shamir.split(secret, [5], 1, secrets.token_bytes), 1) == secret
    big = secrets.token_bytes(32)
    assert shamir.reconstruct(shamir.split(big, POINTS, N, secrets.token_bytes), N) == big


def test_duplicate_and_zero_points_are_rejected(secret: bytes) -> None:
    with pytest.raises(ProtocolError, match="twice"):
        shamir.split(secret, [1, 2, 2], 2, secrets.token_bytes)
    with pytest.raises(ProtocolError, match="not in"):
        shamir.split(secret, [0, 1, 2], 2, secrets.token_bytes)
    shares = shamir.split(secret, POINTS, T, secrets.token_bytes)
    with pytest.raises(ProtocolError, match="twice"):
        shamir.reconstruct([shares[0], shares[0], shares[1], shares[2]], T)
    with pytest.raises(ProtocolError, match="not in"):
        shamir.reconstruct([shamir.Share(0, shares[0].y), *shares[1:T]], T)
    context = shamir.share_context(b"s" * 32, "c001", "b")
    encoded = bytearray(shamir.encode_share(shares[0], context))
    encoded[shamir.TAG_BYTES : shamir.TAG_BYTES + 4] = bytes(4)  # point 0
    with pytest.raises(ProtocolError, match="point 0"):
        shamir.decode_share(bytes(encoded), context)


def test_out_of_field_and_malformed_shares_are_rejected(secret: bytes) -> None:
    context = shamir.share_context(b"s" * 32, "c001", "b")
    share = shamir.split(secret, POINTS, T, secrets.token_bytes)[0]
    encoded = shamir.encode_share(share, context)
    too_big = encoded[: shamir.TAG_BYTES + 4] + (shamir.PRIME).to_bytes(shamir.Y_BYTES, "big")
    with pytest.raises(ProtocolError, match="outside the field"):
        shamir.decode_share(too_big, context)
    with pytest.raises(ProtocolError, match="bytes"):
        shamir.decode_share(encoded[:-1], context)
    assert shamir.decode_share(encoded, context) == share


@pytest.mark.parametrize(
    "other",
    [
        (b"t" * 32, "c001", "b"),  # another session
        (b"s" * 32, "c002", "b"),  # another owner
        (b"s" * 32, "c001", "sk"),  # another secret of the same owner
    ],
)
def test_shares_from_another_session_or_secret_are_rejected(
    secret: bytes, other: tuple[bytes, str, str]
) -> None:
    share = shamir.split(secret, POINTS, T, secrets.token_bytes)[0]
    encoded = shamir.encode_share(share, shamir.share_context(b"s" * 32, "c001", "b"))
    with pytest.raises(IntegrityError):
        shamir.decode_share(encoded, shamir.share_context(*other))


def test_a_corrupted_share_fails_the_public_key_check() -> None:
    key = X25519PrivateKey.generate()
    public = keys.public_bytes(key)
    shares = shamir.split(keys.private_bytes(key), POINTS, T, secrets.token_bytes)
    assert keys.mask_public_from_private(shamir.reconstruct(shares[:T], T)) == public
    for i in range(T):
        bad = list(shares[:T])
        bad[i] = replace(bad[i], y=(bad[i].y + 1) % shamir.PRIME)
        try:
            rebuilt = shamir.reconstruct(bad, T)
        except IntegrityError:
            continue  # the value left the 32-byte range: caught even earlier
        assert keys.mask_public_from_private(rebuilt) != public


def _corrupting_split(target_secret: list[bytes]):
    """A shamir.split that deals inconsistent shares for one chosen secret (a malicious dealer)."""
    real_split = shamir.split

    def split(secret, points, threshold, rng):
        shares = real_split(secret, points, threshold, rng)
        if target_secret and secret == target_secret[0]:
            shares[0] = replace(shares[0], y=(shares[0].y + 1) % shamir.PRIME)
        return shares

    return split


def test_protocol_rebuilt_key_that_fails_its_public_key_aborts(monkeypatch) -> None:
    """A dealer that hands out inconsistent shares of its mask key, then drops: the server's
    rebuilt key fails the public-key check and the round aborts with no output."""
    n = 6
    cfg = SecAggConfig(n_clients=n, hardened=False)
    updates = make_updates(n, seed=2)
    target: list[bytes] = []
    monkeypatch.setattr(client_module.shamir, "split", _corrupting_split(target))

    def grab(rnd, stage, outbox):
        if stage is Stage.SHARE_KEYS:
            target.append(keys.private_bytes(rnd.clients["c005"]._keys.mask_private))
        return outbox

    rnd = InProcessRound(
        updates, cfg, hooks=Hooks(server_to_clients=grab), drop_at={Stage.MASKED_INPUT: {5}}
    )
    with pytest.raises(AbortRound, match="public-key check"):
        rnd.run()
    assert rnd.server.result is None


def test_protocol_rebuilt_seed_that_fails_its_commitment_aborts(monkeypatch) -> None:
    """A dealer that hands out inconsistent shares of its self-mask seed b: the rebuilt b fails
    its commitment and the round aborts (never a silently wrong sum)."""
    n = 6
    cfg = SecAggConfig(n_clients=n, hardened=False)
    updates = make_updates(n, seed=4)
    seen: list[bytes] = []
    real_split = shamir.split

    def split(secret, points, threshold, rng):
        shares = real_split(secret, points, threshold, rng)
        if len(seen) == 0:  # c000's seed b is the first secret dealt in the round
            seen.append(secret)
            shares[0] = replace(shares[0], y=(shares[0].y + 1) % shamir.PRIME)
        return shares

    monkeypatch.setattr(client_module.shamir, "split", split)
    rnd = InProcessRound(updates, cfg)
    with pytest.raises(AbortRound, match="commitment"):
        rnd.run()


def test_protocol_garbage_revealed_share_is_rejected_and_round_survives() -> None:
    """A client revealing a corrupted share is named and dropped; the honest shares suffice."""
    n = 7
    cfg = SecAggConfig(n_clients=n)  # hardened, t = 5

    def corrupt(rnd, stage, u, reply):
        if stage is Stage.UNMASK and u == "c003" and isinstance(reply, UnmaskShares):
            owner = sorted(reply.self_mask_shares)[0]
            data = bytearray(reply.self_mask_shares[owner])
            data[-1] ^= 1
            shares = dict(reply.self_mask_shares)
            shares[owner] = bytes(data)
            return replace(reply, self_mask_shares=shares)
        return reply

    updates = make_updates(n, seed=9)
    rnd = InProcessRound(updates, cfg, hooks=Hooks(client_to_server=corrupt))
    result = rnd.run()
    assert len(result.survivors) == n  # c003's input is still in the sum
    assert [r.client_id for r in rnd.rejections] == ["c003"]
    assert "commitment" in str(rnd.rejections[0])
