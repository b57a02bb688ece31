"""Dropouts of k clients at each stage, k in {0, 1, n - t, n - t + 1}.

PROTOCOL.md: success exactly when the threshold holds, otherwise a clean abort with no partial
output. Clients dropped before their masked input is in (advertise to masked input) are missing
from the sum; clients dropped later (consistency, unmask) are still in it - their self masks are
rebuilt from the other survivors' shares. The graph-seed stage is the exception: its seed needs
every member of U1, so a single loss there aborts the round before any share is dealt.
"""

from __future__ import annotations

import numpy as np
import pytest
from secagg_testkit import make_updates, true_sum

from fedvpa_secure.errors import AbortRound
from fedvpa_secure.secagg import InProcessRound, SecAggConfig, ServerStage, Stage

CASES = [(7, True), (10, False)]  # hardened n=7 -> t=5; honest-but-curious n=10 -> t=6


def _params() -> list[tuple[int, bool, Stage, int]]:
    out = []
    for n, hardened in CASES:
        t = SecAggConfig(n_clients=n, hardened=hardened).threshold
        assert t is not None
        for stage in Stage:
            if stage is Stage.CONSISTENCY and not hardened:
                continue
            for k in sorted({0, 1, n - t, n - t + 1}):
                out.append((n, hardened, stage, k))
    return out


def _check(n: int, hardened: bool, stage: Stage, k: int, seed: int) -> None:
    cfg = SecAggConfig(n_clients=n, hardened=hardened)
    t = cfg.threshold
    assert t is not None
    dropped = sorted(np.random.default_rng(seed).choice(n, size=k, replace=False).tolist())
    updates = make_updates(n, seed=seed)
    rnd = InProcessRound(updates, cfg, drop_at={stage: set(dropped)})
    graph_stage_loss = stage is Stage.GRAPH_SEED and k > 0
    if n - k >= t and not graph_stage_loss:
        result = rnd.run()
        in_sum = [i for i in range(n) if stage > Stage.MASKED_INPUT or i not in dropped]
        assert [int(u[1:]) for u in result.survivors] == in_sum
        assert result.count == len(in_sum)
        expected = true_sum(updates, in_sum)
        bound = len(in_sum) / 2.0 ** cfg.frac_bits[""]
        for name, value in expected.items():
            assert np.abs(result.tensors[name] - value).max() < bound
        assert set(result.dropped[stage.name]) == {f"c{i:03d}" for i in dropped}
    else:
        match = "no valid graph nonce" if graph_stage_loss else "below the threshold"
        with pytest.raises(AbortRound, match=match):
            rnd.run()
        assert rnd.server.stage is ServerStage.ABORTED
        assert rnd.server.result is None
        # no client revealed anything after the abort point
        assert not [m for st, _, m in rnd.transcript if st > stage]


@pytest.mark.parametrize(("n", "hardened", "stage", "k"), _params())
def test_dropouts_at_every_stage(n: int, hardened: bool, stage: Stage, k: int) -> None:
    _check(n, hardened, stage, k, seed=1000 * n + 10 * int(stage) + k)


@pytest.mark.parametrize("stage", [Stage.SHARE_KEYS, Stage.MASKED_INPUT, Stage.UNMASK])
@pytest.mark.parametrize("extra", [0, 1])
def test_dropouts_n50_at_the_threshold(stage: Stage, extra: int) -> None:
    """n = 50 (hardened, t = 34): n - t dropouts succeed, n - t + 1 abort."""
    cfg = SecAggConfig(n_clients=50)
    assert cfg.threshold == 34
    _check(50, True, stage, 50 - 34 + extra, seed=int(stage) + 7 * extra)


def test_dropouts_spread_over_several_stages() -> None:
    """Losses accumulate across stages; the round survives while every stage keeps t."""
    n = 10
    cfg = SecAggConfig(n_clients=n)  # hardened, t = 7
    updates = make_updates(n, seed=11)
    # 10 -> 9 keyholders -> 8 inputs -> 7 signers -> 7 unmaskers: t = 7 holds everywhere
    drop = {Stage.SHARE_KEYS: {0}, Stage.MASKED_INPUT: {4}, Stage.CONSISTENCY: {5}}
    result = InProcessRound(updates, cfg, drop_at=drop).run()
    in_sum = [1, 2, 3, 5, 6, 7, 8, 9]
    assert [int(u[1:]) for u in result.survivors] == in_sum
    expected = true_sum(updates, in_sum)
    for name, value in expected.items():
        assert np.abs(result.tensors[name] - value).max() < n / 2.0 ** cfg.frac_bits[""]
    drop[Stage.UNMASK] = {9}  # now only 6 reveal shares: below t = 7
    rnd = InProcessRound(updates, cfg, drop_at=drop)
    with pytest.raises(AbortRound):
        rnd.run()
    assert rnd.server.result is None
