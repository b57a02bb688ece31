"""Helpers for the gRPC tests: certificates, a coordinator with a toy learner, client threads."""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedvpa_secure.client.policy import PrivacyPolicy
from fedvpa_secure.client.runtime import FederatedClient
from fedvpa_secure.client.settings import ClientSettings
from fedvpa_secure.config import ExperimentConfig
from fedvpa_secure.server.coordinator import Coordinator, Hooks
from fedvpa_secure.server.serve import start_grpc
from fedvpa_secure.server.settings import QuantSettings, RoundSettings, TlsFiles
from fedvpa_secure.transport.pki import (
    ClientFiles,
    client_files,
    load_registry,
    make_loopback_federation,
)

# how tests start real server and client processes, and the smallest real learner they train
CLI = [sys.executable, "-m", "fedvpa_secure.cli"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", CI="1")
TINY = [
    "--backbone",
    "tiny-causal",
    "--max-length",
    "64",
    "--pairs-per-client",
    "16",
    "--eval-clients",
    "3",
    "--local-steps",
    "2",
    "--server-optimizer",
    "avg",
]

TOY_POLICY = PrivacyPolicy(
    allow_plain=True,
    require_hardened=False,
    min_clients=3,
    min_threshold=2,
    require_user_dp=False,
    user_min_survivors=3,
    user_min_rounds=1,
)
"""What the toy rounds need: 3 clients, plain and non-hardened rounds. Tests of the policy
itself pass their own."""

DIM = 8
SPEC = {
    "delta/w": ((DIM,), "<f4"),
    "prior/n": ((2,), "<f8"),
    "prior/v": ((2,), "<f8"),
    "weight": ((1,), "<f8"),
}


class ToyLearner:
    """A client learner whose update is a known function of (client index, model)."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.cfg = ExperimentConfig()

    def state_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {"w": ((DIM,), "<f4")}

    def update_spec(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return dict(SPEC)

    def train_round(self, global_state: dict, tau: float, model_version: str) -> dict:
        w = global_state["w"]
        return {
            "delta/w": (np.full(DIM, self.index + 1, np.float32) - w).astype(np.float32),
            "prior/n": np.array([1.0, 2.0]),
            "prior/v": np.array([0.5, 0.25]),
            "weight": np.array([1.0]),
        }


@dataclass
class ToyServer:
    """The coordinator's learner side: w <- w + sum(delta)/sum(weight)."""

    w: np.ndarray = field(default_factory=lambda: np.zeros(DIM, np.float32))
    sums: list[dict[str, np.ndarray]] = field(default_factory=list)

    def hooks(self) -> Hooks:
        def apply(round_index: int, sums: dict, outcome: Any) -> None:
            self.sums.append(sums)
            self.w = (self.w + sums["delta/w"] / sums["weight"][0]).astype(np.float32)

        return Hooks(
            global_state=lambda: {"w": self.w.copy()},
            update_spec=lambda: dict(SPEC),
            tau=lambda r: 1.0,
            apply_sums=apply,
            persist_attempt=lambda r, a: None,
        )


def client_dir(certs: Path, cid: str) -> Path:
    """A client's own folder: beside the operator's folder ``certs``, never inside it."""
    return certs.parent / f"{certs.name}-clients" / cid


def client_keys(certs: Path, cid: str) -> ClientFiles:
    """The files ``make_certs`` wrote for ``cid`` (its keys, certificate and CA)."""
    return client_files(client_dir(certs, cid))


def make_certs(root: Path, n: int) -> tuple[Path, list[str]]:
    """Operator folder ``root`` (CA, server, registry) and n clients c000.. (init/request/sign)."""
    ids = [f"c{i:03d}" for i in range(n)]
    make_loopback_federation(root, {cid: client_dir(root, cid) for cid in ids})
    return root, ids


def client_settings(
    certs: Path, cid: str, state: Path, policy: PrivacyPolicy | None = None
) -> ClientSettings:
    """A toy client's settings; its policy accepts the small toy rounds unless one is given."""
    f = client_keys(certs, cid)
    return ClientSettings(
        cert=f.cert,
        key=f.key,
        ca=f.ca,
        identity=f.identity,
        registry=certs / "registry.json",
        state_dir=state / cid,
        poll_wait_s=0.5,
        reconnect_s=10.0,
        policy=TOY_POLICY if policy is None else policy,
    )


def start_toy_server(
    certs: Path,
    rounds: RoundSettings,
    toy: ToyServer,
    max_upload: int = 1 << 20,
    *,
    user_dp: Any = None,
    join_secure: bool | None = None,
):
    """A coordinator (not yet running) behind a real mTLS gRPC server on 127.0.0.1:0.

    ``join_secure``: what Join claims (default: ``rounds.secure``); an attacking server may
    claim a secure federation and then send plain tasks.
    """
    coordinator = Coordinator(
        registry=load_registry(certs / "registry.json"),
        rounds=rounds,
        quant=QuantSettings(delta_clip=16.0, prior_clip=16.0),
        hooks=toy.hooks(),
        user_dp=user_dp,
    )
    server, port = start_grpc(
        coordinator,
        address="127.0.0.1:0",
        tls_files=TlsFiles(certs / "server.pem", certs / "server.key", certs / "ca.pem"),
        experiment=ExperimentConfig().to_dict(),
        run_id="toy",
        secure=rounds.secure if join_secure is None else join_secure,
        max_upload_bytes=max_upload,
    )
    return coordinator, server, port


def toy_clients(
    certs: Path,
    ids: list[str],
    port: int,
    state: Path,
    *,
    policy: PrivacyPolicy | None = None,
    learner: type = ToyLearner,
    client_for: Any = None,
) -> list[FederatedClient]:
    """One FederatedClient per id, each with ``learner(index)``; ``client_for(cid)`` may pick
    another FederatedClient class for some clients (a misbehaving one)."""
    return [
        (client_for(cid) if client_for else FederatedClient)(
            f"127.0.0.1:{port}",
            cid,
            client_settings(certs, cid, state, policy),
            learner=learner(int(cid[1:])),
        )
        for cid in ids
    ]


def run_clients(
    certs: Path, ids: list[str], port: int, state: Path
) -> tuple[list[threading.Thread], list[FederatedClient]]:
    clients = toy_clients(certs, ids, port, state)
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    for t in threads:
        t.start()
    return threads, clients


def federate(coordinator, server, clients: list[FederatedClient], settle_s: float = 0.5) -> None:
    """Run the coordinator's rounds against ``clients`` (threads), then shut everything down."""
    threads = [threading.Thread(target=c.run, daemon=True) for c in clients]
    try:
        for t in threads:
            t.start()
        coordinator.run()
        time.sleep(settle_s)  # let the clients see FINISHED
    finally:
        coordinator.stop()
        server.stop(1.0).wait()
        for c in clients:
            c.close()


def simulate_args(
    out: Path, cache: Path, clients: int, rounds: int, **kw: Any
) -> argparse.Namespace:
    """The arguments ``simulate``'s ``prepare_run`` takes, for a tiny synthetic federation
    whose processes a test starts itself; ``kw`` overrides any of them."""
    ns = dict(
        out=str(out),
        clients=clients,
        clients_per_round=0,
        rounds=rounds,
        protocol="synthetic",
        data=None,
        method="fedvpa-gp",
        backbone="tiny-causal",
        max_length=64,
        pairs_per_client=16,
        eval_clients=3,
        local_steps=2,
        seed=0,
        server_optimizer="avg",
        plain=False,
        stage_deadline=20.0,
        timeout=240.0,
        cache_dir=str(cache),
        dp_epsilon=0.0,  # these tests check the secure-aggregation math; DP has its own tests
        dp_delta=1e-5,
        user_dp_epsilon=0.0,
        # every client of these tiny runs takes part in every round unless a test cuts one off:
        # no straggler window (CPU contention on a 2-core machine must not drop a client)
        straggler_factor=0.0,
    )
    ns.update(kw)
    return argparse.Namespace(**ns)
