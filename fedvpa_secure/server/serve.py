"""``serve(settings)``: the server process from settings to report.

Wires the learner, the ledger (``privacy.PersistentAccountant``, actor ``server``, unit ``user``),
the checkpoint store and the coordinator to a gRPC server with mTLS, message size limits and the
standard health service; resumes from the last complete round with ``resume=True``.
"""

from __future__ import annotations

import logging
import math
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedvpa_secure.atomic_json import write_json_atomic
from fedvpa_secure.errors import ConfigError
from fedvpa_secure.proto import federation_pb2_grpc as pb_grpc
from fedvpa_secure.server import privacy_hook
from fedvpa_secure.server.checkpoint import CheckpointStore
from fedvpa_secure.server.coordinator import Coordinator, Hooks, RoundOutcome, outcome_dict
from fedvpa_secure.server.learner import ServerLearner, checked_sums, state_arrays
from fedvpa_secure.server.servicer import FederationServicer
from fedvpa_secure.server.settings import LimitSettings, ServerSettings
from fedvpa_secure.train.model_io import CHECKPOINT_RUN_FILE, MODEL_FILE, save_global_model
from fedvpa_secure.transport import serde, tls
from fedvpa_secure.transport.pki import load_registry

log = logging.getLogger("fedvpa_secure.server")

SERVICE_NAME = "fedvpa.v1.Federation"
MAX_GRPC_MESSAGE = 4 * 1024 * 1024  # per message; large bodies are chunked (512 KiB)
ADDRESS_FILE = "server.address"


def _nan(x: float) -> float | None:
    return None if isinstance(x, float) and not math.isfinite(x) else x


class ServerRun:
    """One server process's run; :meth:`start` binds, :meth:`run` drives rounds, :meth:`stop`."""

    def __init__(self, settings: ServerSettings, *, resume: bool = False) -> None:
        self.settings = settings
        self.run_dir = settings.run_dir
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.store = CheckpointStore(settings.checkpoints)
        self.state = self.store.load_state()
        if self.state.latest is not None and not resume:
            raise ConfigError(
                f"{settings.checkpoints} already holds round {self.state.completed_rounds}: pass "
                "--resume to continue it, or use a fresh checkpoint dir"
            )
        self.registry = load_registry(settings.registry)
        self.ledger = privacy_hook.open_server_ledger(settings)
        self.user_dp = privacy_hook.open_user_dp(settings, self.ledger, len(self.registry))
        self.learner = ServerLearner(settings.experiment)
        if self.state.latest is not None:
            weights = self.store.load_weights(self.state.latest)
            self.learner.model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
            self.learner.load_optimizer(self.store.root / self.state.latest / "optimizer.pt")
            log.info(
                "resumed after round %d (next attempt %d)",
                self.state.completed_rounds,
                self.state.next_attempt,
            )
        self.coordinator = Coordinator(
            registry=self.registry,
            rounds=settings.rounds,
            quant=settings.quantization,
            hooks=Hooks(
                global_state=lambda: state_arrays(self.learner.model),
                update_spec=self.learner.update_spec,
                tau=self.learner.tau,
                apply_sums=self._apply,
                persist_attempt=self._persist_attempt,
            ),
            start_round=self.state.completed_rounds,
            start_attempt=self.state.next_attempt,
            seed=settings.experiment.train.seed,
            user_dp=self.user_dp,
        )
        self.health = health.HealthServicer()
        self.server: grpc.Server | None = None
        self.port = 0

    # -- hooks ----------------------------------------------------------------------------------

    def _persist_attempt(self, round_index: int, next_attempt: int) -> None:
        self.state.next_attempt = next_attempt
        self.store.save_state(self.state)

    def _apply(self, round_index: int, sums: dict[str, np.ndarray], outcome: RoundOutcome) -> None:
        # with user-level DP the ledger entry was written before unmasking (coordinator)
        dp = self.user_dp is not None or self.settings.experiment.dp is not None
        sums = checked_sums(sums, len(outcome.survivors), dp=dp)
        self.learner.apply(sums, round_index)
        metrics = self.learner.quick_metrics()
        weights = state_arrays(self.learner.model)

        def extra(folder: Path) -> None:
            self.learner.save_optimizer(folder / "optimizer.pt")
            _make_loadable(self.learner, folder, round_index + 1)

        name = self.store.save_round(round_index + 1, weights, extra)
        record = {
            "round": round_index + 1,
            "tau": self.learner.tau(round_index),
            "loss": float("nan"),
            "bt": float("nan"),
            **metrics,
            "clients": len(outcome.survivors),
            **outcome_dict(outcome),
        }
        self.state.rounds.append({k: _nan(v) for k, v in record.items()})
        self.state.completed_rounds = round_index + 1
        self.state.latest = name
        self.state.model_hash = serde.state_hash(weights)
        self.store.save_state(self.state)  # the commit point of the round
        write_json_atomic(self.run_dir / "rounds.json", {"rounds": self.state.rounds})
        log.info(
            "round %d committed: accuracy %.3f, %d survivors",
            round_index + 1,
            metrics["eval_accuracy"],
            len(outcome.survivors),
        )

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> int:
        """Bind the gRPC server (mTLS); returns the bound port and writes RUN/server.address."""
        s = self.settings
        self.server, self.port = start_grpc(
            self.coordinator,
            address=s.address,
            tls_files=s.tls,
            experiment=s.experiment.to_dict(),
            run_id=s.run_id,
            secure=s.rounds.secure,
            max_upload_bytes=s.max_message_bytes,
            health_servicer=self.health,
            limits=s.limits,
        )
        host = s.address.rsplit(":", 1)[0]
        (self.run_dir / ADDRESS_FILE).write_text(f"{host}:{self.port}\n")
        log.info("serving on %s:%d (mTLS)", host, self.port)
        return self.port

    def run(self) -> dict[str, Any]:
        """Drive every remaining round, then write the report; returns it."""
        self.coordinator.run()
        report = self.write_report()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        return report

    def stop(self, grace: float = 3.0) -> None:
        self.coordinator.stop()
        if self.server is not None:
            time.sleep(min(grace, 1.5))  # let polling clients see FINISHED
            self.server.stop(grace).wait()

    def write_report(self) -> dict[str, Any]:
        from fedvpa_secure.train.plots import plot_training_curves

        cfg = self.settings.experiment
        final = self.learner.final_report() if self.state.completed_rounds else {}
        report = {
            "method": cfg.method,
            "protocol": self.learner.protocol,
            "seed": cfg.train.seed,
            "secure": self.settings.rounds.secure,
            "data": self.learner.data_description,
            "user_types": self.learner.user_types,
            **final,
            "rounds": self.state.rounds,
            "completed_rounds": self.state.completed_rounds,
            "failed": self.coordinator.failed,
            "model_hash": self.state.model_hash,
            "ledger": str(self.ledger.ledger.path.relative_to(self.run_dir))
            if self.ledger.ledger.path.is_relative_to(self.run_dir)
            else str(self.ledger.ledger.path),
            "privacy": {
                "user_level": None if self.user_dp is None else self.user_dp.summary(),
                "ledgers": [str(self.ledger.ledger.path)],
            },
            "config": cfg.to_dict(),
        }
        plots = {}
        if self.state.rounds:
            plots["curves"] = plot_training_curves(
                self.state.rounds,
                self.run_dir / "training.png",
                f"{cfg.method} (secure federation)",
            ).name
        report["plots"] = plots
        if self.state.completed_rounds:  # the product: what RewardModel.from_pretrained loads
            save_global_model(self.learner.model, self.run_dir / MODEL_FILE)
        write_json_atomic(self.run_dir / "report.json", report)
        return report


def start_grpc(
    coordinator: Coordinator,
    *,
    address: str,
    tls_files: Any,
    experiment: dict[str, Any],
    run_id: str,
    secure: bool,
    max_upload_bytes: int,
    health_servicer: health.HealthServicer | None = None,
    workers: int | None = None,
    limits: LimitSettings | None = None,
) -> tuple[grpc.Server, int]:
    """A started gRPC server with the federation and health services, mTLS and size limits.

    At most ``limits.total_streams`` calls run at once and the pool has at least as many
    threads, so a call over the limit is refused at once with RESOURCE_EXHAUSTED instead of
    waiting in the pool's queue behind calls that may never finish (SECURITY.md, issue 14).
    ``workers`` only adds threads (benchmarks); it never raises the call limit.
    """
    limits = limits or LimitSettings()
    max_calls = limits.total_streams(len(coordinator.registry))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max(max_calls, workers or 0)),
        options=[
            ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE),
            ("grpc.max_send_message_length", MAX_GRPC_MESSAGE),
        ],
        maximum_concurrent_rpcs=max_calls,
    )
    servicer = FederationServicer(
        coordinator,
        experiment=experiment,
        run_id=run_id,
        secure=secure,
        max_upload_bytes=max_upload_bytes,
        limits=limits,
    )
    pb_grpc.add_FederationServicer_to_server(servicer, server)
    health_servicer = health_servicer or health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    creds = tls.server_credentials(tls_files.cert, tls_files.key, tls_files.ca)
    port = server.add_secure_port(address, creds)
    if port == 0:
        raise ConfigError(f"cannot bind {address}")
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port


def _make_loadable(learner: ServerLearner, folder: Path, round_number: int) -> None:
    """What makes a round folder a model on its own: ``RewardModel.from_pretrained`` reads the
    run config from ``run.json``; in lora mode the adapter is also a standard peft folder."""
    write_json_atomic(
        folder / CHECKPOINT_RUN_FILE,
        {
            "method": learner.cfg.method,
            "protocol": learner.protocol,
            "user_types": learner.user_types,
            "checkpoint_round": round_number,
            "config": learner.cfg.to_dict(),
        },
    )
    backbone = getattr(learner.model, "backbone", None)
    inner = getattr(backbone, "model", None)
    if learner.cfg.model.mode == "lora" and hasattr(inner, "save_pretrained"):
        inner.save_pretrained(str(folder / "adapter"))


def serve(settings: ServerSettings, *, resume: bool = False) -> int:
    """Run the server until every round is done; returns the process exit status."""
    run = ServerRun(settings, resume=resume)
    run.start()
    try:
        run.run()
    finally:
        run.stop()
    return 0 if run.coordinator.failed is None else 1
