"""SecAgg+ neighbourhoods from a seed every member contributes to; each client checks its own."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from secagg_testkit import make_updates, true_sum

from fedvpa_secure.errors import AbortRound
from fedvpa_secure.secagg import InProcessRound, SecAggConfig, Stage, graph
from fedvpa_secure.secagg.messages import MaskedInputRequest

MEMBERS = [f"c{i:03d}" for i in range(30)]
NONCES = {u: hashlib.sha256(u.encode()).digest() for u in MEMBERS}
SEED = graph.graph_seed("r1", NONCES)


def test_harary_graph_is_regular_symmetric_and_seeded() -> None:
    nbrs = graph.neighbourhoods(MEMBERS, 6, SEED)
    for u, ns in nbrs.items():
        assert len(ns) == 6 and u not in ns
        for v in ns:
            assert u in nbrs[v]
    assert nbrs == graph.neighbourhoods(list(reversed(MEMBERS)), 6, SEED)  # order-free
    assert nbrs != graph.neighbourhoods(MEMBERS, 6, graph.graph_seed("r2", NONCES))
    for u in MEMBERS:
        assert graph.neighbours_of(u, MEMBERS, 6, SEED) == nbrs[u]
        assert graph.neighbour_count(len(MEMBERS), 6) == len(nbrs[u])


def test_the_seed_depends_on_every_member_and_every_nonce() -> None:
    seeds = {SEED, graph.graph_seed("r2", NONCES)}
    for u in MEMBERS:
        seeds.add(graph.graph_seed("r1", {**NONCES, u: bytes(32)}))  # one nonce changed
        seeds.add(graph.graph_seed("r1", {v: n for v, n in NONCES.items() if v != u}))  # dropped
    assert len(seeds) == 2 + 2 * len(MEMBERS)
    assert graph.graph_seed("r1", dict(reversed(NONCES.items()))) == SEED  # order-free


def test_nonce_commitments_bind_round_client_and_nonce() -> None:
    c = graph.nonce_commitment("r1", "c001", NONCES["c001"])
    assert len(c) == 32
    assert c != graph.nonce_commitment("r2", "c001", NONCES["c001"])
    assert c != graph.nonce_commitment("r1", "c002", NONCES["c001"])
    assert c != graph.nonce_commitment("r1", "c001", NONCES["c002"])
    assert NONCES["c001"] not in c


def test_full_graph_when_degree_is_none_or_large() -> None:
    for degree in (None, 29, 40):
        nbrs = graph.neighbourhoods(MEMBERS, degree, SEED)
        assert all(len(ns) == 29 for ns in nbrs.values())
        assert graph.neighbour_count(len(MEMBERS), degree) == 29
    assert graph.neighbourhoods(MEMBERS, None, b"") == graph.neighbourhoods(MEMBERS, None, SEED)
    with pytest.raises(ValueError, match="even"):
        graph.neighbourhoods(MEMBERS, 5, SEED)


def test_permutation_is_uniform_enough() -> None:
    """Every member lands in every position about equally often over many seeds."""
    members = [f"c{i}" for i in range(6)]
    counts = np.zeros((6, 6))
    for s in range(3000):
        perm = graph.permutation(members, s.to_bytes(4, "big"))
        for pos, u in enumerate(perm):
            counts[members.index(u), pos] += 1
    assert np.abs(counts - 500).max() < 120


@pytest.mark.parametrize("drop_stage", [None, Stage.MASKED_INPUT, Stage.UNMASK])
def test_secagg_plus_round_sums_correctly(drop_stage: Stage | None) -> None:
    n = 16
    cfg = SecAggConfig(n_clients=n, degree=6, hardened=False)
    assert not cfg.full_graph and cfg.share_threshold() == 4
    updates = make_updates(n, seed=12)
    drop = {} if drop_stage is None else {drop_stage: {3, 9}}
    rnd = InProcessRound(updates, cfg, drop_at=drop)
    result = rnd.run()
    in_sum = [i for i in range(n) if drop_stage is not Stage.MASKED_INPUT or i not in (3, 9)]
    assert [int(u[1:]) for u in result.survivors] == in_sum
    for name, value in true_sum(updates, in_sum).items():
        assert np.abs(result.tensors[name] - value).max() < n / 2.0 ** cfg.frac_bits[""]
    for u, client in rnd.clients.items():
        assert client.neighbours == rnd.server.neighbourhoods[u]
        assert len(client.neighbours) == 6
    # the graph is the one every member's revealed nonce fixes, nothing the server picked alone
    nonces = {u: m.nonce for st, u, m in rnd.transcript if st is Stage.GRAPH_SEED}
    assert sorted(nonces) == rnd.client_ids
    seed = graph.graph_seed(rnd.round_id, nonces)
    assert rnd.server.neighbourhoods == graph.neighbourhoods(rnd.client_ids, 6, seed)


def test_secagg_plus_hardened_round() -> None:
    n = 12
    cfg = SecAggConfig(n_clients=n, degree=8)  # neighbourhood of 9, t_k = 7
    updates = make_updates(n, seed=13)
    result = InProcessRound(updates, cfg, drop_at={Stage.MASKED_INPUT: {0}}).run()
    assert len(result.survivors) == n - 1


def test_secagg_plus_neighbourhood_threshold_loss_aborts() -> None:
    """Dropping a whole neighbourhood below t_k leaves a survivor's seed unrecoverable."""
    n = 16
    cfg = SecAggConfig(n_clients=n, degree=4, hardened=False)  # groups of 5, t_k = 3
    # the same (insecure, test-only) client randomness gives the same nonces, hence the same graph
    probe = InProcessRound(make_updates(n), cfg, insecure_seed=b"graph")
    probe.run()
    nbrs = probe.server.neighbourhoods
    victim = "c000"
    silent = {int(v[1:]) for v in sorted(nbrs[victim])[:3]}
    rnd = InProcessRound(
        make_updates(n), cfg, drop_at={Stage.UNMASK: silent | {0}}, insecure_seed=b"graph"
    )
    with pytest.raises(AbortRound, match="below the threshold"):
        rnd.run()
    assert rnd.server.neighbourhoods == nbrs


def test_client_refuses_envelopes_from_non_neighbours() -> None:
    n = 16
    cfg = SecAggConfig(n_clients=n, degree=4, hardened=False)

    def inject(rnd, stage, outbox):
        if stage is Stage.MASKED_INPUT:
            target = outbox["c000"][0]
            assert isinstance(target, MaskedInputRequest)
            near = rnd.server.neighbourhoods["c000"] | {"c000"}
            stranger = next(u for u in rnd.client_ids if u not in near)
            envs = dict(target.envelopes)
            envs[stranger] = next(iter(envs.values()))
            from dataclasses import replace

            return {**outbox, "c000": [replace(target, envelopes=envs)]}
        return outbox

    from fedvpa_secure.secagg import Hooks

    rnd = InProcessRound(make_updates(n), cfg, hooks=Hooks(server_to_clients=inject))
    rnd.run()
    assert "non-neighbours" in str(rnd.client_errors["c000"])
