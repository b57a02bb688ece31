"""The server's privacy ledger, and the user-level DP it records (when ``server.toml`` asks).

The ledger (actor ``server``, unit ``user``) is created with the budget from ``server.toml`` and
verified on every open (``fedvpa-secure audit RUN`` checks it again). With ``dp.target_epsilon``
or ``dp.noise_multiplier`` set, :func:`open_user_dp` gives the coordinator a
:class:`~fedvpa_secure.server.user_dp.ServerUserDP`, which writes one
``DistributedNoiseEvent`` per round BEFORE the round's sum is unmasked. Without it no round
carries DP noise, nothing is recorded (there is no guarantee to record) and the report says
``user_level: null``.
"""

from __future__ import annotations

import logging
from typing import Any

from privacy import BudgetPolicy, PersistentAccountant

log = logging.getLogger("fedvpa_secure.server")

LEDGER_NAME = "server.ledger.jsonl"


def open_server_ledger(settings: Any) -> PersistentAccountant:
    """``RUN/ledger/server.ledger.jsonl``: reopened (and verified) on resume, never rewritten."""
    path = settings.run_dir / "ledger" / LEDGER_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    return PersistentAccountant.open(
        path,
        run_id=settings.run_id,
        actor="server",
        unit="user",
        budget=BudgetPolicy(settings.dp.epsilon_max, settings.dp.delta),
        accountant=settings.dp.accountant,
    )


def sample_rate(clients_per_round: int, population: int) -> float:
    """The client sampling rate the user-level accounting may claim: 1, no amplification.

    Amplification by subsampling needs participants chosen by Poisson sampling that nobody
    can bias or observe. Here the server picks a fixed-size set among the clients online (from
    a public seed) and sees who took part, so against the server -- the adversary distributed
    DP is for -- each round a client is in costs its full epsilon. The server's ledger therefore
    composes without amplification, the same figure each client records in its own ledger.
    ``clients_per_round`` and ``population`` stay in the signature for the day sampling is
    done by the clients themselves.
    """
    del clients_per_round, population
    return 1.0


def open_user_dp(settings: Any, ledger: PersistentAccountant, population: int) -> Any:
    """The server's user-level DP, or ``None`` when ``server.toml`` does not turn it on."""
    if not settings.dp.user_level:
        return None
    from fedvpa_secure.server.user_dp import ServerUserDP

    r = settings.rounds
    user_dp = ServerUserDP(
        settings.dp,
        ledger,
        rounds=r.rounds,
        sample_rate=sample_rate(r.clients_per_round, population),
        max_clients=r.clients_per_round,
        hardened=r.hardened,
        min_clients=r.min_survivors,
        stage_deadline_s=r.stage_deadline_s,
        threshold=r.threshold,
    )
    log.info(
        "user-level DP on: %s noise, clip %g, t_min %d, q %.3g, target epsilon %.3g (budget %g)",
        settings.dp.noise,
        settings.dp.clip_norm,
        settings.dp.min_survivors,
        user_dp.sample_rate,
        user_dp.config.target_epsilon,
        settings.dp.epsilon_max,
    )
    return user_dp
