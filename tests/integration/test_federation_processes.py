"""The real federation: a server process and client processes on loopback, real learner.

Kept CI-sized with the deterministic tiny backbone (frozen mode) and a private embedding cache.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedvpa_secure import RewardModel
from fedvpa_secure.cli import main as cli_main
from fedvpa_secure.commands.simulate import prepare_run
from tests.integration.fedkit import CLI, ENV, TINY, simulate_args

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Run:
    """Processes of one federation started from simulate's prepared files."""

    def __init__(self, tmp: Path, clients: int, rounds: int, **kw) -> None:
        self.out = tmp / "run"
        self.port = _free_port()
        self.server_toml, self.ids, self.files = prepare_run(
            simulate_args(self.out, tmp / "cache", clients, rounds, **kw)
        )
        text = self.server_toml.read_text().replace("127.0.0.1:0", f"127.0.0.1:{self.port}")
        self.server_toml.write_text(text)
        self.logs = self.out / "logs"
        self.logs.mkdir(exist_ok=True)
        self.server: subprocess.Popen | None = None
        self.clients: dict[str, subprocess.Popen] = {}

    def start_server(self, *extra: str) -> None:
        log = open(self.logs / f"server{len(extra)}.log", "a")  # noqa: SIM115
        self.server = subprocess.Popen(
            [*CLI, "server", "--config", str(self.server_toml), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=ENV,
        )

    def start_clients(self, env_for: dict[str, dict[str, str]] | None = None) -> None:
        for cid in self.ids:
            env = dict(ENV, **(env_for or {}).get(cid, {}))
            self.clients[cid] = subprocess.Popen(
                [
                    *CLI,
                    "client",
                    "--server",
                    f"127.0.0.1:{self.port}",
                    "--client-id",
                    cid,
                    "--config",
                    str(self.files[cid]),
                    "--data",
                    str(self.files[f"data:{cid}"]),
                ],
                stdout=open(self.logs / f"{cid}.log", "a"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                env=env,
            )

    def state(self) -> dict:
        path = self.out / "checkpoints" / "state.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def wait_server(self, timeout: float) -> int:
        assert self.server is not None
        try:
            return self.server.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            pytest.fail(f"server did not finish; log:\n{self.server_log()[-3000:]}")

    def server_log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.logs.glob("server*.log")))

    def kill_all(self) -> None:
        for p in [self.server, *self.clients.values()]:
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture
def tmp_run(tmp_path: Path):
    runs: list[Run] = []

    def make(clients: int, rounds: int, **kw) -> Run:
        run = Run(tmp_path, clients, rounds, **kw)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.kill_all()


def _simulate_without_dp(tmp_path: Path, *learner: str) -> Path:
    """simulate, 3 clients x 2 rounds on the tiny backbone; no DP noise, so that the run can be
    compared with the in-process plain-sum run (``_assert_equals_in_process``)."""
    out = tmp_path / "RUN"
    args = ["--clients", "3", "--rounds", "2", "--out", str(out), *TINY, *learner]
    args += ["--cache-dir", str(tmp_path / "cache"), "--dp-epsilon", "0", "--user-dp-epsilon", "0"]
    rc = subprocess.run(
        [*CLI, "simulate", *args], env=ENV, timeout=240, capture_output=True, text=True
    )
    assert rc.returncode == 0, rc.stderr[-3000:] + (out / "logs" / "server.log").read_text()[-3000:]
    return out


def test_simulate_three_clients_then_audit(tmp_path: Path, capsys) -> None:
    out = _simulate_without_dp(tmp_path)
    report = json.loads((out / "report.json").read_text())
    assert report["completed_rounds"] == 2 and report["secure"] is True
    assert 0.0 <= report["accuracy"]["overall"] <= 1.0
    round_dir = out / "checkpoints" / "round-0002"
    for name in ("model.safetensors", "prior.safetensors", "optimizer.pt", "run.json"):
        assert (round_dir / name).exists(), name
    assert not (round_dir / "adapter").exists()  # frozen mode: no adapter to publish
    # the last round's checkpoint is a model on its own, equal to the published one
    from_checkpoint = RewardModel.from_pretrained(round_dir, device="cpu")
    published = RewardModel.from_pretrained(out, device="cpu")
    prompts, responses = ["Human: a cat or a dog?"] * 2, ["A cat.", "A dog."]
    np.testing.assert_allclose(
        from_checkpoint.score(prompts, responses, prototype=0),
        published.score(prompts, responses, prototype=0),
        atol=1e-6,
    )
    first_round = RewardModel.from_pretrained(out / "checkpoints" / "round-0001", device="cpu")
    moved = first_round.score(prompts, responses, prototype=0)
    assert np.abs(moved - published.score(prompts, responses, prototype=0)).max() > 1e-6  # control
    # a checkpoint's card does not guess the run's privacy facts: it points at the run's ledgers
    card = (from_checkpoint.save_pretrained(tmp_path / "saved") / "README.md").read_text()
    assert "unknown here: this is the server's checkpoint of round 2" in card
    assert "none (no" not in card
    assert (out / "training.png").exists()
    assert cli_main(["audit", str(out)]) == 0
    _assert_equals_in_process(out, ["c000", "c001", "c002"], rounds=2)


def test_simulate_carries_the_likelihood_posteriors_statistic(tmp_path: Path) -> None:
    """The p3 recipe's E-step over gRPC: each client's prior/ll goes into the masked sum and the
    server's offset, rebuilt from the sum alone, matches the in-process run."""
    out = _simulate_without_dp(tmp_path, "--posterior", "likelihood", "--head", "linear")
    prior = load_file(str(out / "checkpoints" / "round-0002" / "prior.safetensors"))
    # zero until the server has a summed prior/ll: nonzero means the statistic crossed the wire
    assert np.abs(prior["ll_offset"]).max() > 1e-4
    assert abs(float(prior["ll_offset"].sum())) < 1e-4  # centred, as the server writes it
    _assert_equals_in_process(out, ["c000", "c001", "c002"], rounds=2)


def _assert_equals_in_process(out: Path, ids: list[str], rounds: int) -> None:
    """The secure federation's model equals an in-process plain-sum run within quantisation."""
    from fedvpa_secure.client.learner import ClientLearner
    from fedvpa_secure.server.learner import ServerLearner, state_arrays
    from fedvpa_secure.server.settings import load_server_settings
    from fedvpa_secure.train.aggregation import plain_sum

    secure = load_file(str(out / "checkpoints" / f"round-{rounds:04d}" / "model.safetensors"))
    cfg = load_server_settings(out / "server.toml").experiment
    server = ServerLearner(cfg)
    clients = [ClientLearner(cfg, cid, out / "data" / cid) for cid in ids]
    for r in range(rounds):
        state = state_arrays(server.model)
        version = f"{r}.{r}"  # no failed attempts: round r is attempt r
        updates = [c.train_round(state, server.tau(r), version) for c in clients]
        server.apply(plain_sum(updates), r)
    reference = state_arrays(server.model)
    assert set(reference) == set(secure)
    # Quantisation: deltas (clip 256, 3 clients) carry 21 fractional bits (~5e-7 per
    # coordinate); prior statistics (clip 65536) carry 13 (~1.2e-4 per coordinate, a relative
    # error ~1e-5 on counts of tens), which the prior rebuild and round 2 carry into the weights.
    for name in sorted(reference):
        np.testing.assert_allclose(
            secure[name], reference[name], rtol=1e-3, atol=5e-4, err_msg=name
        )


def test_killed_client_is_recovered_as_a_dropout(tmp_run) -> None:
    run = tmp_run(4, 1)
    run.start_server()
    run.start_clients({"c003": {"FEDVPA_TEST_CLIENT_EXIT_AT": "MASKED_INPUT"}})
    assert run.wait_server(200) == 0, run.server_log()[-3000:]
    (record,) = run.state()["rounds"]
    assert record["survivors"] == ["c000", "c001", "c002"]
    assert "c003" in record["dropped"]["MASKED_INPUT"]
    assert run.clients["c003"].wait(10) == 137


def _entries(ledger_text: str) -> str:
    """A ledger's lines without its seal (rewritten at every append)."""
    return "".join(
        line + "\n" for line in ledger_text.splitlines() if json.loads(line)["kind"] != "seal"
    )


def test_server_killed_and_restarted_resumes(tmp_run) -> None:
    run = tmp_run(3, 3)
    run.start_server()
    run.start_clients()
    deadline = time.monotonic() + 150
    while run.state().get("completed_rounds", 0) < 1:
        assert time.monotonic() < deadline, run.server_log()[-3000:]
        assert run.server is not None and run.server.poll() is None, run.server_log()[-3000:]
        time.sleep(0.2)
    run.server.send_signal(signal.SIGKILL)
    run.server.wait()
    ledger = run.out / "ledger" / "server.ledger.jsonl"
    before = ledger.read_text()
    run.start_server("--resume")
    assert run.wait_server(200) == 0, run.server_log()[-3000:]
    state = run.state()
    assert state["completed_rounds"] == 3
    assert [r["round"] for r in state["rounds"]] == [1, 2, 3]
    versions = [r["model_version"] for r in state["rounds"]]
    assert len(set(versions)) == 3
    # the seal line moves to the end on every append; every entry before the kill must remain
    assert _entries(ledger.read_text()).startswith(_entries(before)), "the ledger was rewritten"
    for cid in run.ids:
        # model hash -> the version it came with: one contribution per model, whatever its label
        contributed = json.loads((run.out / "clients" / cid / "contributions.json").read_text())
        assert set(versions) <= set(contributed.values())
        rounds_seen = [v.split(".")[0] for v in contributed.values()]
        assert len(set(rounds_seen)) == len(rounds_seen) == 3  # round 2 once, retried or not
    assert cli_main(["audit", str(run.out)]) == 0
