"""The client's local privacy ledger when DP-SGD is off.

With ``experiment.dp`` set, the learner's :mod:`fedvpa_secure.train.dp_round` owns the ledger
(``STATE_DIR/privacy/clients/<id>.ledger.jsonl``): it checks the budget before training and
records each round before the update leaves the process. Without DP this ledger holds only its
genesis entry (the client's budget, nothing spent), so ``audit`` still finds every actor.
"""

from __future__ import annotations

from typing import Any

from privacy import BudgetPolicy, PersistentAccountant


def open_client_ledger(settings: Any, client_id: str, run_id: str) -> PersistentAccountant:
    path = settings.state_dir / f"{client_id}.ledger.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return PersistentAccountant.open(
        path,
        run_id=run_id,
        actor=client_id,
        unit="record",
        budget=BudgetPolicy(settings.epsilon_max, settings.delta),
        accountant=settings.accountant,
    )
