"""The project's error hierarchy.

Every error a user can trigger derives from :class:`FedVPAError`, so the CLI can print its message
(which says what was wrong and what to do) instead of a traceback. Integrity failures are one
opaque type on purpose: telling an attacker *which* check failed helps them forge the next try.
"""

from __future__ import annotations


class FedVPAError(Exception):
    """Root of every error this project raises on purpose."""


class ConfigError(FedVPAError, ValueError):
    """A configuration value is out of range or inconsistent; the message names field and value."""


class DataError(FedVPAError, ValueError):
    """Input data is missing or malformed; the message names the file, the line and the fix."""


class ProtocolError(FedVPAError):
    """A peer sent a message that is illegal at this stage, malformed, or inconsistent."""


class AbortRound(ProtocolError):
    """The current round must stop with no output (threshold lost or a check failed)."""


class IntegrityError(FedVPAError):
    """A signature, MAC, hash chain or public-key check failed. Deliberately uninformative."""


class BudgetExceededError(FedVPAError):
    """Running the next step would cross a privacy budget."""
