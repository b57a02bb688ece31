"""Differential-privacy accounting, ledger and audits.

This package imports nothing from ``fedvpa_secure`` so that an auditor can verify a run's privacy
claims with this package alone.

Modules, one job each:

* :mod:`privacy.events` - immutable descriptions of DP releases, JSON round-trip.
* :mod:`privacy.accountants` - RDP/PRV (Opacus), PLD/RDP (dp-accounting), calibration.
* :mod:`privacy.ledger` - append-only hash-chained JSON-lines ledger.
* :mod:`privacy.budget` - budget policy and the ledger-backed persistent accountant.
* :mod:`privacy.audit` - verify ledgers and recompute epsilon independently.
* :mod:`privacy.noise` - exact discrete Gaussian and Skellam samplers (CSPRNG).
* :mod:`privacy.discrete_bounds` - Gaussian-equivalent bounds for integer noise.
* :mod:`privacy.distributed` - user-level distributed DP: calibration, accounting, clipping.
"""

from privacy.accountants import (
    ACCOUNTANTS,
    Accountant,
    calibrate_noise_multiplier,
    compute_epsilon,
    make_accountant,
)
from privacy.budget import BudgetPolicy, PersistentAccountant
from privacy.errors import (
    BudgetExceeded,
    CalibrationError,
    InvalidParameterError,
    LedgerConfigError,
    LedgerIntegrityError,
    PrivacyError,
    UnsupportedEventError,
)
from privacy.events import (
    ComposedEvent,
    DistributedNoiseEvent,
    GaussianEvent,
    PrivacyEvent,
    SampledGaussianEvent,
    event_from_dict,
    event_from_json,
)
from privacy.ledger import Ledger, LedgerEntry, find_ledgers

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "BudgetExceeded",
    "BudgetPolicy",
    "CalibrationError",
    "ComposedEvent",
    "DistributedNoiseEvent",
    "GaussianEvent",
    "InvalidParameterError",
    "Ledger",
    "LedgerConfigError",
    "LedgerEntry",
    "LedgerIntegrityError",
    "PersistentAccountant",
    "PrivacyError",
    "PrivacyEvent",
    "SampledGaussianEvent",
    "UnsupportedEventError",
    "calibrate_noise_multiplier",
    "compute_epsilon",
    "event_from_dict",
    "event_from_json",
    "find_ledgers",
    "make_accountant",
]
