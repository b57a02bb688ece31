"""Secure aggregation: a pure library (no I/O) for summing masked client updates.

The protocol is Bonawitz et al. 2017 with its malicious-server hardening and the SecAgg+ sparse
graph of Bell et al. 2020; ``docs/PROTOCOL.md`` is the specification and ``SECURITY.md`` the trust
model. The gRPC layer and the coordinator drive :class:`ClientSession` and :class:`ServerSession`;
tests, benchmarks and the in-process federation use :func:`run_in_process`.

Quick start::

    config = SecAggConfig(n_clients=5, clip={"": 1.0})
    result = run_in_process([{"w": np.ones(3, np.float32)}] * 5, config)
    result.tensors["w"]  # ~ [5., 5., 5.]
"""

from fedvpa_secure.secagg.client import CLIENT_TRANSITIONS, ClientSession, ClientStage
from fedvpa_secure.secagg.config import SecAggConfig
from fedvpa_secure.secagg.driver import Hooks, InProcessRound, run_in_process
from fedvpa_secure.secagg.errors import ClientRejected, InvalidUpdateError
from fedvpa_secure.secagg.layout import Layout, LayoutEntry
from fedvpa_secure.secagg.messages import PROTOCOL_VERSION, MessageLimits, Stage, validate
from fedvpa_secure.secagg.rng import DeterministicRng
from fedvpa_secure.secagg.server import (
    SERVER_TRANSITIONS,
    AggregateResult,
    ServerSession,
    ServerStage,
)

__all__ = [
    "CLIENT_TRANSITIONS",
    "PROTOCOL_VERSION",
    "SERVER_TRANSITIONS",
    "AggregateResult",
    "ClientRejected",
    "ClientSession",
    "ClientStage",
    "DeterministicRng",
    "Hooks",
    "InProcessRound",
    "InvalidUpdateError",
    "Layout",
    "LayoutEntry",
    "MessageLimits",
    "SecAggConfig",
    "ServerSession",
    "ServerStage",
    "Stage",
    "run_in_process",
    "validate",
]
