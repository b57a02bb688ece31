"""``fedvpa-secure privacy``: privacy accounting helpers.

``privacy epsilon`` prints the epsilon of ``steps`` Poisson-subsampled Gaussian steps (DP-SGD
steps on a client, or server rounds with client sampling) with a chosen accountant; the last
line of its output is the number alone, for scripts. ``privacy noise-multiplier`` inverts it.
All arithmetic lives in the standalone :mod:`privacy` package; this module only parses, checks
arguments with messages that name the flag, and maps :class:`privacy.errors.PrivacyError` to the
project's :class:`~fedvpa_secure.errors.ConfigError` (exit status 2, no traceback).
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from fedvpa_secure.errors import ConfigError

ACCOUNTANT_CHOICES = ("rdp", "prv", "pld", "dpa-rdp")
ACCOUNTANT_HELP = (
    "rdp: Opacus RDP (default); prv: Opacus PRV; pld: dp-accounting PLD; dpa-rdp: dp-accounting RDP"
)


def register(subparsers: Any) -> None:
    """Add the ``privacy`` subcommand and its actions."""
    parser = subparsers.add_parser(
        "privacy",
        help="privacy accounting helpers (e.g. `privacy epsilon`)",
        description="Privacy accounting for the Poisson-subsampled Gaussian mechanism.",
    )
    actions = parser.add_subparsers(dest="privacy_action", metavar="ACTION")
    parser.set_defaults(func=lambda _args: _print_help(parser))

    eps = actions.add_parser(
        "epsilon",
        help="epsilon after T subsampled Gaussian steps",
        description="Print epsilon; the last output line is the number alone.",
    )
    _add_mechanism_arguments(eps)
    eps.add_argument("--noise-multiplier", "-z", type=float, required=True, metavar="Z")
    eps.set_defaults(func=run_epsilon)

    noise = actions.add_parser(
        "noise-multiplier",
        help="smallest noise multiplier for a target epsilon",
        description="Print the calibrated noise multiplier; the last line is the number alone.",
    )
    _add_mechanism_arguments(noise)
    noise.add_argument("--target-epsilon", type=float, required=True, metavar="EPS")
    noise.set_defaults(func=run_noise_multiplier)


def _add_mechanism_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sample-rate", "-q", type=float, required=True, metavar="Q", help="in (0, 1]"
    )
    parser.add_argument("--steps", "-T", type=int, required=True, metavar="T", help=">= 1")
    parser.add_argument("--delta", type=float, required=True, metavar="D", help="in (0, 1)")
    parser.add_argument(
        "--accountant", choices=ACCOUNTANT_CHOICES, default="rdp", help=ACCOUNTANT_HELP
    )


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _check(args: argparse.Namespace) -> None:
    q, steps, delta = args.sample_rate, args.steps, args.delta
    if not (math.isfinite(q) and 0.0 < q <= 1.0):
        raise ConfigError(f"--sample-rate must be in (0, 1], got {q}")
    if steps < 1:
        raise ConfigError(f"--steps must be an integer >= 1, got {steps}")
    if not (math.isfinite(delta) and 0.0 < delta < 1.0):
        raise ConfigError(f"--delta must be in (0, 1), got {delta}")


def run_epsilon(args: argparse.Namespace) -> int:
    """``privacy epsilon``: print epsilon, last line the number alone."""
    from privacy.accountants import make_accountant
    from privacy.errors import PrivacyError
    from privacy.events import SampledGaussianEvent

    _check(args)
    z = args.noise_multiplier
    if not (math.isfinite(z) and z > 0.0):
        raise ConfigError(f"--noise-multiplier must be a finite number > 0, got {z}")
    try:
        event = SampledGaussianEvent(z, args.sample_rate, args.steps)
        epsilon = make_accountant(args.accountant).compose(event).get_epsilon(args.delta)
    except PrivacyError as err:
        raise ConfigError(str(err)) from None
    print(
        f"accountant={args.accountant} sample_rate={args.sample_rate:g} "
        f"noise_multiplier={z:g} steps={args.steps} delta={args.delta:g}"
    )
    print(f"{epsilon:.6g}")
    return 0


def run_noise_multiplier(args: argparse.Namespace) -> int:
    """``privacy noise-multiplier``: print the calibrated sigma, last line the number alone."""
    from privacy.accountants import calibrate_noise_multiplier
    from privacy.errors import PrivacyError

    _check(args)
    target = args.target_epsilon
    if not (math.isfinite(target) and target > 0.0):
        raise ConfigError(f"--target-epsilon must be a finite number > 0, got {target}")
    try:
        z = calibrate_noise_multiplier(
            target_epsilon=target,
            delta=args.delta,
            sample_rate=args.sample_rate,
            steps=args.steps,
            accountant=args.accountant,
        )
    except PrivacyError as err:
        raise ConfigError(str(err)) from None
    print(
        f"accountant={args.accountant} target_epsilon={target:g} sample_rate="
        f"{args.sample_rate:g} steps={args.steps} delta={args.delta:g}"
    )
    print(f"{z:.6g}")
    return 0
