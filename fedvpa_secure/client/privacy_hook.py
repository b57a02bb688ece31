"""The client's own privacy ledgers.

* Record level: with DP-SGD the learner's :mod:`fedvpa_secure.train.dp_round` owns the ledger
  (``STATE_DIR/privacy/clients/<id>.ledger.jsonl``): it checks the budget before training and
  records each round before the update leaves the process. Without DP-SGD the ledger at
  ``STATE_DIR/<id>.ledger.jsonl`` holds only its genesis entry (the client's budget, nothing
  spent), so ``audit`` still finds every actor.
* User level, towards the server (``STATE_DIR/<id>.user.ledger.jsonl``): every round this client
  put a noise share into, composed WITHOUT subsampling amplification -- the server chose and saw
  who took part, so against it the client's participation is not secret. The client checks it
  before touching its data and records the round before its masked input leaves; it refuses a
  round that would cross its own ``[policy] user_epsilon``.
"""

from __future__ import annotations

from typing import Any

from fedvpa_secure.errors import ConfigError
from privacy import BudgetPolicy, LedgerConfigError, PersistentAccountant
from privacy.ledger import ACROSS_RUNS_PREFIX

USER_UNIT = "user"


def open_client_ledger(settings: Any, client_id: str, run_id: str) -> PersistentAccountant:
    policy = settings.policy
    path = settings.state_dir / f"{client_id}.ledger.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    return PersistentAccountant.open(
        path,
        run_id=run_id,
        actor=client_id,
        unit="record",
        budget=BudgetPolicy(policy.record_epsilon, policy.record_delta),
        accountant=policy.accountant,
    )


def open_user_ledger(settings: Any, client_id: str) -> PersistentAccountant:
    """This client's user-level ledger towards the server (created once, replayed after).

    It belongs to the client's data, not to one federation run: the budget spans every run this
    data takes part in, so the ledger's run id is the client's own, never the server's.

    Raises:
        ConfigError: the ledger exists with other parameters (the policy's budget changed).
    """
    policy = settings.policy
    path = settings.state_dir / f"{client_id}.user.ledger.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return PersistentAccountant.open(
            path,
            run_id=f"{ACROSS_RUNS_PREFIX}{client_id}",
            actor=client_id,
            unit=USER_UNIT,
            budget=BudgetPolicy(policy.user_epsilon, policy.user_delta),
            accountant=policy.accountant,
        )
    except LedgerConfigError as err:
        raise ConfigError(
            f"{err}. This ledger records what this client's data has already spent; keep "
            "[policy] user_epsilon, user_delta and accountant as they were when it was made, or "
            "start a new state_dir only for data that has never been used in a federation"
        ) from err
