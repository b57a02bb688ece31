"""The client and server state machines: legal transitions only, fail closed, no secrets left."""

from __future__ import annotations

import logging
from dataclasses import fields

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from secagg_testkit import make_updates

from fedvpa_secure.errors import AbortRound, ConfigError, ProtocolError
from fedvpa_secure.secagg import (
    CLIENT_TRANSITIONS,
    SERVER_TRANSITIONS,
    ClientSession,
    ClientStage,
    DeterministicRng,
    InProcessRound,
    SecAggConfig,
    ServerSession,
    ServerStage,
    Stage,
    keys,
)
from fedvpa_secure.secagg.messages import PROTOCOL_VERSION, KeyDirectory, MaskedInputRequest


def _reachable(table, start):
    seen, todo = {start}, [start]
    while todo:
        for nxt in table[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_transition_tables_are_complete_and_aborted_is_terminal() -> None:
    assert set(CLIENT_TRANSITIONS) == set(ClientStage)
    assert set(SERVER_TRANSITIONS) == set(ServerStage)
    assert _reachable(CLIENT_TRANSITIONS, ClientStage.READY) == set(ClientStage)
    assert _reachable(SERVER_TRANSITIONS, ServerStage.NEW) == set(ServerStage)
    assert not CLIENT_TRANSITIONS[ClientStage.ABORTED]
    assert (
        not SERVER_TRANSITIONS[ServerStage.ABORTED] and not SERVER_TRANSITIONS[ServerStage.FINISHED]
    )
    for stage, targets in CLIENT_TRANSITIONS.items():
        if stage is not ClientStage.ABORTED:
            assert ClientStage.ABORTED in targets


def _round(n: int = 5, **kw) -> InProcessRound:
    return InProcessRound(make_updates(n, seed=8), SecAggConfig(n_clients=n), **kw)


def test_out_of_order_message_aborts_the_client() -> None:
    rnd = _round()
    client = rnd.clients["c000"]
    bogus = MaskedInputRequest(
        version=PROTOCOL_VERSION,
        round_id="round-1",
        stage=int(Stage.MASKED_INPUT),
        sender="@server",
        envelopes={},
    )
    with pytest.raises(AbortRound, match="expected a AdvertiseRequest"):
        client.handle(bogus)
    assert client.stage is ClientStage.ABORTED
    with pytest.raises(AbortRound, match="refusing"):
        client.handle(bogus)


def test_server_refuses_calls_outside_its_stages() -> None:
    rnd = _round()
    with pytest.raises(ProtocolError, match="not collecting"):
        rnd.server.receive(object())
    with pytest.raises(ProtocolError, match="nothing to close"):
        rnd.server.close_stage()
    rnd.run()
    with pytest.raises(ProtocolError, match="illegal server transition"):
        rnd.server.start()
    with pytest.raises(ProtocolError, match="nothing to close"):
        rnd.server.close_stage()


def test_stages_progress_in_order_and_secrets_are_dropped() -> None:
    rnd = _round()
    rnd.run()
    for client in rnd.clients.values():
        assert client.stage is ClientStage.DONE
        assert client._seed is None and client._keys is None and not client._held
        assert client._nonce is None
        assert client._own_shares is None and client._input is None
    assert rnd.server.stage is ServerStage.FINISHED
    assert rnd.server._acc is None and not rnd.server._revealed


def test_an_aborted_client_holds_no_secrets() -> None:
    rnd = _round(drop_at={})
    outbox = rnd.server.start()
    client = rnd.clients["c000"]
    client.handle(outbox["c000"])
    assert client._keys is not None and client._nonce is not None
    bad = KeyDirectory(
        version=PROTOCOL_VERSION,
        round_id="round-1",
        stage=int(Stage.GRAPH_SEED),
        sender="@server",
        keys={},
    )
    with pytest.raises(AbortRound, match="leaves me out"):
        client.handle(bad)
    assert client._keys is None and client._nonce is None and client.abort_reason


def test_client_refuses_to_contribute_twice_to_a_model_version() -> None:
    rnd = _round()
    with pytest.raises(ProtocolError, match="contribute twice"):
        ClientSession(
            "c000",
            rnd.identities["c000"],
            rnd.registry,
            rnd.config,
            rnd.layout,
            "round-2",
            model_version="v7",
            spent_versions={"v7"},
        )
    rnd.run()
    assert {c.contributed_version for c in rnd.clients.values()} == {"v0"}


def test_client_construction_checks_identity_and_ids() -> None:
    rnd = _round()
    with pytest.raises(ProtocolError, match="not registered"):
        ClientSession(
            "c000", Ed25519PrivateKey.generate(), rnd.registry, rnd.config, rnd.layout, "r"
        )
    with pytest.raises(ProtocolError, match="invalid client id"):
        ClientSession("bad id", rnd.identities["c000"], rnd.registry, rnd.config, rnd.layout, "r")
    with pytest.raises(ConfigError, match="participants"):
        ServerSession(rnd.config, rnd.layout, "r", ["c000"], rnd.registry)


def test_input_must_be_provided_once_before_masking() -> None:
    rnd = _round()
    outbox = rnd.server.start()
    for stage in (Stage.ADVERTISE_KEYS, Stage.GRAPH_SEED, Stage.SHARE_KEYS):
        for u, msg in outbox.items():
            rnd.server.receive(rnd.clients[u].handle(msg), authenticated_sender=u)
        outbox = rnd.server.close_stage()
        assert stage is not None
    updates = make_updates(5, seed=8)
    client = rnd.clients["c001"]
    client.provide_input(updates[1])
    with pytest.raises(ProtocolError, match="already provided"):
        client.provide_input(updates[1])
    with pytest.raises(AbortRound, match="no input"):
        rnd.clients["c000"].handle(outbox["c000"])


def test_injected_randomness_needs_the_insecure_flag_and_is_reproducible() -> None:
    rnd = _round()
    args = ("c000", rnd.identities["c000"], rnd.registry, rnd.config, rnd.layout, "round-1")
    with pytest.raises(ConfigError, match="insecure_rng"):
        ClientSession(*args, rng=DeterministicRng(b"x"))
    request = rnd.server.start()["c000"]
    replies = [
        ClientSession(*args, rng=DeterministicRng(b"x"), insecure_rng=True).handle(request)
        for _ in range(2)
    ]
    assert replies[0] == replies[1]
    fresh = ClientSession(*args).handle(request)
    assert fresh.cipher_public != replies[0].cipher_public


def test_logs_carry_no_key_material(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fedvpa_secure.secagg")
    rnd = _round(drop_at={Stage.MASKED_INPUT: {2}})
    rnd.run()
    secrets_seen = set()
    for _, _, m in rnd.transcript:
        for f in fields(m):
            value = getattr(m, f.name)
            if isinstance(value, bytes) and len(value) >= 16:
                secrets_seen.add(value.hex()[:32])
    assert caplog.records
    for record in caplog.records:
        assert record.name == "fedvpa_secure.secagg"
        for arg in record.args or ():
            assert isinstance(arg, (str, int, float)), type(arg)
        text = record.getMessage()
        assert not any(h in text for h in secrets_seen)
        assert "b'" not in text


def test_server_logs_lazily() -> None:
    """Log calls pass %-arguments, never pre-formatted secrets (spot check on the source)."""
    import inspect

    from fedvpa_secure.secagg import client, server

    for module in (client, server):
        source = inspect.getsource(module)
        assert "LOGGER.info(f" not in source and "LOGGER.warning(f" not in source


def test_workers_do_not_change_the_result() -> None:
    updates = make_updates(4, seed=2, shapes={"w": (300_000,)})
    cfg = SecAggConfig(n_clients=4)
    seed = b"reproducible"
    ids = {f"c{i:03d}": Ed25519PrivateKey.from_private_bytes(bytes([i + 1]) * 32) for i in range(4)}
    results = [
        InProcessRound(updates, cfg, workers=w, insecure_seed=seed, identities=ids).run()
        for w in (1, 2)
    ]
    np.testing.assert_array_equal(results[0].ring_sum, results[1].ring_sum)
    assert keys.is_valid_public_key(keys.public_bytes(keys.X25519PrivateKey.generate()))
