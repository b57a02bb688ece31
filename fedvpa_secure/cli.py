"""The one ``fedvpa-secure`` command.

Each subcommand lives in its own module under :mod:`fedvpa_secure.commands` and exposes
``register(subparsers)``; it is imported lazily so that ``fedvpa-secure privacy epsilon`` does not
pay for importing torch and transformers. Errors the user can fix (:class:`FedVPAError`) are
printed as one clear message with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from fedvpa_secure.errors import FedVPAError

# subcommand name -> module that registers it (imported only when that subcommand runs)
SUBCOMMANDS: dict[str, str] = {
    "experiment": "fedvpa_secure.commands.experiment",
    "privacy": "fedvpa_secure.commands.privacy_cmd",
    "audit": "fedvpa_secure.commands.audit_cmd",
    "mia": "fedvpa_secure.commands.mia_cmd",
    "certs": "fedvpa_secure.commands.certs",
    "server": "fedvpa_secure.commands.server_cmd",
    "client": "fedvpa_secure.commands.client_cmd",
    "simulate": "fedvpa_secure.commands.simulate",
    "split": "fedvpa_secure.commands.split_cmd",
    "score": "fedvpa_secure.commands.score_cmd",
    "label": "fedvpa_secure.commands.label_cmd",
    "dpo": "fedvpa_secure.commands.dpo_cmd",
}

HELP: dict[str, str] = {
    "experiment": "run an in-process federated experiment and write a report",
    "privacy": "privacy accounting helpers (e.g. `privacy epsilon`)",
    "audit": "verify a privacy ledger or a run directory (or --empirical: canary audit)",
    "mia": "membership inference against a run's published global model",
    "certs": "make a CA, server/client certificates, identity keys and the registry",
    "server": "run the federation server (gRPC, mTLS, secure aggregation)",
    "client": "run one federation client process",
    "simulate": "certs + server + N client processes on loopback, then a report",
    "split": "split an HH-RLHF folder into training and --eval-data folders",
    "score": "rewards for responses from a trained model, for a user or a type",
    "label": "a per-user or per-type DPO dataset (prompt, chosen, rejected) from a trained model",
    "dpo": "align a policy by DPO on label's output (the align extra: TRL)",
}


def _version() -> str:
    """The installed package's version (pyproject.toml is where it is defined)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedvpa-secure")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """Build the parser; with ``only`` set, import just that subcommand's module."""
    parser = argparse.ArgumentParser(
        prog="fedvpa-secure",
        description="Private, personalised reward models over a secure federation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"fedvpa-secure {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=HELP.get(name, ""))
            continue
        importlib.import_module(module_name).register(sub)
    _show_defaults(parser)
    return parser


class DefaultsShown(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a flag's help where X says something: not for required
    flags, switches, ``None`` (the help text says what happens then) or help that names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "%(default)" in text
            or not action.option_strings
            or action.required
            or default is None
            or default is argparse.SUPPRESS
            or isinstance(default, bool)
        ):
            return text
        return f"{text} (default: %(default)s)"


def _show_defaults(parser: argparse.ArgumentParser) -> None:
    """Every subcommand's ``--help`` shows each flag's default (record-level DP is on by default,
    and a user should see that before running, not after)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if child.formatter_class is argparse.HelpFormatter:
                    child.formatter_class = DefaultsShown
                _show_defaults(child)


def _requested_subcommand(argv: Sequence[str]) -> str | None:
    for token in argv:
        if token in SUBCOMMANDS:
            return token
        if not token.startswith("-"):
            return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(only=_requested_subcommand(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except FedVPAError as err:
        print(f"fedvpa-secure {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
