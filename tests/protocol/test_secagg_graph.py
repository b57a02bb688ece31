"""SecAgg+ neighbourhoods from a public seed; each client checks its own."""

from __future__ import annotations

import numpy as np
import pytest
from secagg_testkit import make_updates, true_sum

from fedvpa_secure.errors import AbortRound
from fedvpa_secure.secagg import InProcessRound, SecAggConfig, Stage, graph
from fedvpa_secure.secagg.messages import MaskedInputRequest

MEMBERS = [f"c{i:03d}" for i in range(30)]


def test_harary_graph_is_regular_symmetric_and_seeded() -> None:
    nbrs = graph.neighbourhoods(MEMBERS, 6, "r1")
    for u, ns in nbrs.items():
        assert len(ns) == 6 and u not in ns
        for v in ns:
            assert u in nbrs[v]
    assert nbrs == graph.neighbourhoods(list(reversed(MEMBERS)), 6, "r1")  # order-free
    assert nbrs != graph.neighbourhoods(MEMBERS, 6, "r2")  # the round id changes the labelling
    assert nbrs != graph.neighbourhoods(MEMBERS[1:], 6, "r1")
    for u in MEMBERS:
        assert graph.neighbours_of(u, MEMBERS, 6, "r1") == nbrs[u]


def test_full_graph_when_degree_is_none_or_large() -> None:
    for degree in (None, 29, 40):
        nbrs = graph.neighbourhoods(MEMBERS, degree, "r1")
        assert all(len(ns) == 29 for ns in nbrs.values())
    with pytest.raises(ValueError, match="even"):
        graph.neighbourhoods(MEMBERS, 5, "r1")


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
    probe = InProcessRound(make_updates(n), cfg)
    probe.run()
    nbrs = probe.server.neighbourhoods
    victim = "c000"
    silent = {int(v[1:]) for v in sorted(nbrs[victim])[:3]}
    rnd = InProcessRound(make_updates(n), cfg, drop_at={Stage.UNMASK: silent | {0}})
    with pytest.raises(AbortRound, match="below the threshold"):
        rnd.run()


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
