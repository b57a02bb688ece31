"""The two command line front ends, through the real ``fedvpa-secure`` entry point.

``privacy epsilon`` prints the number last; ``audit`` must pass an untouched run (control) and
exit non-zero naming file and entry for every kind of tampering, forged epsilon, accountant bug
and budget overrun.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from privacy_testkit import read_lines, rewrite_consistently, write_lines

from fedvpa_secure.cli import main
from privacy import BudgetPolicy, PersistentAccountant, accountants
from privacy.accountants import OpacusRDPAccountant, compute_epsilon
from privacy.audit import CROSS_ATOL, audit_path, cross_check
from privacy.events import SampledGaussianEvent
from privacy.ledger import ACROSS_RUNS_PREFIX, Ledger

REPO = Path(__file__).resolve().parents[2]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- privacy epsilon ------------------------------------------------------------------------


@pytest.mark.parametrize("accountant", ["rdp", "prv", "pld", "dpa-rdp"])
def test_epsilon_prints_the_number_last(capsys, accountant: str) -> None:
    code, out, _ = run_cli(
        capsys,
        *("privacy", "epsilon", "--sample-rate", "0.01", "--noise-multiplier", "1.0"),
        *("--steps", "1000", "--delta", "1e-5", "--accountant", accountant),
    )
    assert code == 0
    value = float(out.strip().splitlines()[-1])
    expected = compute_epsilon(SampledGaussianEvent(1.0, 0.01, 1000), 1e-5, accountant)
    assert value == pytest.approx(expected, rel=1e-5)
    if accountant == "rdp":
        assert value == pytest.approx(2.10, rel=0.03)


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--sample-rate", "0"),
        ("--sample-rate", "1.5"),
        ("--sample-rate", "nan"),
        ("--noise-multiplier", "-1"),
        ("--noise-multiplier", "0"),
        ("--noise-multiplier", "inf"),
        ("--steps", "0"),
        ("--delta", "1"),
        ("--delta", "0"),
    ],
)
def test_epsilon_bad_values_give_a_clear_error(capsys, flag: str, value: str) -> None:
    args = {"--sample-rate": "0.01", "--noise-multiplier": "1", "--steps": "10", "--delta": "1e-5"}
    args[flag] = value
    argv = ["privacy", "epsilon"] + [x for kv in args.items() for x in kv]
    code, out, err = run_cli(capsys, *argv)
    assert code == 2
    assert flag in err and "Traceback" not in err
    assert out == ""


def test_unknown_accountant_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(
            [
                "privacy",
                "epsilon",
                "-q",
                "0.1",
                "-z",
                "1",
                "-T",
                "1",
                "--delta",
                "1e-5",
                "--accountant",
                "gdp",
            ]
        )
    assert info.value.code == 2


def test_noise_multiplier_prints_the_number_last(capsys) -> None:
    code, out, _ = run_cli(
        capsys,
        "privacy",
        "noise-multiplier",
        "--target-epsilon",
        "8",
        "-q",
        "0.01",
        "-T",
        "1000",
        "--delta",
        "1e-5",
    )
    assert code == 0
    assert float(out.strip().splitlines()[-1]) == pytest.approx(0.616, rel=0.01)


def test_console_entry_point_in_a_subprocess() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedvpa_secure.cli",
            "privacy",
            "epsilon",
            "--sample-rate",
            "0.1",
            "--noise-multiplier",
            "1.0",
            "--steps",
            "100",
            "--delta",
            "1e-5",
            "--accountant",
            "pld",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip().splitlines()[-1]) == pytest.approx(7.06, rel=0.03)


# --- audit -------------------------------------------------------------------------------------


def test_untouched_run_passes_and_plots(capsys, run_dir) -> None:
    code, out, err = run_cli(capsys, "audit", str(run_dir["root"]))
    assert code == 0, err
    assert "audit passed: 3 ledger(s)" in out
    for actor in ("server", "client-0", "client-1"):
        assert actor in out
    png = run_dir["root"] / "eps_per_round.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_single_ledger_and_out_directory(capsys, run_dir, tmp_path: Path) -> None:
    code, _, _ = run_cli(capsys, "audit", str(run_dir["client-0"]))
    assert code == 0
    assert (run_dir["client-0"].parent / "eps_per_round.png").exists()
    code, _, _ = run_cli(capsys, "audit", str(run_dir["root"]), "--out", str(tmp_path / "plots"))
    assert code == 0
    assert (tmp_path / "plots" / "eps_per_round.png").exists()


def _edit(lines: list[bytes]) -> None:
    lines[2] = lines[2].replace(b'"round":1', b'"round":0')


def _drop(lines: list[bytes]) -> None:
    del lines[2]


def _reorder(lines: list[bytes]) -> None:
    lines[1], lines[2] = lines[2], lines[1]


def _truncate(lines: list[bytes]) -> None:
    lines[-1] = lines[-1][:25]


def _drop_last_entry(lines: list[bytes]) -> None:
    del lines[-2]


def _drop_seal(lines: list[bytes]) -> None:
    del lines[-1]


@pytest.mark.parametrize(
    ("tamper", "seq", "words"),
    [
        (_edit, 2, "edited"),
        (_drop, 3, "dropped"),
        (_reorder, 2, "reordered"),
        (_truncate, None, "torn"),
        (_drop_last_entry, 2, "dropped"),
        (_drop_seal, 3, "truncated"),
    ],
    ids=["edit", "drop", "reorder", "truncate", "drop-last", "drop-seal"],
)
def test_tampering_fails_the_audit_and_names_the_entry(
    capsys, run_dir, tamper, seq: int | None, words: str
) -> None:
    target = run_dir["client-1"]
    lines = read_lines(target)
    tamper(lines)
    write_lines(target, lines)
    code, out, err = run_cli(capsys, "audit", str(run_dir["root"]))
    assert code == 1
    failed = [line for line in err.splitlines() if line.startswith("AUDIT FAILED")]
    assert len(failed) == 1
    assert str(target) in failed[0] and words in failed[0]
    if seq is not None:
        assert f"seq {seq}" in failed[0]
    assert "line " in failed[0]
    assert "client-0" in out  # the intact ledgers are still reported


def test_forged_epsilon_with_recomputed_hashes_fails(capsys, run_dir) -> None:
    def understate(body: list[dict]) -> None:
        body[2]["epsilon_after"] = round(body[2]["epsilon_after"] / 2, 6)

    rewrite_consistently(run_dir["server"], understate)
    code, _, err = run_cli(capsys, "audit", str(run_dir["server"]))
    assert code == 1
    assert f"{run_dir['server']}, seq 2: recorded epsilon_after" in err
    assert "does not match" in err


def test_budget_overrun_fails(capsys, tmp_path: Path) -> None:
    # A writer that ignored its budget: every epsilon is honest, the third crosses epsilon_max.
    event = SampledGaussianEvent(1.0, 0.1, 1)
    ledger = Ledger.create(
        tmp_path / "greedy.ledger.jsonl",
        run_id="r",
        actor="server",
        unit="user",
        accountant="dpa-rdp",
        delta=1e-5,
        epsilon_max=2.5,
    )
    for r in range(4):
        eps = compute_epsilon([event] * (r + 1), 1e-5, "dpa-rdp")
        ledger.append(event, round=r, epsilon_after=eps)
    code, _, err = run_cli(capsys, "audit", str(ledger.path))
    assert code == 1
    assert f"{ledger.path}, seq 3: budget overrun" in err  # the third entry
    assert err.count("budget overrun") == 1


def test_under_reporting_accountant_is_caught_by_the_independent_one(
    capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from privacy_testkit import build_run

    honest = OpacusRDPAccountant._epsilon
    monkeypatch.setattr(accountants, "_CACHE", {})
    monkeypatch.setattr(
        OpacusRDPAccountant, "_epsilon", lambda self, c, d: 0.5 * honest(self, c, d)
    )
    paths = build_run(tmp_path / "buggy", rounds=2)  # recorded with the buggy RDP code
    code, _, err = run_cli(capsys, "audit", str(paths["server"]))
    assert code == 1  # same-kind recomputation agrees (same bug); PLD does not
    assert "independent pld accountant" in err and "seq 1" in err


def test_cross_check_rules() -> None:
    assert cross_check("rdp", 2.6, "pld", 2.39) is None  # RDP above tight: conservative
    assert cross_check("rdp", 1.0, "pld", 2.0) is not None  # RDP below tight: a bug
    assert cross_check("prv", 2.40, "pld", 2.39) is None
    assert cross_check("prv", 2.0, "pld", 2.39) is not None
    assert cross_check("pld", 3.0, "dpa-rdp", 2.6) is not None  # tight above RDP: a bug
    assert cross_check("dpa-rdp", 2.6, "rdp", 2.6 + CROSS_ATOL / 2) is None


def test_independent_accountant_can_be_chosen(capsys, run_dir) -> None:
    code, out, _ = run_cli(
        capsys, "audit", str(run_dir["server"]), "--independent", "dpa-rdp", "--no-plot"
    )
    assert code == 0
    assert "dpa-rdp (independent)" in out
    assert not (run_dir["root"] / "eps_per_round.png").exists()


def test_copied_ledger_is_flagged(capsys, run_dir) -> None:
    shutil.copy(run_dir["client-0"], run_dir["root"] / "clients" / "client-9.ledger.jsonl")
    code, _, err = run_cli(capsys, "audit", str(run_dir["root"]))
    assert code == 1 and "also used by" in err


@pytest.mark.parametrize("what", ["missing", "empty-dir"])
def test_unreadable_input_is_a_usage_error(capsys, tmp_path: Path, what: str) -> None:
    path = tmp_path / ("nope" if what == "missing" else "empty")
    if what == "empty-dir":
        path.mkdir()
    code, _, err = run_cli(capsys, "audit", str(path))
    assert code == 2 and "Traceback" not in err
    assert str(path) in err


def test_audit_needs_only_the_privacy_package(run_dir) -> None:
    report = audit_path(run_dir["root"])
    assert report.ok
    assert {a.genesis.actor for a in report.ledgers if a.genesis} == {
        "server",
        "client-0",
        "client-1",
    }
    server = next(a for a in report.ledgers if a.genesis and a.genesis.actor == "server")
    assert server.independent == "pld"
    assert [row.entry.round for row in server.rows] == [0, 1, 2]
    assert json.loads(read_lines(run_dir["server"])[1])["participants"] == [
        "client-0",
        "client-1",
    ]


def test_distributed_noise_ledger_audits(capsys, tmp_path: Path) -> None:
    from privacy.budget import BudgetPolicy, PersistentAccountant
    from privacy.distributed import calibrate_distributed_noise

    plan = calibrate_distributed_noise(
        target_epsilon=4.0,
        delta=1e-5,
        sample_rate=0.1,
        rounds=3,
        l2_sensitivity=30.0,
        dim=10_000,
        min_survivors=8,
        max_summands=10,
    )
    server = PersistentAccountant.open(
        tmp_path / "server.ledger.jsonl",
        run_id="ddp",
        actor="server",
        unit="user",
        budget=BudgetPolicy(4.0, 1e-5),
    )
    for r in range(3):
        server.record(plan.round_event(), round=r, participants=10, clipping_norm=1.0)
    assert server.epsilon == pytest.approx(plan.epsilon, rel=1e-9)
    code, out, err = run_cli(capsys, "audit", str(tmp_path), "--check-every", "2")
    assert code == 0, err
    assert "distributed_noise" in out


@pytest.mark.parametrize("across_runs", [True, False], ids=["across-runs", "control-other-run"])
def test_a_ledger_of_another_run_is_flagged_unless_it_spans_runs(
    capsys, run_dir, across_runs: bool
) -> None:
    """A client's own user-level ledger spans every run of its data and may sit in any run's
    folder; any other ledger of another run is a mix-up (the control)."""
    run_id = f"{ACROSS_RUNS_PREFIX}client-0" if across_runs else "run-2"
    PersistentAccountant.open(
        run_dir["root"] / "clients" / "client-0.user.ledger.jsonl",
        run_id=run_id,
        actor="client-0",
        unit="user",
        budget=BudgetPolicy(8.0, 1e-5),
        accountant="rdp",
    )
    code, _, err = run_cli(capsys, "audit", str(run_dir["root"]), "--no-plot")
    if across_runs:
        assert code == 0, err
    else:
        assert code == 1 and "different runs" in err
