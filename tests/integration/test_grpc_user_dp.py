"""User-level distributed DP over gRPC (PRIVACY.md section 2).

Two layers: a toy learner behind the real coordinator, mTLS gRPC server and client runtimes on
loopback (threads; fast, and the updates are known so the released sum can be compared with the
plain sum), and one real federation of server and client processes started from ``simulate``'s
files, checked through its ledger, report and ``fedvpa-secure audit``.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from fedvpa_secure.cli import main as cli_main
from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.server.settings import DpSettings, RoundSettings
from fedvpa_secure.server.user_dp import ServerUserDP
from fedvpa_secure.train.aggregation import plain_sum
from fedvpa_secure.train.secure_aggregation import privatize_update
from privacy import BudgetPolicy, PersistentAccountant, compute_epsilon
from privacy.distributed import calibrate_distributed_noise
from privacy.ledger import Ledger
from tests.integration.fedkit import (
    CLI,
    DIM,
    ENV,
    SPEC,
    TINY,
    ToyServer,
    federate,
    make_certs,
    start_toy_server,
    toy_clients,
)

pytestmark = pytest.mark.integration

N_CLIENTS = 4
ROUNDS = 3


class ConstantLearner:
    """A client whose update does not depend on the model, so the clean sum is known."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.cfg = ExperimentConfig()

    def state_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {"w": ((DIM,), "<f4")}

    def update_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {k: (np.shape(v), np.asarray(v).dtype.str) for k, v in self.update().items()}

    def update(self) -> dict[str, np.ndarray]:
        return {
            "delta/w": np.full(DIM, 0.05 * (self.index + 1), np.float32),
            "prior/n": np.array([1.0, 3.0]),
            "prior/v": np.array([0.5, 0.25]),
            "weight": np.array([2.0]),
        }

    def train_round(self, global_state: dict, tau: float, model_version: str) -> dict:
        return self.update()


def _ledger(path: Path) -> PersistentAccountant:
    return PersistentAccountant.open(
        path,
        run_id="toy",
        actor="server",
        unit="user",
        budget=BudgetPolicy(8.0, 1e-5),
        accountant="rdp",
    )


def _federate(tmp: Path, user_dp: bool) -> tuple[ToyServer, ServerUserDP | None, Path]:
    """Run ROUNDS rounds of the toy federation over real gRPC; returns the sums and ledger."""
    certs, ids = make_certs(tmp / "certs", N_CLIENTS)
    rounds = RoundSettings(
        rounds=ROUNDS,
        clients_per_round=N_CLIENTS,
        min_survivors=3,
        stage_deadline_s=20.0,
        train_deadline_s=20.0,
        join_timeout_s=30.0,
    )
    ledger_path = tmp / "ledger" / "server.ledger.jsonl"
    ledger_path.parent.mkdir(parents=True)
    ledger = _ledger(ledger_path)
    dp = None
    if user_dp:
        dp = ServerUserDP(
            DpSettings(target_epsilon=8.0, clip_norm=1.0, min_survivors=3),
            ledger,
            rounds=ROUNDS,
            sample_rate=1.0,
            max_clients=N_CLIENTS,
            stage_deadline_s=20.0,
        )
    toy = ToyServer()
    coordinator, server, port = start_toy_server(certs, rounds, toy, user_dp=dp)
    clients = toy_clients(certs, ids, port, tmp / "state", learner=ConstantLearner)
    federate(coordinator, server, clients, settle_s=1.0)
    assert coordinator.failed is None, coordinator.failed
    assert len(toy.sums) == ROUNDS
    return toy, dp, ledger_path


def _clean_sum(clip_norm: float | None) -> dict[str, np.ndarray]:
    updates = [ConstantLearner(i).update() for i in range(N_CLIENTS)]
    if clip_norm is not None:
        updates = [privatize_update(u, clip_norm) for u in updates]
    return plain_sum(updates)


def _noise(sums: dict[str, np.ndarray], clean: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate(
        [np.asarray(sums[k], np.float64).ravel() - clean[k].ravel() for k in clean if k != "weight"]
    )


def test_user_dp_over_grpc_noises_the_sum_at_the_planned_scale(tmp_path: Path) -> None:
    # CONTROL: DP off releases the plain sum (up to quantisation) and records nothing
    off, _, off_ledger = _federate(tmp_path / "off", user_dp=False)
    clean_off = _clean_sum(None)
    for sums in off.sums:
        assert np.abs(_noise(sums, clean_off)).max() < 1e-3
    assert len(Ledger.open(off_ledger).entries) == 0

    on, dp, on_ledger = _federate(tmp_path / "on", user_dp=True)
    assert dp is not None and dp.plan is not None
    plan = dp.plan
    entries = Ledger.open(on_ledger).entries
    assert [e.round for e in entries] == [1, 2, 3]  # one event per round, written by the server
    for e in entries:
        assert e.event == plan.round_event(1)
        assert e.event.local_sigma == pytest.approx(plan.local_sigma)
        assert e.participant_count == N_CLIENTS
        assert e.clipping_norm == 1.0
    # the calibration: ROUNDS such rounds spend the target, and the ledger says so
    assert compute_epsilon([plan.round_event(ROUNDS)], 1e-5) <= 8.0 + 1e-6
    assert entries[-1].epsilon_after == pytest.approx(plan.epsilon, rel=0.02)

    # each user counts once (weight 1), and the released sum is the clipped sum plus noise
    clean = _clean_sum(1.0)
    for sums in on.sums:
        assert sums["weight"][0] == pytest.approx(N_CLIENTS)
    noise = np.concatenate([_noise(s, clean) for s in on.sums])
    config, _ = dp.round_config(N_CLIENTS, SPEC, 0)  # the quantisation the round used
    frac_bits = config.frac_bits[""]
    expected_sd = plan.local_sigma * math.sqrt(N_CLIENTS) / 2.0**frac_bits
    observed_sd = float(np.sqrt(np.mean(noise**2)))
    # 36 coordinates: the sample sd is within ~25% of the truth with overwhelming probability
    assert 0.6 * expected_sd < observed_sd < 1.5 * expected_sd, (observed_sd, expected_sd)
    assert abs(float(np.mean(noise))) < 4 * expected_sd / math.sqrt(noise.size)


# -- real server and client processes ------------------------------------------------------------


@pytest.mark.parametrize(
    "learner",
    [[], ["--posterior", "likelihood", "--head", "linear"]],
    ids=["encoder", "likelihood-posterior"],
)
def test_simulate_with_user_dp_records_every_round_and_audits(
    tmp_path: Path, learner: list[str]
) -> None:
    """Also with the likelihood posterior, whose prior/ll joins the clipped, noised prior block."""
    from tests.integration.test_federation_processes import _assert_equals_in_process

    out = tmp_path / "RUN"
    args = ["--clients", "3", "--rounds", "2", "--out", str(out), *TINY, *learner]
    args += ["--cache-dir", str(tmp_path / "cache"), "--dp-epsilon", "0"]
    args += [
        "--user-dp-epsilon",
        "8",
        "--user-dp-clip",
        "1.0",
        "--user-dp-noise",
        "discrete_gaussian",
    ]
    rc = subprocess.run(
        [*CLI, "simulate", *args], env=ENV, timeout=240, capture_output=True, text=True
    )
    server_log = (out / "logs" / "server.log").read_text()
    assert rc.returncode == 0, rc.stderr[-3000:] + server_log[-3000:]
    assert "user-level epsilon" in rc.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["completed_rounds"] == 2 and report["secure"] is True
    user_level = report["privacy"]["user_level"]

    # one event per round in the server's ledger, written before unmasking
    entries = Ledger.open(out / "ledger" / "server.ledger.jsonl").entries
    assert [e.round for e in entries] == [1, 2]
    assert server_log.index("recorded before unmasking") < server_log.index("round 1 committed")
    for e in entries:
        assert e.event.noise == "discrete_gaussian" and e.event.min_survivors == 3
        assert e.participant_count == 3 and e.clipping_norm == 1.0
        assert e.event.local_sigma == pytest.approx(user_level["local_sigma"])
    # the right sigma: recalibrated independently from the event's public parameters
    event = entries[0].event
    independent = calibrate_distributed_noise(
        target_epsilon=8.0,
        delta=1e-5,
        sample_rate=1.0,
        rounds=2,
        l2_sensitivity=event.l2_sensitivity,
        dim=event.dim,
        min_survivors=3,
        max_summands=3,
        noise="discrete_gaussian",
    )
    assert event.local_sigma == pytest.approx(independent.local_sigma, rel=1e-9)
    assert entries[-1].epsilon_after <= 8.0
    # each client noised its own update before masking
    for cid in ("c000", "c001", "c002"):
        assert "discrete_gaussian noise share" in (out / "logs" / f"{cid}.log").read_text()
    assert cli_main(["audit", str(out)]) == 0
    # CONTROL: the same federation without DP gives the plain-sum model; this one does not
    with pytest.raises(AssertionError):
        _assert_equals_in_process(out, ["c000", "c001", "c002"], rounds=2)
    # the published model is the product: it loads, scores, and its card states this guarantee
    from fedvpa_secure import RewardModel

    model = RewardModel.from_pretrained(out, device="cpu")
    rewards = model.score(["Human: hi"], ["Hello."], prototype=0)
    assert rewards.shape == (1,) and np.isfinite(rewards).all()
    saved = model.save_pretrained(tmp_path / "published")
    card = json.loads((saved / "model_card.json").read_text())
    assert card["privacy"]["user_level"]["epsilon"] == pytest.approx(user_level["epsilon"])
    assert card["audit"]["passed"] is True and card["audit"]["ledgers"] >= 4
    readme = (saved / "README.md").read_text()
    assert f"epsilon {user_level['epsilon']:.4g}" in readme and "passed" in readme
