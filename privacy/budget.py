"""A privacy budget and the persistent accountant that enforces it.

:class:`PersistentAccountant` is one actor's accountant whose *only* state is its ledger: opening
it replays the ledger into a fresh accountant, so epsilon continues across process restarts and a
new ``PrivacyEngine`` per round can never reset it to zero (PRIVACY.md section 1). Budget checks
happen *before* any state changes (dp_accounting's check-then-compose pattern): a refused event
leaves the ledger file and the in-memory accountant untouched.

Order of operations for callers: call :meth:`PersistentAccountant.record` *before* the noisy
output leaves the process (write-ahead). A crash after recording but before release over-counts,
which is safe; the opposite order could under-count.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from privacy.accountants import Accountant, canonical_name, check_delta, make_accountant
from privacy.errors import (
    BudgetExceeded,
    InvalidParameterError,
    LedgerConfigError,
    LedgerIntegrityError,
)
from privacy.events import PrivacyEvent
from privacy.ledger import Ledger, LedgerEntry

logger = logging.getLogger(__name__)

REPLAY_RTOL = 1e-3
"""Relative tolerance between a replayed epsilon and the one recorded in the ledger (allows a
library upgrade to move the last digits, not a forged number)."""


def epsilon_matches(recorded: float, recomputed: float, rtol: float = REPLAY_RTOL) -> bool:
    """Whether a recomputed epsilon confirms a recorded one."""
    return abs(recorded - recomputed) <= rtol * max(abs(recorded), abs(recomputed)) + 1e-9


@dataclasses.dataclass(frozen=True)
class BudgetPolicy:
    """An (epsilon, delta) budget. ``epsilon_max`` is never to be crossed."""

    epsilon_max: float
    delta: float

    def __post_init__(self) -> None:
        eps = float(self.epsilon_max)
        if not (math.isfinite(eps) and eps > 0):
            raise InvalidParameterError(f"epsilon_max must be finite and > 0, got {eps!r}")
        object.__setattr__(self, "epsilon_max", eps)
        object.__setattr__(self, "delta", check_delta(self.delta))


class PersistentAccountant:
    """One actor's ledger-backed accountant with a budget. Use :meth:`open` or :meth:`load`."""

    def __init__(self, ledger: Ledger, accountant: Accountant) -> None:
        self._ledger = ledger
        self._accountant = accountant

    @classmethod
    def load(cls, path: Path | str) -> PersistentAccountant:
        """Open an existing ledger with the parameters in its genesis entry; replay and verify.

        Raises:
            LedgerIntegrityError: the chain is broken or the replayed epsilon disagrees with the
                last recorded one.
        """
        ledger = Ledger.open(path)
        accountant = make_accountant(ledger.genesis.accountant)
        for entry in ledger.entries:
            accountant.compose(entry.event)
        if ledger.entries:
            recorded = ledger.entries[-1].epsilon_after
            replayed = accountant.get_epsilon(ledger.genesis.delta)
            if not epsilon_matches(recorded, replayed):
                raise LedgerIntegrityError(
                    f"replayed epsilon {replayed:.6g} differs from the recorded {recorded:.6g}",
                    path=ledger.path,
                    seq=ledger.entries[-1].seq,
                )
        logger.debug("replayed %d ledger entries from %s", len(ledger), ledger.path)
        return cls(ledger, accountant)

    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        run_id: str,
        actor: str,
        unit: str,
        budget: BudgetPolicy,
        accountant: str = "rdp",
    ) -> PersistentAccountant:
        """Open the actor's ledger, creating it on first use.

        An existing ledger must have been created with exactly these parameters: silently
        continuing under a different budget, delta, unit or accountant would change what the
        recorded epsilons mean.

        Args:
            path: Ledger file (``*.ledger.jsonl``).
            run_id: Run identifier bound into the genesis entry.
            actor: ``"server"`` or the client id.
            unit: ``"record"`` (client DP-SGD) or ``"user"`` (server, distributed DP).
            budget: The budget to enforce.
            accountant: Accountant name (``rdp``, ``prv``, ``pld``, ``dpa-rdp``).

        Raises:
            LedgerConfigError: the existing ledger was created with other parameters.
            LedgerIntegrityError: the existing ledger fails verification.
        """
        name = canonical_name(accountant)
        if not Path(path).exists():
            Ledger.create(
                path,
                run_id=run_id,
                actor=actor,
                unit=unit,
                accountant=name,
                delta=budget.delta,
                epsilon_max=budget.epsilon_max,
            )
        persistent = cls.load(path)
        g = persistent._ledger.genesis
        wanted = {
            "run_id": run_id,
            "actor": actor,
            "unit": unit,
            "accountant": name,
            "delta": budget.delta,
            "epsilon_max": budget.epsilon_max,
        }
        differences = [
            f"{key}: ledger has {getattr(g, key)!r}, caller asked {value!r}"
            for key, value in wanted.items()
            if getattr(g, key) != value
        ]
        if differences:
            raise LedgerConfigError(
                f"{path} was created with different parameters; refusing to continue ("
                + "; ".join(differences)
                + ")"
            )
        return persistent

    @property
    def ledger(self) -> Ledger:
        """The backing ledger."""
        return self._ledger

    @property
    def budget(self) -> BudgetPolicy:
        """The budget from the genesis entry."""
        g = self._ledger.genesis
        return BudgetPolicy(g.epsilon_max, g.delta)

    @property
    def accountant_name(self) -> str:
        """Canonical name of the accountant in use."""
        return self._accountant.name

    @property
    def epsilon(self) -> float:
        """Epsilon spent so far at the budget's delta."""
        return self._accountant.get_epsilon(self._ledger.genesis.delta)

    @property
    def remaining(self) -> float:
        """Epsilon left before the budget (never negative)."""
        return max(0.0, self._ledger.genesis.epsilon_max - self.epsilon)

    def epsilon_after(self, event: PrivacyEvent) -> float:
        """Epsilon if ``event`` were applied next; changes nothing."""
        return self._accountant.epsilon_after(event, self._ledger.genesis.delta)

    def check_next(self, event: PrivacyEvent) -> float:
        """Return the epsilon after ``event`` or raise :class:`BudgetExceeded`; changes nothing."""
        g = self._ledger.genesis
        after = self.epsilon_after(event)
        if after > g.epsilon_max:
            raise BudgetExceeded(
                epsilon_now=self.epsilon,
                epsilon_after=after,
                epsilon_max=g.epsilon_max,
                delta=g.delta,
            )
        return after

    def record(
        self,
        event: PrivacyEvent,
        *,
        round: int,
        clipping_norm: float | None = None,
        participants: int | Sequence[str] | None = None,
        label: str | None = None,
        now: _dt.datetime | str | None = None,
    ) -> LedgerEntry:
        """Check the budget, append ``event`` to the ledger, then compose it.

        Nothing changes if the budget would be crossed (:class:`BudgetExceeded`) or if the ledger
        append fails; the accountant is updated only after the entry is durably on disk.

        Returns:
            The new ledger entry (``entry.epsilon_after`` is the new epsilon).
        """
        after = self.check_next(event)
        entry = self._ledger.append(
            event,
            round=round,
            epsilon_after=after,
            clipping_norm=clipping_norm,
            participants=participants,
            label=label,
            now=now,
        )
        self._accountant.compose(event)
        logger.info(
            "%s round %d: %s recorded, epsilon %.4g of %.4g (delta=%g)",
            self._ledger.genesis.actor,
            round,
            event.type_name,
            after,
            self._ledger.genesis.epsilon_max,
            self._ledger.genesis.delta,
        )
        return entry
