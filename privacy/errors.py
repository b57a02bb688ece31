"""Errors raised by the :mod:`privacy` package.

The package must stay importable without :mod:`fedvpa_secure` (an auditor verifies a run with
``privacy`` alone), so it has its own small hierarchy rooted at :class:`PrivacyError`. Callers in
``fedvpa_secure`` wrap these into the project's errors at the boundary.
"""

from __future__ import annotations

from pathlib import Path


class PrivacyError(Exception):
    """Root of every error this package raises on purpose."""


class InvalidParameterError(PrivacyError, ValueError):
    """A privacy parameter is out of range; the message names the parameter and the value."""


class UnsupportedEventError(PrivacyError):
    """An accountant was given an event type it cannot account for."""


class CalibrationError(PrivacyError):
    """No noise level in the searched range reaches the requested privacy target."""


class LedgerIntegrityError(PrivacyError):
    """A ledger failed verification: broken hash chain, edited, dropped, reordered or torn entry.

    Unlike the deliberately opaque integrity errors of the transport layer, a ledger error names
    *where* the chain broke (file, entry sequence number and line): the ledger is not a secret and
    an auditor needs the location to investigate.

    Attributes:
        path: The ledger file, when known.
        seq: Sequence number of the offending entry, when it could be read.
        line: 1-based line number of the offending line, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        path: Path | str | None = None,
        seq: int | None = None,
        line: int | None = None,
    ) -> None:
        self.path = None if path is None else Path(path)
        self.seq = seq
        self.line = line
        self.reason = message
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if seq is not None:
            where.append(f"seq {seq}")
        if line is not None:
            where.append(f"line {line}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)


class LedgerConfigError(PrivacyError):
    """An existing ledger was opened with parameters (actor, unit, budget...) it was not made with.

    Changing a budget or an accountant half-way would silently change what the recorded epsilons
    mean, so the ledger refuses rather than adapting.
    """


class BudgetExceeded(PrivacyError):
    """Applying the next event would cross the privacy budget; nothing was changed.

    Attributes:
        epsilon_now: Epsilon spent so far.
        epsilon_after: Epsilon after the refused event.
        epsilon_max: The budget's epsilon.
        delta: The budget's delta.
    """

    def __init__(
        self, *, epsilon_now: float, epsilon_after: float, epsilon_max: float, delta: float
    ) -> None:
        self.epsilon_now = epsilon_now
        self.epsilon_after = epsilon_after
        self.epsilon_max = epsilon_max
        self.delta = delta
        super().__init__(
            f"privacy budget would be exceeded: epsilon spent {epsilon_now:.4g}, after the next "
            f"event {epsilon_after:.4g} > budget {epsilon_max:.4g} (delta={delta:g}); "
            "the event was refused and nothing was recorded"
        )
