"""Round time of the real federation with and without secure aggregation, and a 100-client run.

Part 1 (frozen mode, real learner, one OS process per client): for N in 5, 10, 20 it runs one
federation (synthetic data, deterministic tiny backbone, frozen embeddings) whose rounds alternate
secure and plain (``rounds.alternate_plain``), so both kinds of round share the same processes and
the same machine load; it prints the median round time of each kind (after a warm-up pair) and
their ratio. A round is timed from sampling to the sum being available, local training included.

Each row also shows the seconds a secure round spends in the secure-aggregation stages after
local training (graph seed, shares, masked input, signatures, unmasking; from the server's round
log) and ``(plain + protocol) / plain``: with n processes on a 2-core machine the local training
time of a round swings by seconds from round to round, so the end-to-end ratio of a few rounds is
mostly that noise, while the protocol stages are what secure aggregation adds.

Part 2: 100 clients as threads in a few host processes (a numpy learner whose update has the
frozen model's size) for 10 secure rounds; counts completed rounds (no lost round = 10).

    python benchmarks/round_bench.py [--sizes 5,10,20] [--rounds 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLI = [sys.executable, "-m", "fedvpa_secure.cli"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", CI="1")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Secure-round stages that run after local training (COLLECT_KEYS also waits for training).
PROTOCOL_STAGES = (
    "COLLECT_REVEALS",
    "COLLECT_SHARES",
    "COLLECT_MASKED",
    "COLLECT_SIGNATURES",
    "COLLECT_UNMASK",
)


def federation_round_times(
    tmp: Path, n: int, pairs: int
) -> tuple[list[float], list[float], list[float]]:
    """Server + n client processes, 2 * (pairs + 1) alternating rounds.

    Returns (plain, secure, protocol) seconds per round; ``protocol`` is the part of each secure
    round spent in the secure-aggregation stages after local training.
    """
    from fedvpa_secure.commands import simulate

    out = tmp / f"n{n}"
    cli = argparse.ArgumentParser()
    simulate.register(cli.add_subparsers())
    # simulate's own parser: every other flag keeps its default; no DP: the round cost only
    args = cli.parse_args([
        "simulate", "--out", str(out), "--clients", str(n), "--rounds", str(2 * (pairs + 1)),
        "--protocol", "synthetic", "--backbone", "tiny-causal", "--max-length", "64",
        "--pairs-per-client", "16", "--eval-clients", "3", "--stage-deadline", "60",
        "--timeout", "900", "--cache-dir", str(tmp / "cache"), "--dp-epsilon", "0",
        "--user-dp-epsilon", "0",
    ])  # fmt: skip
    server_toml, ids, files = simulate.prepare_run(args)
    port = _free_port()
    text = server_toml.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}")
    server_toml.write_text(text.replace("[rounds]\n", "[rounds]\nalternate_plain = true\n"))
    for cid in ids:  # the plain rounds are the baseline: these clients' policy must allow them
        allow_plain(files[cid])
    logs = out / "logs"
    logs.mkdir(exist_ok=True)
    procs = [
        subprocess.Popen(
            [*CLI, "server", "--config", str(server_toml)],
            stdout=open(logs / "server.log", "w"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            env=ENV,
        )
    ]
    for cid in ids:
        procs.append(
            subprocess.Popen(
                [*CLI, "client", "--server", f"127.0.0.1:{port}", "--client-id", cid,
                 "--config", str(files[cid]), "--data", str(files[f"data:{cid}"])],
                stdout=open(logs / f"{cid}.log", "w"),  # noqa: SIM115
                stderr=subprocess.STDOUT,
                env=ENV,
            )
        )  # fmt: skip
    try:
        if procs[0].wait(timeout=1800) != 0:
            raise SystemExit(f"server failed; see {logs / 'server.log'}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    rounds = json.loads((out / "checkpoints" / "state.json").read_text())["rounds"][2:]
    plain = [float(r["seconds"]) for r in rounds if not r["secure"]]
    secure = [float(r["seconds"]) for r in rounds if r["secure"]]
    protocol = [
        sum(float(r.get("stage_seconds", {}).get(s, 0.0)) for s in PROTOCOL_STAGES)
        for r in rounds
        if r["secure"]
    ]
    return plain, secure, protocol


def allow_plain(client_toml: Path) -> None:
    """Add ``allow_plain = true`` to a client's ``[policy]`` (benchmarks only)."""
    text = client_toml.read_text()
    if "[policy]\n" in text:
        text = text.replace("[policy]\n", "[policy]\nallow_plain = true\n")
    else:
        text += "\n[policy]\nallow_plain = true\n"
    client_toml.write_text(text)


class NumpyLearner:
    """A stand-in learner with a fixed update size (the 100-client scale test)."""

    def __init__(self, index: int, dim: int) -> None:
        from fedvpa_secure.config import ExperimentConfig

        self.index, self.dim, self.cfg = index, dim, ExperimentConfig()

    def state_spec(self) -> dict:
        return {"w": ((self.dim,), "<f4")}

    def update_spec(self) -> dict:
        return {
            "delta/w": ((self.dim,), "<f4"),
            "prior/n": ((2,), "<f8"),
            "prior/v": ((2,), "<f8"),
            "weight": ((1,), "<f8"),
        }

    def train_round(self, global_state: dict, tau: float, model_version: str) -> dict:
        rng = np.random.default_rng(self.index)
        return {
            "delta/w": rng.normal(0, 0.01, self.dim).astype(np.float32),
            "prior/n": np.ones(2),
            "prior/v": np.ones(2),
            "weight": np.array([1.0]),
        }


def host_clients(certs: str, ids: list[str], port: int, state: str, dim: int) -> None:
    """Run several clients as threads in this process (``--host`` mode)."""
    from fedvpa_secure.client.policy import PrivacyPolicy
    from fedvpa_secure.client.runtime import FederatedClient
    from fedvpa_secure.client.settings import ClientSettings
    from fedvpa_secure.transport.pki import client_files

    # the protocol's cost only: this server runs no user-level DP, everything else is the default
    policy = PrivacyPolicy(require_user_dp=False)
    threads = []
    for cid in ids:
        f = client_files(_client_folder(Path(certs), cid))
        settings = ClientSettings(
            cert=f.cert, key=f.key, ca=f.ca, identity=f.identity,
            registry=Path(certs) / "registry.json", state_dir=Path(state) / cid,
            poll_wait_s=2.0, reconnect_s=60.0, policy=policy,
        )  # fmt: skip
        client = FederatedClient(
            f"127.0.0.1:{port}", cid, settings, learner=NumpyLearner(int(cid[1:]), dim)
        )
        threads.append(threading.Thread(target=client.run, daemon=True))
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _client_folder(certs: Path, cid: str) -> Path:
    return certs.parent / "clients100" / cid


def hundred_clients(tmp: Path, n: int, rounds: int, hosts: int, dim: int) -> tuple[int, float]:
    """n clients in ``hosts`` processes, ``rounds`` secure rounds; (completed, seconds)."""
    from fedvpa_secure.config import ExperimentConfig
    from fedvpa_secure.server.coordinator import Coordinator, Hooks
    from fedvpa_secure.server.serve import start_grpc
    from fedvpa_secure.server.settings import QuantSettings, RoundSettings, TlsFiles
    from fedvpa_secure.transport.pki import load_registry, make_loopback_federation

    certs = tmp / "certs100"
    ids = [f"c{i:03d}" for i in range(n)]
    make_loopback_federation(certs, {cid: _client_folder(certs, cid) for cid in ids})
    spec = {"delta/w": ((dim,), "<f4"), "prior/n": ((2,), "<f8"), "prior/v": ((2,), "<f8"),
            "weight": ((1,), "<f8")}  # fmt: skip
    w = {"w": np.zeros(dim, np.float32)}
    done: list[int] = []

    def apply(round_index: int, sums: dict, outcome: object) -> None:
        # the model must move: clients refuse a second contribution to the same model hash
        w["w"] = (w["w"] + sums["delta/w"] / float(sums["weight"][0])).astype(np.float32)
        done.append(round_index)

    hooks = Hooks(
        global_state=lambda: dict(w),
        update_spec=lambda: dict(spec),
        tau=lambda r: 1.0,
        apply_sums=apply,
        persist_attempt=lambda r, a: None,
    )
    rounds_cfg = RoundSettings(
        rounds=rounds, clients_per_round=n, min_survivors=3, hardened=True,
        train_deadline_s=120.0, stage_deadline_s=120.0, liveness_s=30.0,
        join_timeout_s=300.0, max_attempts=1,
    )  # fmt: skip
    coordinator = Coordinator(
        registry=load_registry(certs / "registry.json"),
        rounds=rounds_cfg,
        quant=QuantSettings(delta_clip=1.0, prior_clip=16.0),
        hooks=hooks,
    )
    server, port = start_grpc(
        coordinator, address="127.0.0.1:0",
        tls_files=TlsFiles(certs / "server.pem", certs / "server.key", certs / "ca.pem"),
        experiment=ExperimentConfig().to_dict(), run_id="bench100", secure=True,
        max_upload_bytes=64 << 20, workers=n + 16,
    )  # fmt: skip
    groups = [ids[i::hosts] for i in range(hosts)]
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, "--host", str(certs), ",".join(g), str(port),
             str(tmp / "state100"), str(dim)],
            env=ENV, stdout=subprocess.DEVNULL, stderr=open(tmp / f"host{i}.log", "w"),  # noqa: SIM115
        )
        for i, g in enumerate(groups)
    ]  # fmt: skip
    started = time.perf_counter()
    try:
        coordinator.run()
    finally:
        elapsed = time.perf_counter() - started
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        server.stop(0)
    return len(done), elapsed


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--host":
        certs, ids, port, state, dim = sys.argv[2:7]
        host_clients(certs, ids.split(","), int(port), state, int(dim))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="5,10,20")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each kind")
    parser.add_argument("--big", type=int, default=100, help="clients of the scale test (0: skip)")
    parser.add_argument("--big-rounds", type=int, default=10)
    parser.add_argument("--hosts", type=int, default=4, help="host processes of the scale test")
    parser.add_argument("--dim", type=int, default=174_085, help="update size of the scale test")
    parser.add_argument("--json", default=None, help="write the summary here")
    args = parser.parse_args()
    summary: dict[str, float | int] = {}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        print(
            f"{'clients':>8} {'plain s/round':>14} {'secure s/round':>15} {'secure/plain':>13} "
            f"{'protocol s':>11} {'(plain+protocol)/plain':>23}"
        )
        for n in [int(x) for x in args.sizes.split(",") if x]:
            plain_times, secure_times, protocol_times = federation_round_times(tmp, n, args.rounds)
            plain = statistics.median(plain_times)
            secure = statistics.median(secure_times)
            protocol = statistics.median(protocol_times)
            ratio = secure / plain
            # end-to-end rounds are dominated by local training of n processes on few cores,
            # whose time swings by seconds from round to round; the protocol stages after
            # training are what secure aggregation adds, measured inside the same rounds
            stage_ratio = (plain + protocol) / plain
            summary[f"plain_s_n{n}"] = round(plain, 3)
            summary[f"secure_s_n{n}"] = round(secure, 3)
            summary[f"secure_over_plain_n{n}"] = round(ratio, 3)
            summary[f"protocol_s_n{n}"] = round(protocol, 4)
            summary[f"protocol_over_plain_n{n}"] = round(stage_ratio, 4)
            print(
                f"{n:>8} {plain:>14.2f} {secure:>15.2f} {ratio:>12.2f}x {protocol:>11.3f} "
                f"{stage_ratio:>22.3f}x",
                flush=True,
            )
        if args.big:
            completed, seconds = hundred_clients(
                tmp, args.big, args.big_rounds, args.hosts, args.dim
            )
            summary[f"rounds_completed_n{args.big}"] = completed
            summary[f"seconds_n{args.big}"] = round(seconds, 1)
            print(
                f"{args.big} clients in {args.hosts} processes: {completed}/{args.big_rounds} "
                f"secure rounds completed in {seconds:.0f}s (update of {args.dim} floats)"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
