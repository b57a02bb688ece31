"""argparse value types that refuse a bad number at the flag the user typed.

Without them a negative epsilon or a zero deadline travels into a config file and comes back as
an error about an internal field (``dp.epsilon_max=-1.0``) from a child process; with them
argparse answers ``argument --user-dp-epsilon: expected a number >= 0, got '-1'`` at once.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(kind: type, test: Callable[[float], bool], expected: str) -> Callable[[str], float]:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not (math.isfinite(value) and test(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    parse.__name__ = expected  # argparse names the type in some messages
    return parse


non_negative_float = _number(float, lambda v: v >= 0, "a number >= 0")
positive_float = _number(float, lambda v: v > 0, "a number > 0")
probability = _number(float, lambda v: 0 < v < 1, "a number in (0, 1)")
positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
