"""Bad clients: the server rejects their messages with an error naming them, and the round
survives without them (PROTOCOL.md, "bad clients"). The gRPC cases (no TLS, wrong certificate)
belong to the transport issue; these are the protocol-level rejections they map onto.
"""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest
from secagg_testkit import make_updates, tamper_reply, true_sum

from fedvpa_secure.errors import AbortRound, ProtocolError
from fedvpa_secure.secagg import (
    ClientRejected,
    Hooks,
    InProcessRound,
    InvalidUpdateError,
    SecAggConfig,
    ServerSession,
    Stage,
    keys,
)
from fedvpa_secure.secagg.messages import (
    PROTOCOL_VERSION,
    AdvertiseKeys,
    MaskedInput,
    Message,
    ShareKeys,
)

N = 7  # hardened, t = 5
BAD = "c003"
ORDER_8_POINT = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


def _round(hooks: Hooks, **kw) -> tuple[InProcessRound, list]:
    updates = make_updates(N, seed=21)
    return InProcessRound(updates, SecAggConfig(n_clients=N), hooks=hooks, **kw), updates


def _survives_without_bad(
    rnd: InProcessRound, updates: list, match: str, stage: Stage, in_sum: bool = False
) -> None:
    result = rnd.run()
    offenders = [r for r in rnd.rejections if r.client_id == BAD]
    assert offenders, "the bad client was not rejected"
    text = str(offenders[0])
    assert BAD in text and stage.name in text and match in text, text
    assert all(r.client_id == BAD for r in rnd.rejections)
    assert (BAD in result.survivors) is in_sum
    members = [int(u[1:]) for u in result.survivors]
    for name, value in true_sum(updates, members).items():
        assert np.abs(result.tensors[name] - value).max() < N / 2.0 ** rnd.config.frac_bits[""]


def _resign(rnd: InProcessRound, m: AdvertiseKeys, cipher: bytes, mask: bytes) -> AdvertiseKeys:
    """The bad client signs its bad keys properly, so only the key checks can catch them."""
    payload = keys.advertisement_payload(
        rnd.round_id,
        m.sender,
        rnd.config.digest(),
        rnd.layout.digest,
        cipher,
        mask,
        m.nonce_commitment,
    )
    signature = keys.sign(rnd.identities[m.sender], payload)
    return replace(m, cipher_public=cipher, mask_public=mask, signature=signature)


# -- masked input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: replace(m, payload=m.payload[:-4], length=m.length - 1), "length"),
        (lambda m: replace(m, payload=m.payload + bytes(4)), "length"),
        (lambda m: replace(m, length=m.length + 1), "length"),
        (lambda m: replace(m, dtype="<f4"), "dtype"),
        (lambda m: replace(m, dtype=">u4"), "dtype"),
        (lambda m: replace(m, dtype="float32"), "dtype"),
        (lambda m: replace(m, payload=m.payload * 1000, length=m.length * 1000), "oversized"),
        (lambda m: replace(m, payload=m.payload.decode("latin-1")), "not bytes"),
        (lambda m: replace(m, rejected=("c999",)), "never sent"),
    ],
    ids=[
        "short",
        "long",
        "length-field",
        "f4",
        "big-endian",
        "float32",
        "oversized",
        "str",
        "bogus-complaint",
    ],
)
def test_malformed_masked_input_is_rejected(edit, match: str) -> None:
    rnd, updates = _round(tamper_reply(Stage.MASKED_INPUT, BAD, lambda r, m: edit(m)))
    _survives_without_bad(rnd, updates, match, Stage.MASKED_INPUT)


# -- keys ------------------------------------------------------------------------------------


def _other_clients_key(rnd: InProcessRound, m: AdvertiseKeys) -> AdvertiseKeys:
    theirs = next(x for st, u, x in rnd.transcript if st is Stage.ADVERTISE_KEYS and u == "c001")
    return _resign(rnd, m, theirs.cipher_public, m.mask_public)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda r, m: _resign(r, m, bytes(32), m.mask_public), "all-zero or small-order"),
        (lambda r, m: _resign(r, m, m.cipher_public, bytes(32)), "all-zero or small-order"),
        (lambda r, m: _resign(r, m, ORDER_8_POINT, m.mask_public), "all-zero or small-order"),
        (lambda r, m: _resign(r, m, m.cipher_public, m.cipher_public), "both purposes"),
        (_other_clients_key, "reuses a public key"),
        (lambda r, m: replace(m, signature=bytes(64)), "signature does not verify"),
        (lambda r, m: replace(m, cipher_public=m.cipher_public[:31]), "expected 32"),
        (lambda r, m: replace(m, signature=m.signature * 1000), "oversized"),
    ],
    ids=[
        "zero-cipher",
        "zero-mask",
        "small-order",
        "same-key-twice",
        "copied",
        "bad-sig",
        "short",
        "oversized",
    ],
)
def test_bad_keys_are_rejected(edit, match: str) -> None:
    rnd, updates = _round(tamper_reply(Stage.ADVERTISE_KEYS, BAD, edit))
    _survives_without_bad(rnd, updates, match, Stage.ADVERTISE_KEYS)


def test_keys_reused_from_an_earlier_round_are_rejected() -> None:
    first, _ = _round(Hooks())
    first.run()
    spent = {
        k
        for st, _, m in first.transcript
        if st is Stage.ADVERTISE_KEYS
        for k in (m.cipher_public, m.mask_public)
    }
    old = next(m for st, u, m in first.transcript if st is Stage.ADVERTISE_KEYS and u == BAD)
    server = ServerSession(
        first.config, first.layout, "round-2", first.client_ids, first.registry, spent_keys=spent
    )
    server.start()
    replayed = _resign(first, replace(old, round_id="round-2"), old.cipher_public, old.mask_public)
    # (re-signed for round-2 by the client itself: only the spent-key list can catch it)
    payload = keys.advertisement_payload(
        "round-2",
        BAD,
        first.config.digest(),
        first.layout.digest,
        old.cipher_public,
        old.mask_public,
        old.nonce_commitment,
    )
    replayed = replace(replayed, signature=keys.sign(first.identities[BAD], payload))
    with pytest.raises(ClientRejected, match="earlier round"):
        server.receive(replayed, authenticated_sender=BAD)


# -- graph seed ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda r, m: replace(m, nonce=bytes(32)), "does not match the commitment"),
        (lambda r, m: replace(m, signature=bytes(64)), "directory signature does not verify"),
        (lambda r, m: replace(m, nonce=m.nonce[:31]), "expected 32"),
        (lambda r, m: None, "no valid graph nonce"),
    ],
    ids=["forged-nonce", "bad-signature", "short-nonce", "silent"],
)
def test_a_bad_graph_reveal_aborts_the_round_early(edit, match: str) -> None:
    """One member short, the graph cannot be fixed (honest clients would refuse it), so the server
    aborts at the end of the graph-seed stage, before anyone deals a share."""
    rnd, _ = _round(tamper_reply(Stage.GRAPH_SEED, BAD, edit))
    with pytest.raises(AbortRound, match="graph nonce"):
        rnd.run()
    reasons = " ".join(r.reason for r in rnd.rejections)
    assert match in reasons or match in str(rnd.server.abort_reason)
    assert all(r.fatal and r.client_id == BAD for r in rnd.rejections)
    assert not [m for st, _, m in rnd.transcript if st > Stage.GRAPH_SEED]


def test_a_reveal_from_outside_u1_is_rejected_without_harm() -> None:
    """A client that skipped stage 0 cannot join U1 late by revealing a nonce."""

    def late(rnd: InProcessRound, stage: Stage, u: str, reply: Message) -> Message | None:
        if stage is Stage.GRAPH_SEED and u == "c000":
            with pytest.raises(ClientRejected, match="not expected") as caught:
                rnd.server.receive(
                    replace(reply, sender=BAD, nonce=bytes(32)), authenticated_sender=BAD
                )
            assert not caught.value.fatal
        return reply

    rnd, _ = _round(Hooks(client_to_server=late), drop_at={Stage.ADVERTISE_KEYS: {BAD}})
    result = rnd.run()
    assert BAD not in result.survivors and len(result.survivors) == N - 1


# -- shares ----------------------------------------------------------------------------------


def _garble_envelopes(r: InProcessRound, m: ShareKeys) -> ShareKeys:
    """Right length, right header, random ciphertext: only the receivers can tell."""
    garbled = {}
    for v, env in m.envelopes.items():
        head_len = len(env) - (12 + 16 + 2 * (4 + 86) + 8 + len(m.sender) + len(v))
        garbled[v] = env[:head_len] + os.urandom(len(env) - head_len)
    return replace(m, envelopes=garbled)


@pytest.mark.parametrize(
    ("edit", "match", "stage"),
    [
        (lambda r, m: replace(m, envelopes={}), "missing", Stage.SHARE_KEYS),
        (
            lambda r, m: replace(m, envelopes={v: e[:-1] for v, e in m.envelopes.items()}),
            "wrong length",
            Stage.SHARE_KEYS,
        ),
        (
            lambda r, m: replace(
                m, envelopes={v: os.urandom(len(e)) for v, e in m.envelopes.items()}
            ),
            "not a share envelope",
            Stage.SHARE_KEYS,
        ),
        (
            lambda r, m: replace(
                m,
                envelopes={
                    v: e.replace(r.server.session_id, bytes(32)) for v, e in m.envelopes.items()
                },
            ),
            "another session",
            Stage.SHARE_KEYS,
        ),
        (lambda r, m: replace(m, share_commitments={}), "commitments", Stage.SHARE_KEYS),
        (lambda r, m: replace(m, secret_commitment=b"x"), "expected 32", Stage.SHARE_KEYS),
        (_garble_envelopes, "failed authentication", Stage.SHARE_KEYS),
    ],
    ids=["none", "truncated", "random", "other-session", "no-commit", "bad-commit", "garbage"],
)
def test_garbage_shares_are_rejected(edit, match: str, stage: Stage) -> None:
    rnd, updates = _round(tamper_reply(Stage.SHARE_KEYS, BAD, edit))
    _survives_without_bad(rnd, updates, match, stage)


# -- header and transport-level identity -------------------------------------------------------


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: replace(m, sender="c001"), "not the authenticated peer"),
        (lambda m: replace(m, round_id="round-0"), "round id"),
        (lambda m: replace(m, version=PROTOCOL_VERSION - 1), "protocol version"),
        (lambda m: replace(m, stage=int(Stage.SHARE_KEYS)), "stage"),
        (lambda m: replace(m, version=True), "bool"),
    ],
    ids=["spoofed-sender", "round-id", "version", "stage", "bool-version"],
)
def test_bad_headers_are_rejected(edit, match: str) -> None:
    rnd, updates = _round(tamper_reply(Stage.MASKED_INPUT, BAD, lambda r, m: edit(m)))
    _survives_without_bad(rnd, updates, match, Stage.MASKED_INPUT)


def test_wrong_message_type_and_duplicates() -> None:
    def wrong(rnd: InProcessRound, stage: Stage, u: str, reply: Message) -> Message | None:
        if u == BAD and stage is Stage.CONSISTENCY:
            old = next(m for st, v, m in rnd.transcript if st is Stage.ADVERTISE_KEYS and v == BAD)
            return old  # a replayed stage-0 message at stage 3
        return reply

    rnd, updates = _round(Hooks(client_to_server=wrong))
    _survives_without_bad(
        rnd, updates, "expected a ConsistencySignature", Stage.CONSISTENCY, in_sum=True
    )

    rnd, _ = _round(Hooks())
    rnd.run()
    reply = next(m for st, u, m in rnd.transcript if st is Stage.UNMASK and u == BAD)
    with pytest.raises(ProtocolError, match="not collecting"):
        rnd.server.receive(reply, authenticated_sender=BAD)


def test_duplicate_message_is_rejected_but_first_counts() -> None:
    updates = make_updates(N, seed=3)
    rnd = InProcessRound(updates, SecAggConfig(n_clients=N))
    outbox = rnd.server.start()
    for u, msg in outbox.items():
        reply = rnd.clients[u].handle(msg)
        rnd.server.receive(reply, authenticated_sender=u)
        if u == BAD:
            with pytest.raises(ClientRejected, match="already answered"):
                rnd.server.receive(reply, authenticated_sender=u)
    nxt = rnd.server.close_stage()
    assert BAD in nxt


# -- faulty inputs -----------------------------------------------------------------------------


def test_out_of_range_decoded_sum_aborts_the_round() -> None:
    """A client that adds a huge value to its (well-formed) masked input pushes the decoded sum
    beyond what the survivors could produce: the round aborts instead of publishing it."""

    def inflate(r: InProcessRound, m: MaskedInput) -> MaskedInput:
        y = np.frombuffer(m.payload, dtype="<u4").copy()
        y[:-2] += np.uint32(1 << 31)  # f is maximal: only a push past n * c * 2^f can show
        return replace(m, payload=y.tobytes())

    rnd, _ = _round(tamper_reply(Stage.MASKED_INPUT, BAD, inflate))
    with pytest.raises(AbortRound, match="beyond what"):
        rnd.run()
    assert rnd.server.result is None


def test_forged_count_aborts_the_round() -> None:
    def count_twice(r: InProcessRound, m: MaskedInput) -> MaskedInput:
        y = np.frombuffer(m.payload, dtype="<u4").copy()
        y[-1:] += np.uint32(1)
        return replace(m, payload=y.tobytes())

    rnd, _ = _round(tamper_reply(Stage.MASKED_INPUT, BAD, count_twice))
    with pytest.raises(AbortRound, match="__count__"):
        rnd.run()


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.array([np.nan, 0.0, 0.0, 0.0, 0.0], np.float32), "NaN or infinite"),
        (np.array([np.inf, 0.0, 0.0, 0.0, 0.0], np.float32), "NaN or infinite"),
        (np.zeros(5, np.float64), "float64"),
        (np.zeros(6, np.float32), "layout says"),
    ],
)
def test_invalid_local_update_is_refused_by_the_client(value: np.ndarray, match: str) -> None:
    updates = make_updates(N, seed=5)
    rnd = InProcessRound(updates, SecAggConfig(n_clients=N))
    bad = dict(updates[0])
    bad["head"] = value
    with pytest.raises(InvalidUpdateError, match=match):
        rnd.clients["c000"].provide_input(bad)
    with pytest.raises(InvalidUpdateError, match="missing"):
        rnd.clients["c000"].provide_input({"head": updates[0]["head"]})
    with pytest.raises(InvalidUpdateError, match="weight"):
        rnd.clients["c000"].provide_input(updates[0], weight=-1.0)
