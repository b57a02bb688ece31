"""benchmarks/best_of_n.py end to end at toy sizes: real HH-RLHF rows, real MiniLM, two real
trained runs (FedVPA-GP and monolithic, protocol p3), candidates from the tiny causal LM.

The numbers mean nothing at this size; the test checks the wiring: every comparison is reported
per type and prompt collection with an interval, the gold-best pick is an upper bound on every
selector's win over a random candidate, the plot is written and candidates are reused.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from fedvpa_secure.cli import main as cli_main

REPO = Path(__file__).resolve().parents[2]
HH = REPO.parent / "shared" / "data" / "hh-rlhf"
CACHE = str(REPO / ".cache" / "embeddings")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HH.is_dir(), reason="needs the HH-RLHF copy in ../shared/data"),
]


def _copy_rows(source: Path, target: Path, start: int, count: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(source, "rt") as handle:
        rows = handle.read().splitlines()[start : start + count]
    with gzip.open(target, "wt") as handle:
        handle.write("\n".join(rows) + "\n")


def _load_bench():
    spec = importlib.util.spec_from_file_location("best_of_n", REPO / "benchmarks/best_of_n.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bon")
    for subset in ("harmless-base", "helpful-base"):
        _copy_rows(
            HH / subset / "train_first500.jsonl.gz", root / "train" / subset / "t.jsonl.gz", 0, 80
        )
        _copy_rows(HH / subset / "test_dev.jsonl.gz", root / "eval" / subset / "e.jsonl.gz", 0, 220)
    runs = {}
    for method in ("fedvpa-gp", "monolithic"):
        runs[method] = root / method
        code = cli_main([
            "experiment", "--data", str(root / "train"), "--eval-data", str(root / "eval"),
            "--protocol", "p3", "--method", method, "--clients", "4", "--pairs-per-client", "24",
            "--eval-clients", "2", "--eval-pairs-per-client", "24", "--rounds", "2",
            "--local-steps", "2", "--context-size", "8", "--query-size", "8",
            "--eval-context-size", "8", "--device", "cpu", "--cache-dir", CACHE,
            "--out", str(runs[method]),
        ])  # fmt: skip
        assert code == 0
    return {"root": root, **runs}


def test_best_of_n_reports_every_comparison_with_intervals(folders, capsys) -> None:
    bench = _load_bench()
    out = folders["root"] / "bon"
    argv = [
        "--eval-data", str(folders["root"] / "eval"), "--fedvpa", str(folders["fedvpa-gp"]),
        "--monolithic", str(folders["monolithic"]), "--out", str(out), "--generator",
        "tiny-causal", "--n", "4", "--max-new-tokens", "6", "--harmless-prompts", "6",
        "--helpful-prompts", "3", "--users", "2", "--context-size", "16", "--cache-dir", CACHE,
    ]  # fmt: skip
    assert bench.main(argv) == 0
    results = json.loads((out / "best_of_n.json").read_text())
    assert results["prompts"] == {"harmless": 6, "helpful": 3}
    assert (out / "best_of_n.png").stat().st_size > 10_000
    (seed,) = results["seeds"]
    assert set(seed["win_rates"]) == {"harmless-first", "helpful-first"}
    for by_domain in seed["win_rates"].values():
        for rows in by_domain.values():
            assert list(rows) == list(bench.COMPARISONS)
            for name, row in rows.items():
                if row is None:  # only where the tiny run named no prototype per type
                    assert name.startswith("prototype")
                    assert all(v is None for v in seed["profile_names_own_type"].values())
                    continue
                assert 0.0 <= row["low"] <= row["mean"] <= row["high"] <= 1.0
            ceiling = rows["gold best vs random"]["mean"]
            for name in ("prototype vs random", "unseen user vs random", "monolithic vs random"):
                assert rows[name] is None or rows[name]["mean"] <= ceiling + 1e-9
    for user_type, accuracy in results["gold_held_out_accuracy"].items():
        assert set(accuracy) >= {"harmless", "helpful"}, user_type
    table = capsys.readouterr().out
    assert "| 0 | harmless-first | harmless (6) |" in table
    # a second run reuses the sampled candidates instead of generating them again
    assert bench.main([*argv, "--candidates-only"]) == 0
    assert "reusing the candidates" in capsys.readouterr().err


def test_prompts_gold_pairs_and_user_contexts_share_no_conversation_opener(folders) -> None:
    from fedvpa_secure.data.dialogue import first_human_turn

    bench = _load_bench()
    pool = bench.split_pool(str(folders["root"] / "eval"), 0.3)
    openers = {
        name: {first_human_turn(c.raw.prompt) for c in part}
        for name, part in (
            ("prompts", pool.prompts),
            ("gold", pool.gold),
            ("context", pool.context),
        )
    }
    assert all(openers.values())
    assert not openers["prompts"] & openers["gold"]
    assert not openers["prompts"] & openers["context"]
    assert not openers["gold"] & openers["context"]
    chosen = bench.choose_prompts(pool.prompts, {"harmless": 3})
    assert {first_human_turn(p) for p, _ in chosen} <= openers["prompts"]
    with pytest.raises(bench.FedVPAError, match="raise --prompt-fraction"):
        bench.choose_prompts(pool.prompts, {"harmless": 10_000})


def test_swapped_runs_are_refused_before_any_sampling(folders) -> None:
    bench = _load_bench()
    with pytest.raises(bench.FedVPAError, match="were they swapped"):
        bench.load_selectors(str(folders["monolithic"]), str(folders["fedvpa-gp"]), CACHE)
