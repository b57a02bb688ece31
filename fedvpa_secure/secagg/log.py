"""The package logger.

One logger for the whole secure-aggregation core, so an application can route or silence it in one
place. Call sites pass lazy ``%``-arguments (``LOGGER.info("round %s", rid)``) and never log key
material, seeds, shares, or unmasked vectors: only ids, counts, stages and reasons.
"""

from __future__ import annotations

import logging

LOGGER = logging.getLogger("fedvpa_secure.secagg")
