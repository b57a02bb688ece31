"""The server's privacy ledger and the hook where user-level distributed DP records its rounds.

The ledger (actor ``server``, unit ``user``) is created with the budget from ``server.toml`` and
verified on every open (``fedvpa-secure audit RUN`` checks it again). Each round's release is
described by the learner's DP module; until that module provides an event
(``fedvpa_secure.train.secure_aggregation.round_privacy_event``), a round without DP noise adds no
ledger entry: it has no DP guarantee to record, and the report says ``dp: off``.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

from privacy import BudgetPolicy, PersistentAccountant

log = logging.getLogger("fedvpa_secure.server")

LEDGER_NAME = "server.ledger.jsonl"
DP_MODULE = "fedvpa_secure.train.secure_aggregation"
DP_EVENT_FUNCTION = "round_privacy_event"


def open_server_ledger(settings: Any) -> PersistentAccountant:
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


def round_event(settings: Any, round_index: int, outcome: Any) -> Any:
    """The DP event of this round from the learner's DP module, or ``None`` (DP off)."""
    try:
        module = importlib.import_module(DP_MODULE)
    except ImportError:
        return None
    make = getattr(module, DP_EVENT_FUNCTION, None)
    if make is None:
        return None
    return make(settings.experiment, round_index=round_index, survivors=len(outcome.survivors))


def record_round(
    ledger: PersistentAccountant, settings: Any, round_index: int, outcome: Any
) -> None:
    """Append this round's event (checked against the budget before it is applied)."""
    event = round_event(settings, round_index, outcome)
    if event is None:
        return
    ledger.record(
        event, round=round_index + 1, participants=list(outcome.survivors), label=outcome.round_id
    )
