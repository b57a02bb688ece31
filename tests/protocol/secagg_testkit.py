"""Shared helpers for the secure-aggregation protocol tests (not a test module).

numpy's generator appears here only to make *test data*; the library never uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from fedvpa_secure.secagg import Hooks, InProcessRound, SecAggConfig, Stage
from fedvpa_secure.secagg.messages import Message

SHAPES: dict[str, tuple[int, ...]] = {"lora.A": (4, 3), "lora.B": (3, 4), "head": (5,)}


def make_updates(
    n: int,
    *,
    seed: int = 0,
    shapes: dict[str, tuple[int, ...]] | None = None,
    low: float = -1.0,
    high: float = 1.0,
    dtype: type = np.float32,
) -> list[dict[str, np.ndarray]]:
    """``n`` random updates with the same names, shapes and dtype."""
    gen = np.random.default_rng(seed)
    shapes = SHAPES if shapes is None else shapes
    return [
        {k: gen.uniform(low, high, size=s).astype(dtype) for k, s in shapes.items()}
        for _ in range(n)
    ]


def true_sum(
    updates: Sequence[dict[str, np.ndarray]], members: Sequence[int]
) -> dict[str, np.ndarray]:
    """The float64 sum of the chosen clients' updates."""
    names = updates[0].keys()
    return {k: sum(updates[i][k].astype(np.float64) for i in members) for k in names}


def index_of(client_id: str) -> int:
    """The index of a default client id ``cNNN``."""
    return int(client_id[1:])


def run_round(
    n: int,
    *,
    config: SecAggConfig | None = None,
    hooks: Hooks | None = None,
    drop_at: dict[Stage, set[int]] | None = None,
    seed: int = 0,
    **config_kwargs: object,
) -> tuple[InProcessRound, list[dict[str, np.ndarray]]]:
    """A ready-to-run round of ``n`` clients (not yet run)."""
    cfg = config or SecAggConfig(n_clients=n, **config_kwargs)  # type: ignore[arg-type]
    updates = make_updates(n, seed=seed)
    return InProcessRound(updates, cfg, hooks=hooks, drop_at=drop_at), updates


def tamper_outbox(
    stage: Stage, targets: set[str] | None, edit: Callable[[InProcessRound, str, Message], Message]
) -> Hooks:
    """A malicious-server hook that rewrites the ``stage`` messages for ``targets`` (None: all)."""

    def hook(rnd: InProcessRound, st: Stage, outbox: dict[str, list[Message]]):
        if st is not stage:
            return outbox
        return {
            u: [edit(rnd, u, m) if targets is None or u in targets else m for m in msgs]
            for u, msgs in outbox.items()
        }

    return Hooks(server_to_clients=hook)


def tamper_reply(
    stage: Stage, culprit: str, edit: Callable[[InProcessRound, Message], Message | None]
) -> Hooks:
    """A bad-client hook: ``culprit`` rewrites its ``stage`` reply."""

    def hook(rnd: InProcessRound, st: Stage, u: str, reply: Message) -> Message | None:
        if st is stage and u == culprit:
            return edit(rnd, reply)
        return reply

    return Hooks(client_to_server=hook)
