"""``fedvpa-secure audit PATH``: verify privacy ledgers and report epsilon per actor and round.

``PATH`` is one ``*.ledger.jsonl`` file or a run directory (every ledger below it). The checks
are :func:`privacy.audit.audit_path`: hash chain and seal, recorded epsilons recomputed with the
recorded accountant and cross-checked with an independent one from the other library, and the
budget of each genesis entry. This front end prints a rich table per ledger, writes
``eps_per_round.png`` (next to the ledger, in the run directory, or in ``--out``) and exits with
status 1 naming the file and entry of every finding; 0 when everything verifies. Unreadable input
(a path that does not exist, a directory without ledgers) is a usage error, exit status 2.

``fedvpa-secure audit --empirical --canaries M [--level record|user] [--dp/--no-dp] --out DIR``
is the empirical audit instead (PRIVACY.md section 5, :mod:`fedvpa_secure.commands.empirical`):
it trains with canaries, attacks, runs the one-run audit and its controls, writes
DIR/audit.json and DIR/roc.png, and exits 1 when a control fails or a DP run's audit
contradicts its accountant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedvpa_secure.errors import ConfigError, DataError

if TYPE_CHECKING:
    from privacy.audit import AuditReport, LedgerAudit
    from privacy.ledger import Genesis

PLOT_NAME = "eps_per_round.png"


def register(subparsers: Any) -> None:
    """Add the ``audit`` subcommand."""
    parser = subparsers.add_parser(
        "audit",
        help="verify a privacy ledger or a run directory",
        description=(
            "Verify every privacy ledger (*.ledger.jsonl) at PATH: hash chains, recorded epsilons "
            "(recomputed with the recorded and an independent accountant) and budgets."
        ),
    )
    parser.add_argument(
        "path",
        type=Path,
        metavar="PATH",
        nargs="?",
        default=None,
        help="a ledger file or a run directory (not with --empirical)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"directory for {PLOT_NAME} (default: the run directory or the ledger's directory)",
    )
    parser.add_argument(
        "--independent",
        choices=("rdp", "prv", "pld", "dpa-rdp"),
        default=None,
        help="independent accountant (default: a tight one from the other library)",
    )
    parser.add_argument(
        "--check-every",
        type=int,
        default=1,
        metavar="K",
        help="cross-check every K-th entry with the independent accountant (default 1)",
    )
    parser.add_argument("--no-plot", action="store_true", help=f"do not write {PLOT_NAME}")
    from fedvpa_secure.commands.empirical import add_arguments

    add_arguments(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Audit ``args.path``; return 0 if it verifies, 1 otherwise."""
    if getattr(args, "empirical", False):
        from fedvpa_secure.commands.empirical import run_empirical

        return run_empirical(args)
    from privacy.audit import audit_path
    from privacy.errors import PrivacyError
    from privacy.ledger import find_ledgers

    path: Path | None = args.path
    if path is None:
        raise DataError(
            "audit needs PATH (a *.ledger.jsonl file or a run directory), or --empirical"
        )
    if not path.exists():
        raise DataError(f"{path} does not exist; pass a *.ledger.jsonl file or a run directory")
    if args.check_every < 1:
        raise ConfigError(f"--check-every must be >= 1, got {args.check_every}")
    if not find_ledgers(path):
        raise DataError(f"no *.ledger.jsonl files under {path}")
    try:
        report = audit_path(path, independent=args.independent, check_every=args.check_every)
    except PrivacyError as err:
        raise ConfigError(str(err)) from None
    _print_report(report)
    if not args.no_plot:
        out_dir = args.out or (path if path.is_dir() else path.parent)
        written = write_plot(report, out_dir / PLOT_NAME)
        if written is not None:
            print(f"wrote {written}")
    if report.ok:
        print(f"audit passed: {len(report.ledgers)} ledger(s) verified")
        return 0
    for finding in report.findings:
        print(f"AUDIT FAILED: {finding}", file=sys.stderr)
    print(f"audit failed: {len(report.findings)} finding(s)", file=sys.stderr)
    return 1


def _fmt(value: float | None, spec: str = ".4g") -> str:
    return "-" if value is None else format(value, spec)


def _ledger_table(audit: LedgerAudit, g: Genesis) -> Any:
    from rich.table import Table

    title = (
        f"{g.actor} - {g.unit}-level DP, accountant {g.accountant}, delta {g.delta:g}, "
        f"budget epsilon <= {g.epsilon_max:g}\n{audit.path}"
    )
    table = Table(title=title, title_justify="left")
    for name in ("seq", "round", "mechanism", "label", "z", "q", "steps", "clip", "part."):
        table.add_column(name, justify="right" if name not in ("mechanism", "label") else "left")
    table.add_column("eps recorded", justify="right")
    table.add_column(f"eps {g.accountant} (recomputed)", justify="right")
    table.add_column(f"eps {audit.independent} (independent)", justify="right")
    table.add_column("status")
    for row in audit.rows:
        e = row.entry
        table.add_row(
            str(e.seq),
            str(e.round),
            e.mechanism,
            e.label or "",
            _fmt(e.noise_multiplier),
            _fmt(e.sample_rate),
            _fmt(e.steps, "d"),
            _fmt(e.clipping_norm),
            _fmt(e.participant_count, "d"),
            _fmt(e.epsilon_after),
            _fmt(row.epsilon_recomputed),
            _fmt(row.epsilon_independent),
            "[green]ok[/green]" if row.ok else "[red]FAIL[/red]",
        )
    return table


def _against(g: Genesis | None) -> str:
    """Whom the ledger's epsilon is a guarantee against.

    A client's user-level ledger composes its own rounds without amplification, so it holds
    against the server that saw it take part; the server's ledger records the same rounds (no
    amplification is claimed while the server picks the participants), which also bounds what
    users of the released model learn.
    """
    if g is None:
        return "?"
    if g.unit == "user":
        return "the server and model users" if g.actor == "server" else "the server"
    return "the server and model users"


def _print_report(report: AuditReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200, file=sys.stdout)
    for audit in report.ledgers:
        if audit.genesis is not None:
            console.print(_ledger_table(audit, audit.genesis))
    summary = Table(title=f"privacy ledgers under {report.root}", title_justify="left")
    columns = ("ledger", "actor", "unit", "against", "entries", "epsilon", "budget", "delta")
    for name in (*columns, "status"):
        summary.add_column(name)
    for audit in report.ledgers:
        g = audit.genesis
        summary.add_row(
            str(audit.path),
            g.actor if g else "?",
            g.unit if g else "?",
            _against(g),
            str(len(audit.rows)),
            _fmt(audit.epsilon),
            _fmt(g.epsilon_max if g else None),
            _fmt(g.delta if g else None, "g"),
            "[green]ok[/green]" if audit.ok else "[red]FAIL[/red]",
        )
    console.print(summary)


def write_plot(report: AuditReport, target: Path) -> Path | None:
    """Plot recorded epsilon per round, one line per actor, one panel per unit of privacy.

    Uses Matplotlib's object-oriented API with the Agg canvas, so it never touches the global
    backend. Returns the file written, or ``None`` when no ledger could be read.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    readable = [(a, a.genesis) for a in report.ledgers if a.genesis is not None]
    if not readable:
        return None
    units = sorted({g.unit for _, g in readable})
    fig = Figure(figsize=(7.5, 3.6 * len(units)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(units), 1, squeeze=False)[:, 0]
    for ax, unit in zip(axes, units, strict=True):
        budgets: set[tuple[float, float]] = set()
        ledgers = [(a, g) for a, g in readable if g.unit == unit]
        if not any(audit.rows for audit, _ in ledgers):
            # e.g. the server's user-level ledger of a run without user-level DP: say so rather
            # than draw an empty panel that reads like a plotting bug
            actors = ", ".join(g.actor for _, g in ledgers)
            ax.text(0.5, 0.5, f"no {unit}-level DP events recorded ({actors})", ha="center")
            ax.set_title(f"{unit}-level DP: epsilon after each round")
            ax.set_axis_off()
            continue
        for audit, g in ledgers:
            per_round: dict[int, float] = {}
            for row in audit.rows:
                per_round[row.entry.round] = row.entry.epsilon_after
            rounds = sorted(per_round)
            style = "-" if audit.ok else ":"
            label = g.actor if audit.ok else f"{g.actor} (FAILED)"
            ax.plot(rounds, [per_round[r] for r in rounds], style, marker="o", label=label)
            budgets.add((g.epsilon_max, g.delta))
        for eps_max, delta in sorted(budgets):
            ax.axhline(
                eps_max,
                color="red",
                linestyle="--",
                linewidth=1,
                label=f"budget {eps_max:g} (delta {delta:g})",
            )
        ax.set_title(f"{unit}-level DP: epsilon after each round")
        ax.set_xlabel("round")
        ax.set_ylabel("epsilon")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(ledgers) <= 12:
            ax.legend(fontsize="small")
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(target, dpi=110)
    return target
