"""Primitives against independent oracles: PRG, HKDF, keys, envelopes."""

from __future__ import annotations

import hashlib
import hmac
import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedvpa_secure.errors import ConfigError, IntegrityError, ProtocolError
from fedvpa_secure.secagg import envelope, kdf, keys, prg
from fedvpa_secure.secagg.rng import DeterministicRng, random_below, resolve_rng

ORDER_8_POINT = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


# -- PRG -------------------------------------------------------------------------------------


def test_aes_keystream_equals_ecb_of_counter_blocks() -> None:
    key = os.urandom(32)
    out = np.empty(4 * 50, dtype=np.uint32)
    prg.keystream_into(key, out, algorithm="aes-256-ctr")
    ecb = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    blocks = b"".join(ecb.update(i.to_bytes(16, "big")) for i in range(50))
    assert out.tobytes() == np.frombuffer(blocks, dtype="<u4").tobytes()


def test_chacha_keystream_equals_plain_chacha20() -> None:
    key = os.urandom(32)
    out = np.empty(1000, dtype=np.uint32)
    prg.keystream_into(key, out, algorithm="chacha20")
    ref = Cipher(algorithms.ChaCha20(key, bytes(16)), None).encryptor().update(bytes(4000))
    assert out.tobytes() == ref


@pytest.mark.parametrize("algorithm", prg.ALGORITHMS)
@pytest.mark.parametrize("offset", [1, 3, 4, 15, 16, 17, 1000, prg.CHUNK_WORDS + 5])
def test_keystream_at_an_offset_is_the_same_stream(algorithm: str, offset: int) -> None:
    key = os.urandom(32)
    full = np.empty(offset + 300, dtype=np.uint32)
    prg.keystream_into(key, full, algorithm=algorithm)
    part = np.empty(300, dtype=np.uint32)
    prg.keystream_into(key, part, algorithm=algorithm, offset=offset)
    np.testing.assert_array_equal(part, full[offset:])


@pytest.mark.parametrize("algorithm", prg.ALGORITHMS)
def test_accumulate_is_independent_of_threads_and_signs_cancel(algorithm: str) -> None:
    length = 3 * (1 << 18) + 7  # several thread ranges and a ragged tail
    base = np.random.default_rng(0).integers(0, 2**32, size=length, dtype=np.uint32)
    streams = [(os.urandom(32), 1), (os.urandom(32), -1), (os.urandom(32), 1)]
    results = []
    for workers in (1, 2, 3):
        acc = base.copy()
        prg.accumulate(acc, streams, algorithm=algorithm, workers=workers)
        results.append(acc)
    expected = base.copy()
    for key, sign in streams:
        ks = np.empty(length, dtype=np.uint32)
        prg.keystream_into(key, ks, algorithm=algorithm)
        expected = expected + ks if sign > 0 else expected - ks
    for acc in results:
        np.testing.assert_array_equal(acc, expected)
    prg.accumulate(results[0], [(k, -s) for k, s in streams], algorithm=algorithm, workers=2)
    np.testing.assert_array_equal(results[0], base)


def test_prg_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        prg.keystream_into(b"short", np.empty(4, np.uint32))
    with pytest.raises(ValueError, match="uint32"):
        prg.keystream_into(os.urandom(32), np.empty(4, np.int32))
    with pytest.raises(ValueError, match="algorithm"):
        prg.keystream_into(os.urandom(32), np.empty(4, np.uint32), algorithm="rc4")
    with pytest.raises(ValueError, match="sign"):
        prg.accumulate(np.zeros(4, np.uint32), [(os.urandom(32), 2)])


# -- HKDF ------------------------------------------------------------------------------------


def _rfc5869(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block, i = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
        i += 1
    return okm[:length]


def test_rfc5869_test_case_1() -> None:
    ikm = bytes.fromhex("0b" * 22)
    salt = bytes.fromhex("000102030405060708090a0b0c")
    info = bytes.fromhex("f0f1f2f3f4f5f6f7f8f9")
    okm = _rfc5869(ikm, salt, info, 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )


def test_hkdf_matches_an_independent_rfc5869_and_encodes_the_parties() -> None:
    ikm, salt = os.urandom(32), os.urandom(32)
    info = kdf.LABEL_SHARE_KEY + (2).to_bytes(4, "big")
    info += (4).to_bytes(4, "big") + b"c001" + (4).to_bytes(4, "big") + b"c002"
    assert kdf.share_key(ikm, salt, "c001", "c002") == _rfc5869(ikm, salt, info)


def test_derivations_are_separated_by_label_session_and_parties() -> None:
    ikm, s1, s2 = os.urandom(32), os.urandom(32), os.urandom(32)
    outs = {
        kdf.share_key(ikm, s1, "a", "b"),
        kdf.share_key(ikm, s1, "b", "a"),
        kdf.share_key(ikm, s2, "a", "b"),
        kdf.pair_mask_key(ikm, s1, "a", "b"),
        kdf.self_mask_key(ikm, s1, "a"),
        kdf.self_mask_key(ikm, s1, "b"),
        kdf.share_key(ikm, s1, "ab", ""),  # length prefixes: ("ab", "") != ("a", "b")
    }
    assert len(outs) == 7


def test_session_id_binds_every_input() -> None:
    base = {
        "version": 1,
        "round_id": "r1",
        "config_digest": b"c" * 32,
        "layout_digest": b"l" * 32,
        "keys": {"a": (b"1" * 32, b"2" * 32), "b": (b"3" * 32, b"4" * 32)},
    }
    ref = kdf.session_id(**base)
    variants = [
        {"version": 2},
        {"round_id": "r2"},
        {"config_digest": b"C" * 32},
        {"layout_digest": b"L" * 32},
        {"keys": {"a": (b"1" * 32, b"2" * 32)}},
        {"keys": {"a": (b"2" * 32, b"1" * 32), "b": (b"3" * 32, b"4" * 32)}},
    ]
    for change in variants:
        assert kdf.session_id(**{**base, **change}) != ref


# -- keys ------------------------------------------------------------------------------------


def test_public_key_checks() -> None:
    good = keys.public_bytes(X25519PrivateKey.generate())
    assert keys.is_valid_public_key(good)
    for bad in (bytes(32), (1).to_bytes(32, "little"), ORDER_8_POINT, good[:31], "x" * 32, None):
        assert not keys.is_valid_public_key(bad)
    with pytest.raises(IntegrityError):
        keys.agree(X25519PrivateKey.generate(), bytes(32))
    with pytest.raises(IntegrityError):
        keys.agree(X25519PrivateKey.generate(), ORDER_8_POINT)


def test_round_keys_are_fresh_distinct_and_hide_secrets() -> None:
    a, b = keys.generate_round_keys(os.urandom), keys.generate_round_keys(os.urandom)
    assert len({a.cipher_public, a.mask_public, b.cipher_public, b.mask_public}) == 4
    assert "mask_public=..." in repr(a)
    secret = keys.private_bytes(a.mask_private)
    assert keys.mask_public_from_private(secret) == a.mask_public


def test_signatures_bind_the_round() -> None:
    identity = Ed25519PrivateKey.generate()
    public = keys.identity_public_bytes(identity)
    args = ("c001", b"c" * 32, b"l" * 32, b"k" * 32, b"m" * 32, b"n" * 32)
    sig = keys.sign(identity, keys.advertisement_payload("round-1", *args))
    assert keys.verify(public, sig, keys.advertisement_payload("round-1", *args))
    assert not keys.verify(public, sig, keys.advertisement_payload("round-2", *args))
    swapped = keys.advertisement_payload("round-1", *args[:-1], b"N" * 32)  # another commitment
    assert not keys.verify(public, sig, swapped)
    assert not keys.verify(public, b"x" * 64, keys.advertisement_payload("round-1", *args))
    assert not keys.verify(b"short", sig, b"")


def test_directory_payload_binds_session_members_and_commitments() -> None:
    commitments = {"c002": b"b" * 32, "c001": b"a" * 32}
    payload = keys.directory_payload(b"s" * 32, commitments)
    assert payload == keys.directory_payload(b"s" * 32, dict(reversed(commitments.items())))
    others = [
        keys.directory_payload(b"S" * 32, commitments),
        keys.directory_payload(b"s" * 32, {**commitments, "c002": b"B" * 32}),
        keys.directory_payload(b"s" * 32, {"c001": b"a" * 32}),
        keys.directory_payload(b"s" * 32, {"c001": b"b" * 32, "c002": b"a" * 32}),
    ]
    assert payload not in others and len(set(others)) == len(others)
    assert not payload.startswith(keys.LABEL_CONSISTENCY)


# -- envelopes -------------------------------------------------------------------------------


def _header(**kw) -> envelope.EnvelopeHeader:
    fields = {
        "version": 1,
        "stage": 1,
        "session_id": b"s" * 32,
        "sender": "c001",
        "receiver": "c002",
    }
    return envelope.EnvelopeHeader(**{**fields, **kw})


def test_envelope_round_trip_and_exact_length() -> None:
    key = os.urandom(32)
    plain = envelope.encode_bundle("c001", "c002", b"b" * 86, b"k" * 86)
    sealed = envelope.seal(key, _header(), plain, os.urandom)
    assert len(sealed) == envelope.envelope_length("c001", "c002", len(plain))
    head, opened = envelope.open_envelope(key, sealed)
    assert head == _header() and opened == plain
    assert envelope.decode_bundle(opened) == ("c001", "c002", b"b" * 86, b"k" * 86)


def test_envelope_rejects_wrong_key_and_tampered_header() -> None:
    key = os.urandom(32)
    sealed = envelope.seal(key, _header(), b"secret", os.urandom)
    with pytest.raises(IntegrityError):
        envelope.open_envelope(os.urandom(32), sealed)
    other_session = sealed.replace(b"s" * 32, b"t" * 32)
    with pytest.raises(IntegrityError):
        envelope.open_envelope(key, other_session)
    swapped = _header(sender="c002", receiver="c001").encode() + sealed[len(_header().encode()) :]
    with pytest.raises(IntegrityError):
        envelope.open_envelope(key, swapped)
    with pytest.raises(ProtocolError):
        envelope.open_envelope(key, sealed[:20])
    with pytest.raises(ProtocolError):
        envelope.decode_bundle(b"\x00\x00\x00\x09abc")


# -- randomness seam -------------------------------------------------------------------------


def test_injected_rng_is_refused_unless_marked_insecure() -> None:
    with pytest.raises(ConfigError, match="insecure_rng"):
        resolve_rng(lambda n: bytes(n))
    rng = resolve_rng(DeterministicRng(b"seed"), insecure_rng=True)
    assert rng(16) == DeterministicRng(b"seed")(16)
    assert resolve_rng(None) is not None
    bad = resolve_rng(lambda n: b"x", insecure_rng=True)
    with pytest.raises(ConfigError, match="wrong length"):
        bad(4)


def test_random_below_is_in_range_and_covers_it() -> None:
    seen = {random_below(os.urandom, 5) for _ in range(300)}
    assert seen == {0, 1, 2, 3, 4}
