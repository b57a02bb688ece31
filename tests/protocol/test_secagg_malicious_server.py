"""A malicious server: every manipulation listed in PROTOCOL.md makes the honest client abort
before it reveals anything it should not (Bonawitz et al. 2017, Sec. 6, active adversary).

Each test rewrites what the (otherwise honest) server sends through the driver's server hook and
checks that the targeted clients raised AbortRound and sent no reply at that stage.
"""

from __future__ import annotations

import contextlib
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from secagg_testkit import HandPlayedServer, make_updates, tamper_outbox

from fedvpa_secure.errors import AbortRound, ProtocolError
from fedvpa_secure.secagg import (
    ClientStage,
    Hooks,
    InProcessRound,
    SecAggConfig,
    Stage,
    graph,
    keys,
)
from fedvpa_secure.secagg.messages import (
    ConsistencySignature,
    KeyDirectory,
    MaskedInputRequest,
    RevealDirectory,
    ShareKeys,
    UnmaskRequest,
)

N = 7  # hardened: t = 5


def _round(hooks: Hooks, *, n: int = N, hardened: bool = True, **kw) -> InProcessRound:
    cfg = SecAggConfig(n_clients=n, hardened=hardened)
    return InProcessRound(make_updates(n, seed=1), cfg, hooks=hooks, **kw)


def _replies(rnd: InProcessRound, stage: Stage, client: str) -> list:
    return [m for st, u, m in rnd.transcript if st is stage and u == client]


def _assert_aborted(rnd: InProcessRound, client: str, match: str, stage: Stage) -> None:
    assert client in rnd.client_errors, f"{client} did not abort"
    assert match in str(rnd.client_errors[client])
    assert rnd.clients[client].stage is ClientStage.ABORTED
    assert not _replies(rnd, stage, client), f"{client} answered at {stage.name}"


def _run_to_end(rnd: InProcessRound) -> None:
    with contextlib.suppress(AbortRound):
        rnd.run()


# -- unmask-stage list manipulation ------------------------------------------------------------


def _edit_unmask(edit):
    return tamper_outbox(Stage.UNMASK, {"c001"}, lambda rnd, u, m: edit(m))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: replace(m, dead=(*m.dead, "c002")), "both dead and alive"),
        (lambda m: replace(m, dead=(*m.dead, "c001")), "names me"),
        (lambda m: replace(m, alive=(*m.alive, m.alive[0])), "twice"),
        (lambda m: replace(m, dead=(*m.dead, "c999")), "outside my U2 view"),
        (
            lambda m: replace(
                m,
                survivors=tuple(u for u in m.survivors if u != "c002"),
                alive=tuple(u for u in m.alive if u != "c002"),
                dead=(*m.dead, "c002"),
            ),
            "differs from the one I signed",
        ),
        (lambda m: replace(m, alive=tuple(u for u in m.alive if u != "c002")), "disagree"),
        (lambda m: replace(m, signatures=dict(list(m.signatures.items())[:4])), "signatures"),
    ],
    ids=[
        "dead-and-alive",
        "self-dead",
        "twice",
        "outside-U2",
        "not-signed-U3",
        "incomplete",
        "few-sigs",
    ],
)
def test_unmask_list_manipulation_aborts_the_client(edit, match: str) -> None:
    rnd = _round(_edit_unmask(edit))
    _run_to_end(rnd)
    _assert_aborted(rnd, "c001", match, Stage.UNMASK)


def test_dead_list_naming_a_client_outside_u2_aborts() -> None:
    """c006 never shared its keys (not in U2); the server claims it dropped to get key shares."""
    rnd = _round(
        _edit_unmask(lambda m: replace(m, dead=(*m.dead, "c006"))), drop_at={Stage.SHARE_KEYS: {6}}
    )
    _run_to_end(rnd)
    _assert_aborted(rnd, "c001", "outside my U2 view", Stage.UNMASK)


def test_fewer_than_t_survivors_aborts_in_both_modes() -> None:
    # hardened: the consistency request itself is refused
    rnd = _round(
        tamper_outbox(
            Stage.CONSISTENCY, {"c001"}, lambda r, u, m: replace(m, survivors=m.survivors[:4])
        )
    )
    _run_to_end(rnd)
    _assert_aborted(rnd, "c001", "threshold", Stage.CONSISTENCY)

    # not hardened: the unmask request with a short, self-consistent survivor list
    def shorten(rnd, u, m):
        keep = ("c000", "c001", "c002")
        return replace(
            m,
            survivors=keep,
            alive=keep,
            dead=tuple(v for v in m.survivors if v not in keep),
        )

    rnd = _round(tamper_outbox(Stage.UNMASK, {"c001"}, shorten), hardened=False)
    _run_to_end(rnd)
    _assert_aborted(rnd, "c001", "threshold", Stage.UNMASK)


# -- different survivor lists to different clients -----------------------------------------------

GROUP_B = {"c003", "c004"}


def _split_views(forward_a_signatures: bool):
    """Show group B a U3 without c000; later ask B for c000's *key* shares, which together with
    group A's *seed* shares would unmask c000 - the attack the consistency round prevents."""

    def hook(rnd: InProcessRound, stage: Stage, outbox):
        if stage is Stage.CONSISTENCY:
            out = dict(outbox)
            for u in GROUP_B:
                m = outbox[u][0]
                out[u] = [replace(m, survivors=tuple(v for v in m.survivors if v != "c000"))]
            return out
        if stage is Stage.UNMASK:
            sigs = {
                u: m.signature
                for st, u, m in rnd.transcript
                if st is Stage.CONSISTENCY and isinstance(m, ConsistencySignature)
            }
            sigs.pop("c000", None)  # c000 is not on B's list; hide its signature from B
            if not forward_a_signatures:
                sigs = {u: s for u, s in sigs.items() if u in GROUP_B}
            template = next(iter(outbox.values()))[0]
            assert isinstance(template, UnmaskRequest)
            b_view = tuple(v for v in template.survivors if v != "c000")
            out = dict(outbox)
            for u in GROUP_B:
                out[u] = [
                    replace(
                        template, survivors=b_view, alive=b_view, dead=("c000",), signatures=sigs
                    )
                ]
            return out
        return outbox

    return Hooks(server_to_clients=hook)


@pytest.mark.parametrize("forward_a_signatures", [True, False])
def test_different_survivor_lists_to_different_clients(forward_a_signatures: bool) -> None:
    rnd = _round(_split_views(forward_a_signatures))
    result = rnd.run()  # group A (5 = t clients) finishes the honest round
    assert "c000" in result.survivors
    match = "not on my survivor list" if forward_a_signatures else "consistency signatures"
    for u in GROUP_B:
        _assert_aborted(rnd, u, match, Stage.UNMASK)
    # nobody ever revealed a share of c000's mask key
    for st, _, m in rnd.transcript:
        if st is Stage.UNMASK:
            assert "c000" not in m.key_shares


# -- substituted or replayed keys ---------------------------------------------------------------


def test_substituted_keys_abort_every_client() -> None:
    attacker = keys.public_bytes(X25519PrivateKey.generate())

    def substitute(rnd, u, m: KeyDirectory):
        table = dict(m.keys)
        c, _, commitment, sig = table["c003"]
        table["c003"] = (c, attacker, commitment, sig)
        return replace(m, keys=table)

    rnd = _round(tamper_outbox(Stage.GRAPH_SEED, None, substitute))
    with pytest.raises(AbortRound):
        rnd.run()
    for u in rnd.client_ids:
        match = "substitutes my own keys" if u == "c003" else "not signed by it for this round"
        _assert_aborted(rnd, u, match, Stage.GRAPH_SEED)


def test_own_keys_substituted_or_left_out() -> None:
    def drop_me(rnd, u, m: KeyDirectory):
        return replace(m, keys={v: k for v, k in m.keys.items() if v != u})

    rnd = _round(tamper_outbox(Stage.GRAPH_SEED, {"c002"}, drop_me))
    _run_to_end(rnd)
    _assert_aborted(rnd, "c002", "leaves me out", Stage.GRAPH_SEED)


def test_replayed_keys_from_an_earlier_round_abort() -> None:
    first = _round(Hooks(), round_id="round-1")
    first.run()
    old = next(m for st, u, m in first.transcript if st is Stage.ADVERTISE_KEYS and u == "c003")

    def replay(rnd, u, m: KeyDirectory):
        table = dict(m.keys)
        table["c003"] = (old.cipher_public, old.mask_public, old.nonce_commitment, old.signature)
        return replace(m, keys=table)

    second = _round(
        tamper_outbox(Stage.GRAPH_SEED, None, replay),
        round_id="round-2",
        identities=first.identities,
    )
    with pytest.raises(AbortRound):
        second.run()
    _assert_aborted(second, "c001", "not signed by it for this round", Stage.GRAPH_SEED)


def test_duplicate_keys_in_the_directory_abort() -> None:
    def dup(rnd, u, m: KeyDirectory):
        table = dict(m.keys)
        _, s, commitment, sig = table["c004"]
        table["c004"] = (table["c003"][0], s, commitment, sig)
        return replace(m, keys=table)

    rnd = _round(tamper_outbox(Stage.GRAPH_SEED, {"c001"}, dup))
    _run_to_end(rnd)
    _assert_aborted(rnd, "c001", "repeats a public key", Stage.GRAPH_SEED)


# -- ciphertexts from another session -----------------------------------------------------------


def test_ciphertexts_from_another_session_abort() -> None:
    first = _round(Hooks(), round_id="round-1")
    first.run()
    old = next(m for st, u, m in first.transcript if st is Stage.SHARE_KEYS and u == "c002")
    assert isinstance(old, ShareKeys)

    def splice(rnd, u, m: MaskedInputRequest):
        envelopes = dict(m.envelopes)
        envelopes["c002"] = old.envelopes["c001"]
        return replace(m, envelopes=envelopes)

    second = _round(
        tamper_outbox(Stage.MASKED_INPUT, {"c001"}, splice),
        round_id="round-2",
        identities=first.identities,
    )
    _run_to_end(second)
    _assert_aborted(second, "c001", "another session", Stage.MASKED_INPUT)


def test_envelope_from_a_non_neighbour_or_misaddressed_aborts() -> None:
    def misaddress(rnd, u, m: MaskedInputRequest):
        envelopes = dict(m.envelopes)
        envelopes["c003"] = envelopes["c002"]  # c002's envelope relabelled as c003's
        return replace(m, envelopes=envelopes)

    rnd = _round(tamper_outbox(Stage.MASKED_INPUT, {"c001"}, misaddress))
    _run_to_end(rnd)
    _assert_aborted(rnd, "c001", "addressed to another pair", Stage.MASKED_INPUT)


def test_tampered_ciphertext_excludes_its_sender_but_reveals_nothing() -> None:
    """A server that corrupts one envelope cannot unmask its sender: the receiver refuses the
    shares and reports the sender, who is excluded; its self-mask seed is never revealed."""

    def corrupt(rnd, u, m: MaskedInputRequest):
        envelopes = dict(m.envelopes)
        data = bytearray(envelopes["c002"])
        data[-1] ^= 1
        envelopes["c002"] = bytes(data)
        return replace(m, envelopes=envelopes)

    rnd = _round(tamper_outbox(Stage.MASKED_INPUT, {"c001"}, corrupt))
    result = rnd.run()
    assert "c002" not in result.survivors
    for st, _, m in rnd.transcript:
        if st is Stage.UNMASK:
            assert "c002" not in m.self_mask_shares


# -- asking twice --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "stage", [Stage.GRAPH_SEED, Stage.SHARE_KEYS, Stage.CONSISTENCY, Stage.UNMASK]
)
def test_asking_twice_aborts_the_client(stage: Stage) -> None:
    def twice(rnd, st, outbox):
        if st is stage:
            return {u: msgs * 2 if u == "c001" else msgs for u, msgs in outbox.items()}
        return outbox

    rnd = _round(Hooks(server_to_clients=twice))
    _run_to_end(rnd)
    assert "c001" in rnd.client_errors
    assert len(_replies(rnd, stage, "c001")) == 1  # answered once, refused the second time


def test_asking_again_with_a_different_dead_list_is_refused() -> None:
    """After revealing b-shares, a second request for key shares of the same clients is refused."""

    def again(rnd, st, outbox):
        if st is Stage.UNMASK:
            first = outbox["c001"][0]
            second = replace(
                first, alive=("c001",), dead=tuple(v for v in first.alive if v != "c001")
            )
            return {**outbox, "c001": [first, second]}
        return outbox

    rnd = _round(Hooks(server_to_clients=again))
    rnd.run()
    assert "already done" in str(rnd.client_errors["c001"])
    assert all(
        not m.key_shares for st, u, m in rnd.transcript if st is Stage.UNMASK and u == "c001"
    )


def test_config_or_layout_mismatch_aborts() -> None:
    rnd = _round(
        tamper_outbox(
            Stage.ADVERTISE_KEYS, {"c001"}, lambda r, u, m: replace(m, config_digest=bytes(32))
        )
    )
    _run_to_end(rnd)
    _assert_aborted(rnd, "c001", "hash differs", Stage.ADVERTISE_KEYS)


def test_small_order_key_in_the_directory_aborts() -> None:
    """A colluding client signs a small-order key and the server forwards it anyway: the honest
    clients still refuse to agree keys with it."""
    point = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
    rnd = _round(Hooks())
    server = HandPlayedServer(rnd)
    adverts = server.advertise()
    nonce = bytes(32)
    adverts["c004"] = server.collude_advert(adverts["c004"], nonce, cipher_public=point)
    with pytest.raises(ProtocolError, match="small-order"):  # an honest server refuses it
        rnd.server.receive(adverts["c004"], authenticated_sender="c004")
    directory = server.directory(adverts)
    honest = [u for u in rnd.client_ids if u != "c004"]
    reveals = server.reveal({u: directory for u in honest})
    reveals["c004"] = server.collude_reveal("c004", directory, nonce)
    with pytest.raises(AbortRound, match="small-order"):
        server.forward("c001", reveals)
    assert rnd.clients["c001"].stage is ClientStage.ABORTED


# -- the graph seed (SecAgg+ neighbourhoods) ----------------------------------------------------
# The directory and reveal attacks target the protocol, not the graph shape, so the small full-graph
# round runs them; test_secagg_graph_grinding.py checks the seed's effect on the SecAgg+ graph.


@pytest.mark.parametrize(
    ("victim", "match"),
    [("c001", "not signed by it for this round"), ("c004", "substitutes my own graph-nonce")],
    ids=["someone-elses", "own"],
)
def test_swapped_commitment_in_the_directory_aborts(victim: str, match: str) -> None:
    """The server cannot swap c004's commitment for one whose nonce it knows or chose."""

    def swap(rnd, u, m: KeyDirectory):
        table = dict(m.keys)
        c, s, _, sig = table["c004"]
        table["c004"] = (c, s, graph.nonce_commitment(rnd.round_id, "c004", bytes(32)), sig)
        return replace(m, keys=table)

    rnd = _round(tamper_outbox(Stage.GRAPH_SEED, {victim}, swap))
    _run_to_end(rnd)
    _assert_aborted(rnd, victim, match, Stage.GRAPH_SEED)
    assert rnd.server.result is None  # without the victim's nonce the round cannot go on


def _edit_reveals(rnd, m: RevealDirectory, edit) -> RevealDirectory:
    return replace(m, reveals=edit(dict(m.reveals)))


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: {u: r for u, r in t.items() if u != "c004"}, "withholds the graph nonces"),
        (lambda t: {**t, "c004": (bytes(32), t["c004"][1])}, "does not match its commitment"),
        (lambda t: {**t, "c001": (bytes(32), t["c001"][1])}, "substitutes my own graph nonce"),
        (lambda t: {**t, "c004": (t["c004"][0], t["c003"][1])}, "did not sign the key directory"),
        (lambda t: {**t, "c999": t["c004"]}, "outside U1"),
    ],
    ids=["withheld", "forged-nonce", "own-nonce", "forged-signature", "stranger"],
)
def test_reveal_manipulation_aborts_before_the_graph_is_used(edit, match: str) -> None:
    rnd = _round(
        tamper_outbox(Stage.SHARE_KEYS, {"c001"}, lambda r, u, m: _edit_reveals(r, m, edit))
    )
    result = rnd.run()  # the others see every reveal and finish without c001
    assert "c001" not in result.survivors
    _assert_aborted(rnd, "c001", match, Stage.SHARE_KEYS)
    assert rnd.clients["c001"].neighbours == frozenset()  # it never fixed a graph


def test_different_u1_to_different_clients_aborts_both_sides() -> None:
    """c000 is shown a U1 without c006 (a graph the server could steer); everyone signs what it
    saw, so neither side collects a full set of signatures on its own directory."""
    rnd = _round(Hooks())
    server = HandPlayedServer(rnd)
    adverts = server.advertise()
    full = server.directory(adverts)
    small = server.directory({u: a for u, a in adverts.items() if u != "c006"})
    shown = {u: (small if u == "c000" else full) for u in rnd.client_ids}
    reveals = server.reveal(shown)
    with pytest.raises(AbortRound, match="'c001' did not sign the key directory I signed"):
        server.forward("c000", {u: r for u, r in reveals.items() if u != "c006"})
    with pytest.raises(AbortRound, match="'c000' did not sign the key directory I signed"):
        server.forward("c001", reveals)


def test_equivocating_colluder_cannot_split_the_graph() -> None:
    """A colluder signs two commitments and the server shows c000 the other one: c000 would
    derive another seed than its peers, but its honest peers' signatures expose the split."""
    rnd = _round(Hooks())
    server = HandPlayedServer(rnd)
    adverts = server.advertise()
    colluder, first, second = "c006", bytes(32), bytes(range(32))
    full = server.directory({**adverts, colluder: server.collude_advert(adverts[colluder], first)})
    split = server.directory(
        {**adverts, colluder: server.collude_advert(adverts[colluder], second)}
    )
    honest = [u for u in rnd.client_ids if u != colluder]
    reveals = server.reveal({u: (split if u == "c000" else full) for u in honest})
    to_c000 = {**reveals, colluder: server.collude_reveal(colluder, split, second)}
    with pytest.raises(AbortRound, match="'c001' did not sign the key directory I signed"):
        server.forward("c000", to_c000)
    to_c001 = {**reveals, colluder: server.collude_reveal(colluder, full, first)}
    with pytest.raises(AbortRound, match="'c000' did not sign the key directory I signed"):
        server.forward("c001", to_c001)


def test_server_cannot_reroll_by_dropping_a_member_after_the_reveals() -> None:
    """Having seen every nonce, the server would like a U1 without c006 (a new seed). A second
    directory is refused, and a reveal list without c006 is too."""
    rnd = _round(Hooks())
    server = HandPlayedServer(rnd)
    adverts = server.advertise()
    reveals = server.reveal({u: server.directory(adverts) for u in rnd.client_ids})
    smaller = server.directory({u: a for u, a in adverts.items() if u != "c006"})
    with pytest.raises(AbortRound, match="expected a RevealDirectory"):
        rnd.clients["c000"].handle(smaller)
    with pytest.raises(AbortRound, match=r"withholds the graph nonces of \['c006'\]"):
        server.forward("c001", {u: r for u, r in reveals.items() if u != "c006"})
    assert server.forward("c002", reveals).stage == Stage.SHARE_KEYS  # the honest path still works
