"""Verify privacy ledgers: hash chains, recorded epsilons, budgets.

For every ledger file (one path, or every ``*.ledger.jsonl`` under a run directory) the audit

1. verifies the hash chain and seal (:meth:`privacy.ledger.Ledger.open`); a failure names the
   file, the entry's seq and the line, and stops the audit of that file;
2. replays the events into the accountant named in the genesis entry and requires every
   recorded ``epsilon_after`` to match (relative tolerance :data:`SAME_KIND_RTOL`): this catches
   edited epsilons and events whose hashes were recomputed;
3. recomputes epsilon with an **independent** accountant from the other library
   (:data:`INDEPENDENT_OF`) and cross-checks it (:func:`cross_check`); this catches an accountant
   that under-reports;
4. checks every epsilon against the budget ``epsilon_max`` in the genesis entry.

The result is a plain data structure (:class:`AuditReport`); printing and plotting live in the
command line front end so that this module needs nothing but the ``privacy`` package.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from privacy.accountants import ACCOUNTANTS, canonical_name, make_accountant
from privacy.budget import epsilon_matches
from privacy.errors import LedgerIntegrityError, PrivacyError
from privacy.ledger import ACROSS_RUNS_PREFIX, Genesis, Ledger, LedgerEntry, find_ledgers

SAME_KIND_RTOL = 1e-3
"""Recorded vs recomputed epsilon with the same accountant: identical code on identical events
gives identical numbers; the tolerance only absorbs a library upgrade."""

INDEPENDENT_OF = {"rdp": "pld", "dpa-rdp": "prv", "prv": "pld", "pld": "prv"}
"""The independent accountant for each recorded one: always from the other library, and always a
tight (numerical) accountant, so an RDP claim is checked against a near-exact value."""

CROSS_RTOL = 0.02
CROSS_ATOL = 0.02
"""Cross-check tolerance. PRV and PLD agree within 1% plus PRV's ``eps_error`` (0.01, reported
as an upper bound) over q in [0.001, 1], sigma in [0.6, 5], 1-1000 steps; the two RDP codes
agree within 0.1%. 2% + 0.02 leaves margin for library changes and still catches real errors."""


@dataclasses.dataclass(frozen=True)
class Finding:
    """One problem, located as precisely as possible."""

    path: Path
    seq: int | None
    line: int | None
    message: str

    def __str__(self) -> str:
        where = [str(self.path)]
        if self.seq is not None:
            where.append(f"seq {self.seq}")
        if self.line is not None:
            where.append(f"line {self.line}")
        return f"{', '.join(where)}: {self.message}"


@dataclasses.dataclass(frozen=True)
class AuditRow:
    """One ledger entry with its recorded and recomputed epsilons."""

    entry: LedgerEntry
    epsilon_recomputed: float
    epsilon_independent: float | None
    ok: bool


@dataclasses.dataclass(frozen=True)
class LedgerAudit:
    """The audit of one ledger file."""

    path: Path
    genesis: Genesis | None
    independent: str | None
    rows: tuple[AuditRow, ...]
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        """True when nothing was found."""
        return not self.findings

    @property
    def epsilon(self) -> float | None:
        """Final recorded epsilon, if the ledger could be read."""
        if self.genesis is None:
            return None
        return self.rows[-1].entry.epsilon_after if self.rows else 0.0


@dataclasses.dataclass(frozen=True)
class AuditReport:
    """The audit of a ledger file or a run directory."""

    root: Path
    ledgers: tuple[LedgerAudit, ...]
    cross_ledger: tuple[Finding, ...] = ()

    @property
    def findings(self) -> tuple[Finding, ...]:
        """All findings, ledger by ledger, then those about the run as a whole."""
        return tuple(f for ledger in self.ledgers for f in ledger.findings) + self.cross_ledger

    @property
    def ok(self) -> bool:
        """True when at least one ledger was audited and nothing was found."""
        return bool(self.ledgers) and not self.findings


def cross_check(
    recorded_name: str, recorded: float, independent_name: str, independent: float
) -> str | None:
    """Compare a recorded epsilon with an independent accountant's; ``None`` when consistent.

    * Both of one family (tight/tight or RDP/RDP): must agree within the tolerance.
    * RDP recorded, tight independent: RDP is an upper bound, so the tight value must not exceed
      it (beyond the tolerance); a larger RDP value is just conservative.
    * Tight recorded, RDP independent: the recorded value must not exceed the RDP bound.
    """
    rec_tight = ACCOUNTANTS[canonical_name(recorded_name)].tight
    ind_tight = ACCOUNTANTS[canonical_name(independent_name)].tight
    slack_rec = CROSS_RTOL * recorded + CROSS_ATOL
    slack_ind = CROSS_RTOL * independent + CROSS_ATOL
    if rec_tight == ind_tight:
        if abs(recorded - independent) <= max(slack_rec, slack_ind):
            return None
        relation = "disagrees with"
    elif not rec_tight:
        if independent <= recorded + slack_rec:
            return None
        relation = "is below the tight bound of"
    else:
        if recorded <= independent + slack_ind:
            return None
        relation = "exceeds the RDP upper bound of"
    return (
        f"recorded epsilon {recorded:.6g} ({recorded_name}) {relation} the independent "
        f"{independent_name} accountant: {independent:.6g}"
    )


def audit_ledger(
    path: Path | str,
    *,
    independent: str | None = None,
    check_every: int = 1,
    expected_head: str | None = None,
) -> LedgerAudit:
    """Audit one ledger file (see the module docstring).

    Args:
        path: The ledger file.
        independent: Override the independent accountant (default :data:`INDEPENDENT_OF`).
        check_every: Cross-check every k-th entry (and always the last); PRV/PLD cost ~0.1-1 s
            per recomputation, so very long ledgers may want k > 1. Same-kind recomputation and
            budget checks always cover every entry.
        expected_head: Optional published head hash to pin the ledger.
    """
    path = Path(path)
    try:
        ledger = Ledger.open(path, expected_head=expected_head)
    except LedgerIntegrityError as err:
        finding = Finding(err.path or path, err.seq, err.line, err.reason)
        return LedgerAudit(path, None, None, (), (finding,))
    genesis = ledger.genesis
    same = make_accountant(genesis.accountant)
    indep_name = canonical_name(independent or INDEPENDENT_OF[genesis.accountant])
    indep = make_accountant(indep_name)
    rows: list[AuditRow] = []
    findings: list[Finding] = []
    over_budget_reported = False
    entries = ledger.entries
    for index, entry in enumerate(entries):
        problems: list[str] = []
        same.compose(entry.event)
        indep.compose(entry.event)
        try:
            recomputed = same.get_epsilon(genesis.delta)
        except PrivacyError as err:
            recomputed = float("nan")
            problems.append(f"cannot recompute epsilon with {genesis.accountant}: {err}")
        else:
            if not epsilon_matches(entry.epsilon_after, recomputed, SAME_KIND_RTOL):
                problems.append(
                    f"recorded epsilon_after {entry.epsilon_after:.6g} does not match "
                    f"{recomputed:.6g} recomputed with the recorded accountant "
                    f"({genesis.accountant}) from the events"
                )
        independent_eps = None
        if index == len(entries) - 1 or (index + 1) % max(1, check_every) == 0:
            try:
                independent_eps = indep.get_epsilon(genesis.delta)
            except PrivacyError as err:
                problems.append(f"cannot cross-check with {indep_name}: {err}")
            else:
                problem = cross_check(
                    genesis.accountant, entry.epsilon_after, indep_name, independent_eps
                )
                if problem:
                    problems.append(problem)
        worst = entry.epsilon_after
        if not math.isnan(recomputed):
            worst = max(worst, recomputed)
        if worst > genesis.epsilon_max and not over_budget_reported:
            over_budget_reported = True
            problems.append(
                f"budget overrun: epsilon {worst:.6g} exceeds epsilon_max "
                f"{genesis.epsilon_max:g} (delta={genesis.delta:g}) of the genesis entry"
            )
        findings.extend(Finding(path, entry.seq, None, p) for p in problems)
        rows.append(AuditRow(entry, recomputed, independent_eps, not problems))
    return LedgerAudit(path, genesis, indep_name, tuple(rows), tuple(findings))


def audit_path(
    path: Path | str, *, independent: str | None = None, check_every: int = 1
) -> AuditReport:
    """Audit a ledger file or every ``*.ledger.jsonl`` under a run directory.

    Also flags ledgers of one directory that claim different ``run_id`` s (ledgers that span
    runs, :data:`ACROSS_RUNS_PREFIX`, aside), and duplicate ``ledger_id`` s (a ledger copied over
    another actor's).
    """
    root = Path(path)
    audits = [
        audit_ledger(p, independent=independent, check_every=check_every)
        for p in find_ledgers(root)
    ]
    extra: list[Finding] = []
    readable = [(a.path, a.genesis) for a in audits if a.genesis is not None]
    # a ledger that spans runs (ACROSS_RUNS_PREFIX) may sit in any run's directory
    run_ids = sorted({g.run_id for _, g in readable if not g.run_id.startswith(ACROSS_RUNS_PREFIX)})
    if len(run_ids) > 1:
        extra.append(Finding(root, None, None, f"ledgers belong to different runs: {run_ids}"))
    seen: dict[str, Path] = {}
    for ledger_path, g in readable:
        if g.ledger_id in seen:
            extra.append(
                Finding(
                    ledger_path, 0, 1, f"ledger_id {g.ledger_id} also used by {seen[g.ledger_id]}"
                )
            )
        seen[g.ledger_id] = ledger_path
    return AuditReport(root, tuple(audits), tuple(extra))
