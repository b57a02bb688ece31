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
* :mod:`privacy.mia` - membership inference: loss threshold, offline LiRA, exact ROC, AUC +- SE.
* :mod:`privacy.one_run_audit` - one-run epsilon lower bound (Steinke et al. 2023), CP check.
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
from privacy.mia import (
    AttackResult,
    RocCurve,
    auc_score,
    auc_standard_error,
    evaluate_attack,
    lira_offline_scores,
    loss_threshold_scores,
    roc_curve,
)
from privacy.one_run_audit import (
    OneRunAudit,
    ThresholdCheck,
    check_dp_thresholds,
    epsilon_lower_bound,
)

__all__ = [
    "ACCOUNTANTS",
    "Accountant",
    "AttackResult",
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
    "OneRunAudit",
    "PersistentAccountant",
    "PrivacyError",
    "PrivacyEvent",
    "RocCurve",
    "SampledGaussianEvent",
    "ThresholdCheck",
    "UnsupportedEventError",
    "auc_score",
    "auc_standard_error",
    "calibrate_noise_multiplier",
    "check_dp_thresholds",
    "compute_epsilon",
    "epsilon_lower_bound",
    "evaluate_attack",
    "event_from_dict",
    "event_from_json",
    "find_ledgers",
    "lira_offline_scores",
    "loss_threshold_scores",
    "make_accountant",
    "roc_curve",
]
