"""Train/eval splits by first Human turn: on disk and in memory."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from learner_kit import HH_RLHF as REAL

from fedvpa_secure.data.dialogue import first_human_turn
from fedvpa_secure.data.hh_rlhf import load_folder
from fedvpa_secure.data.split import split_folder, split_pairs
from fedvpa_secure.errors import ConfigError, DataError

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"no HH-RLHF folder at {REAL}")


def dialogue(*turns: str) -> str:
    speakers = ("Human", "Assistant")
    return "".join(f"\n\n{speakers[i % 2]}: {text}" for i, text in enumerate(turns))


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def read_lines(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return handle.read().splitlines()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """40 openers, each continued in two subsets and as a multi-turn dialogue."""
    root = tmp_path / "src"
    helpful, harmless = [], []
    for i in range(40):
        opener = f"Question number {i}?"
        helpful.append({"chosen": dialogue(opener, "good"), "rejected": dialogue(opener, "bad")})
        multi = (opener, "first answer", f"follow-up {i}")
        helpful.append({"chosen": dialogue(*multi, "yes"), "rejected": dialogue(*multi, "no")})
        harmless.append(
            {"chosen": dialogue(opener, "safe"), "rejected": dialogue(opener, "unsafe")}
        )
    write_jsonl(root / "helpful-base/train.jsonl.gz", helpful)
    write_jsonl(root / "harmless-base/test.jsonl.gz", harmless)
    return root


def openers(folder: Path) -> set[str]:
    return {first_human_turn(p.prompt) for p in load_folder(folder).pairs}


def test_split_folder_keeps_layout_and_shares_no_opener(folder: Path, tmp_path: Path) -> None:
    report = split_folder(folder, tmp_path / "train", tmp_path / "eval", 0.3, seed=1)
    for side in ("train", "eval"):
        files = sorted(p.relative_to(tmp_path / side) for p in (tmp_path / side).rglob("*.gz"))
        assert [str(f) for f in files] == [
            "harmless-base/test.jsonl.gz",
            "helpful-base/train.jsonl.gz",
        ]
    assert not openers(tmp_path / "train") & openers(tmp_path / "eval")
    assert openers(tmp_path / "train") | openers(tmp_path / "eval") == openers(folder)
    assert (
        report.train_rows["helpful-base/train.jsonl.gz"]
        + report.eval_rows["helpful-base/train.jsonl.gz"]
        == 80
    )
    # A multi-turn continuation follows its opener: per opener, 2 helpful rows on one side.
    assert (
        report.eval_rows["helpful-base/train.jsonl.gz"]
        == 2 * report.eval_rows["harmless-base/test.jsonl.gz"]
    )
    assert 4 <= report.eval_rows["harmless-base/test.jsonl.gz"] <= 20


def test_split_copies_lines_unchanged_and_is_reproducible(folder: Path, tmp_path: Path) -> None:
    split_folder(folder, tmp_path / "a_train", tmp_path / "a_eval", 0.5, seed=3)
    split_folder(folder, tmp_path / "b_train", tmp_path / "b_eval", 0.5, seed=3)
    name = "helpful-base/train.jsonl.gz"
    assert (tmp_path / "a_train" / name).read_bytes() == (tmp_path / "b_train" / name).read_bytes()
    original = read_lines(folder / name)
    written = read_lines(tmp_path / "a_train" / name) + read_lines(tmp_path / "a_eval" / name)
    assert sorted(written) == sorted(original)


def test_other_seed_gives_another_split(folder: Path, tmp_path: Path) -> None:
    split_folder(folder, tmp_path / "t1", tmp_path / "e1", 0.5, seed=1)
    split_folder(folder, tmp_path / "t2", tmp_path / "e2", 0.5, seed=2)
    assert openers(tmp_path / "e1") != openers(tmp_path / "e2")


def test_in_memory_split_matches_the_folder_split(folder: Path, tmp_path: Path) -> None:
    split_folder(folder, tmp_path / "train", tmp_path / "eval", 0.3, seed=9)
    train, evaluation = split_pairs(load_folder(folder).pairs, 0.3, seed=9)
    assert [p.pair_id for p in evaluation] == [
        p.pair_id for p in load_folder(tmp_path / "eval").pairs
    ]
    assert {p.pair_id for p in train} == {p.pair_id for p in load_folder(tmp_path / "train").pairs}


def test_empty_side_is_not_written(tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_jsonl(
        src / "helpful-base/one.jsonl.gz",
        [{"chosen": dialogue("Q?", "a"), "rejected": dialogue("Q?", "b")}],
    )
    report = split_folder(src, tmp_path / "train", tmp_path / "eval", 0.5, seed=0)
    written = [
        side
        for side in ("train", "eval")
        if (tmp_path / side / "helpful-base/one.jsonl.gz").exists()
    ]
    assert len(written) == 1
    assert len(report.omitted) == 1 and report.omitted[0].endswith("helpful-base/one.jsonl.gz")


def test_refuses_to_overwrite_and_bad_arguments(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "train/keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        split_folder(folder, tmp_path / "train", tmp_path / "eval", 0.3, seed=0)
    split_folder(folder, tmp_path / "train", tmp_path / "eval", 0.3, seed=0, overwrite=True)
    with pytest.raises(ConfigError, match="three different folders"):
        split_folder(folder, tmp_path / "x", tmp_path / "x", 0.3, seed=0)
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="eval_fraction"):
            split_folder(folder, tmp_path / "y", tmp_path / "z", fraction, seed=0)
    with pytest.raises(DataError, match="not a folder"):
        split_folder(tmp_path / "missing", tmp_path / "y", tmp_path / "z", 0.3, seed=0)


def test_malformed_source_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "src/helpful-base/x.jsonl.gz"
    path.parent.mkdir(parents=True)
    good = {"chosen": dialogue("Q?", "a"), "rejected": dialogue("Q?", "b")}
    with gzip.open(path, "wt") as handle:
        handle.write(json.dumps(good) + "\nnot json\n")
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON"):
        split_folder(tmp_path / "src", tmp_path / "t", tmp_path / "e", 0.3, seed=0)


@needs_real
def test_real_split_shares_no_opener_across_subsets(tmp_path: Path) -> None:
    """relabeled-dpl copies of harmless-base pairs must land on the same side as the originals."""
    subsets = ["harmless-base", "relabeled-dpl"]
    split_folder(REAL, tmp_path / "train", tmp_path / "eval", 0.25, seed=0, subsets=subsets)
    train, evaluation = load_folder(tmp_path / "train"), load_folder(tmp_path / "eval")
    train_openers = {first_human_turn(p.prompt) for p in train.pairs}
    eval_openers = {first_human_turn(p.prompt) for p in evaluation.pairs}
    assert not train_openers & eval_openers
    assert not {p.pair_id for p in train.pairs} & {p.pair_id for p in evaluation.pairs}
    share = len(evaluation.pairs) / (len(train.pairs) + len(evaluation.pairs))
    assert 0.18 < share < 0.32


def test_split_command_writes_the_library_split_and_refuses_to_overwrite(tmp_path, capsys):
    from fedvpa_secure.cli import main

    src = tmp_path / "src"
    write_jsonl(
        src / "helpful-base" / "test.jsonl.gz",
        [
            {"chosen": dialogue(f"q{i}", "yes"), "rejected": dialogue(f"q{i}", "no")}
            for i in range(40)
        ],
    )
    argv = ["split", str(src), "--train", str(tmp_path / "t"), "--eval", str(tmp_path / "e")]
    assert main(argv) == 0
    assert "evaluation rows" in capsys.readouterr().out
    split_folder(src, tmp_path / "lib_t", tmp_path / "lib_e", 0.3, 0)  # the command's defaults
    for side, lib in (("t", "lib_t"), ("e", "lib_e")):
        got = (tmp_path / side / "helpful-base" / "test.jsonl.gz").read_bytes()
        assert got == (tmp_path / lib / "helpful-base" / "test.jsonl.gz").read_bytes()
    assert main(argv) == 2  # the folders are not empty now
    assert "exists and is not empty" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
