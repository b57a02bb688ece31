"""Loading HH-RLHF folders and the hub, bad input, and choosing the data source."""

from __future__ import annotations

import gzip
import json
import os
import sys
import types
from pathlib import Path

import pytest
from learner_kit import HH_RLHF as REAL

from fedvpa_secure.data import hh_rlhf, source
from fedvpa_secure.data.dialogue import pair_id
from fedvpa_secure.data.hh_rlhf import RawDataset, load_folder, load_hub
from fedvpa_secure.data.source import SYNTHETIC, resolve_source
from fedvpa_secure.errors import ConfigError, DataError

needs_real = pytest.mark.skipif(not REAL.is_dir(), reason=f"no HH-RLHF folder at {REAL}")


def dialogue(*turns: str) -> str:
    speakers = ("Human", "Assistant")
    return "".join(f"\n\n{speakers[i % 2]}: {text}" for i, text in enumerate(turns))


def hh_row(question: str, good: str, bad: str) -> dict:
    return {"chosen": dialogue(question, good), "rejected": dialogue(question, bad)}


def relabeled_row(
    question: str, responses: list[str], label: int, original: int, objective: str
) -> dict:
    prompt = f"Human: {question}"
    return {
        "chosen": f"{prompt}\n\nAssistant: {responses[label]}",
        "rejected": f"{prompt}\n\nAssistant: {responses[1 - label]}",
        "prompt": prompt,
        "responses": responses,
        "label": label,
        "original_label": original,
        "data_subset": "harmless",
        "objective": objective,
        "Index": 7,
    }


def write_jsonl(path: Path, lines: list[object]) -> Path:
    """Write rows (dicts are JSON-encoded, strings written as they are) gzip-compressed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join((json.dumps(x) if not isinstance(x, str) else x) + "\n" for x in lines)
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "hh"
    write_jsonl(
        root / "helpful-base/a.jsonl.gz",
        [hh_row(f"Q{i}?", f"good {i}", f"bad {i}") for i in range(3)],
    )
    write_jsonl(root / "helpful-base/b.jsonl.gz", [hh_row("Qb?", "good b", "bad b")])
    write_jsonl(
        root / "harmless-base/train.jsonl.gz", [hh_row("Hurt?", "No.", "Sure, here's how.")]
    )
    write_jsonl(
        root / "relabeled-dpl/test.jsonl.gz",
        [
            relabeled_row(
                "Hurt?", ["Sure, here's how.", "No."], label=0, original=1, objective="helpful"
            )
        ],
    )
    (root / "red-team-attempts").mkdir()  # another format: must be ignored by default
    return root


def test_folder_loads_every_file_of_every_known_subset_in_order(folder: Path) -> None:
    data = load_folder(folder)
    assert data.counts() == {"helpful-base": 4, "harmless-base": 1, "relabeled-dpl": 1}
    helpful = data.by_subset()["helpful-base"]
    assert [p.chosen for p in helpful] == ["good 0", "good 1", "good 2", "good b"]
    assert helpful[0].source == "helpful-base/a.jsonl.gz:1"
    assert helpful[3].source == "helpful-base/b.jsonl.gz:1"
    assert str(folder) in data.description


def test_relabeled_row_keeps_its_fields_and_the_id_of_the_original_pair(folder: Path) -> None:
    data = load_folder(folder)
    relabeled = data.by_subset()["relabeled-dpl"][0]
    original = data.by_subset()["harmless-base"][0]
    assert relabeled.chosen == "Sure, here's how."  # responses[label]
    assert relabeled.prompt == original.prompt == "Human: Hurt?"
    assert (
        relabeled.pair_id == original.pair_id == pair_id("Human: Hurt?", "No.", "Sure, here's how.")
    )
    assert dict(relabeled.extra) == {
        "label": 0,
        "original_label": 1,
        "objective": "helpful",
        "data_subset": "harmless",
        "Index": 7,
    }
    assert original.extra == {}


def test_cap_keeps_the_first_pairs_of_each_subset_across_files(folder: Path) -> None:
    data = load_folder(folder, max_pairs_per_subset=2)
    assert [p.chosen for p in data.by_subset()["helpful-base"]] == ["good 0", "good 1"]
    assert data.counts()["harmless-base"] == 1
    assert "first 2 per subset" in data.description


def test_subset_selection_and_plain_jsonl(tmp_path: Path) -> None:
    root = tmp_path / "hh"
    (root / "harmless-base").mkdir(parents=True)
    (root / "harmless-base/x.jsonl").write_text(json.dumps(hh_row("Q?", "a", "b")) + "\n\n")
    write_jsonl(root / "helpful-base/x.jsonl.gz", [hh_row("Q?", "a", "b")])
    assert load_folder(root, subsets=["harmless-base"]).counts() == {"harmless-base": 1}
    with pytest.raises(DataError, match=r"no subset folder \['helpful-online'\]"):
        load_folder(root, subsets=["helpful-online"])


def test_identical_responses_are_dropped_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "hh"
    write_jsonl(
        root / "helpful-base/x.jsonl.gz", [hh_row("Q?", "same", "same"), hh_row("Q?", "a", "b")]
    )
    data = load_folder(root)
    assert len(data.pairs) == 1
    assert data.skipped == {"identical responses": 1}
    assert len(load_folder(root, drop_identical=False).pairs) == 2


def test_bad_cap_is_a_config_error(folder: Path) -> None:
    with pytest.raises(ConfigError, match="max_pairs_per_subset"):
        load_folder(folder, max_pairs_per_subset=0)


# --- bad input: every error names the file (and line) and says what to do -----------------


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist.*--data"):
        load_folder(tmp_path / "nope")


def test_folder_without_subsets(tmp_path: Path) -> None:
    (tmp_path / "something-else").mkdir()
    with pytest.raises(DataError, match="no HH-RLHF subset folder"):
        load_folder(tmp_path)


def test_subset_folder_without_files(tmp_path: Path) -> None:
    (tmp_path / "helpful-base").mkdir()
    with pytest.raises(DataError, match=r"helpful-base has no \*\.jsonl\.gz"):
        load_folder(tmp_path)


@pytest.mark.parametrize("content", [b"", b"\n\n"])
def test_empty_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "helpful-base/empty.jsonl.gz"
    path.parent.mkdir()
    with gzip.open(path, "wb") as handle:
        handle.write(content)
    with pytest.raises(DataError, match=r"empty\.jsonl\.gz: the file is empty"):
        load_folder(tmp_path)


def test_zero_byte_gzip_file(tmp_path: Path) -> None:
    (tmp_path / "helpful-base").mkdir()
    (tmp_path / "helpful-base/zero.jsonl.gz").write_bytes(b"")
    with pytest.raises(DataError, match=r"zero\.jsonl\.gz"):
        load_folder(tmp_path)


def test_corrupt_gzip_file(tmp_path: Path) -> None:
    (tmp_path / "helpful-base").mkdir()
    (tmp_path / "helpful-base/bad.jsonl.gz").write_bytes(b"this is not gzip data at all")
    with pytest.raises(DataError, match=r"bad\.jsonl\.gz: cannot be read"):
        load_folder(tmp_path)


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "helpful-base/x.jsonl.gz", [hh_row("Q?", "a", "b"), '{"chosen": "oops']
    )
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON.*fix or remove"):
        load_folder(tmp_path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([1, 2], "expected a JSON object"),
        ({"chosen": dialogue("Q?", "a")}, "field 'rejected' is missing"),
        (
            {"chosen": 3, "rejected": dialogue("Q?", "a")},
            "field 'chosen' is missing or not a string",
        ),
        (
            {"chosen": "\n\nHuman: Q?", "rejected": "\n\nHuman: Q?"},
            "has no '\\\\n\\\\nAssistant:' turn",
        ),
        (hh_row("Q1?", "a", "b") | {"rejected": dialogue("Q2?", "b")}, "do not share a prompt"),
    ],
)
def test_bad_row_names_file_and_line(tmp_path: Path, row: object, message: str) -> None:
    path = write_jsonl(
        tmp_path / "harmless-base/x.jsonl.gz", [hh_row("Q?", "a", "b"), hh_row("Q?", "c", "d"), row]
    )
    with pytest.raises(DataError, match=message) as info:
        load_folder(tmp_path)
    assert str(info.value).startswith(f"{path}:3:")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"label": 2}, "'original_label' in"),
        ({"responses": ["only one"]}, "two strings"),
        ({"objective": ""}, "objective"),
        ({"label": 1}, "inconsistent"),  # chosen no longer equals responses[label]
    ],
)
def test_bad_relabeled_row(tmp_path: Path, change: dict, message: str) -> None:
    row = relabeled_row("Q?", ["A", "B"], label=0, original=0, objective="helpful") | change
    path = write_jsonl(tmp_path / "relabeled-dpl/x.jsonl.gz", [row])
    with pytest.raises(DataError, match=message) as info:
        load_folder(tmp_path)
    assert str(info.value).startswith(f"{path}:1:")


def test_relabeled_row_missing_fields(tmp_path: Path) -> None:
    row = relabeled_row("Q?", ["A", "B"], label=0, original=0, objective="helpful")
    del row["original_label"]
    write_jsonl(tmp_path / "relabeled-dpl/x.jsonl.gz", [row])
    with pytest.raises(
        DataError, match=r"x\.jsonl\.gz:1: relabeled row lacks \['original_label'\]"
    ):
        load_folder(tmp_path)


# --- the hub ------------------------------------------------------------------------------


def fake_datasets(monkeypatch: pytest.MonkeyPatch, load_dataset: object) -> list[dict]:
    calls: list[dict] = []

    def recording(*args: object, **kwargs: object) -> object:
        calls.append({"args": args, **kwargs})
        return load_dataset(*args, **kwargs)  # type: ignore[operator]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=recording))
    return calls


def test_hub_offline_fails_with_a_clear_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*_args: object, **_kwargs: object) -> object:
        raise ConnectionError(
            "Couldn't reach 'Anthropic/hh-rlhf' on the Hub (OfflineModeIsEnabled)"
        )

    fake_datasets(monkeypatch, offline)
    with pytest.raises(
        DataError, match=r"could not load 'Anthropic/hh-rlhf'.*Offline\?.*--data FOLDER"
    ):
        load_hub()


def test_hub_rows_are_parsed_per_subset_and_split(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(hub_id: str, *, data_dir: str, split: str) -> list[dict]:
        return [hh_row(f"{data_dir} {split} {i}?", "good", "bad") for i in range(3)]

    calls = fake_datasets(monkeypatch, load_dataset)
    data = load_hub(subsets=["helpful-base", "harmless-base"], max_pairs_per_subset=4)
    assert data.counts() == {"helpful-base": 4, "harmless-base": 4}
    assert data.pairs[3].prompt == "Human: helpful-base test 0?"
    assert data.pairs[0].source == "hub:Anthropic/hh-rlhf/helpful-base:train:0"
    assert {(c["data_dir"], c["split"]) for c in calls} == {
        (s, split) for s in ("helpful-base", "harmless-base") for split in ("train", "test")
    }


@pytest.mark.skipif(
    os.environ.get("HF_HUB_OFFLINE") != "1", reason="real hub call only when offline mode is set"
)
def test_real_datasets_library_offline_gives_data_error() -> None:
    with pytest.raises(DataError, match="could not load"):
        load_hub(subsets=["helpful-base"], splits=["test"])


# --- resolve_source -----------------------------------------------------------------------


def test_flag_folder_wins_over_env(folder: Path, tmp_path: Path) -> None:
    data, description = resolve_source(str(folder), env={"HH_RLHF_DIR": str(tmp_path / "missing")})
    assert isinstance(data, RawDataset)
    assert description == data.description and str(folder) in description


def test_flag_synthetic(folder: Path) -> None:
    data, description = resolve_source("synthetic", env={"HH_RLHF_DIR": str(folder)})
    assert data is SYNTHETIC
    assert "synthetic" in description


def test_flag_naming_a_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        resolve_source(str(tmp_path / "missing"), env={})


def test_flag_hub_id_goes_to_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_datasets(monkeypatch, lambda *_a, **_k: [hh_row("Q?", "a", "b")])
    for flag in ("hub", "hub:Anthropic/hh-rlhf", "Anthropic/hh-rlhf"):
        data, description = resolve_source(flag, env={}, subsets=["helpful-base"])
        assert isinstance(data, RawDataset) and description.startswith("hub Anthropic/hh-rlhf")
    assert len(calls) == 6  # 3 flags x (train, test)


def test_env_variable_is_used_and_named(folder: Path) -> None:
    data, description = resolve_source(
        None, env={"HH_RLHF_DIR": str(folder)}, max_pairs_per_subset=1
    )
    assert isinstance(data, RawDataset)
    assert data.counts()["helpful-base"] == 1
    assert "HH_RLHF_DIR" in description


def test_env_variable_with_a_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        resolve_source(None, env={"HH_RLHF_DIR": str(tmp_path / "missing")})


def test_hub_is_used_when_nothing_else_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_datasets(monkeypatch, lambda *_a, **_k: [hh_row("Q?", "a", "b")])
    data, description = resolve_source(None, env={"HF_HUB_OFFLINE": "1"}, subsets=["helpful-base"])
    assert isinstance(data, RawDataset)
    assert description.startswith("hub Anthropic/hh-rlhf")


def test_unreachable_hub_falls_back_to_synthetic_and_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def offline(*_args: object, **_kwargs: object) -> object:
        raise ConnectionError("no network")

    fake_datasets(monkeypatch, offline)
    data, description = resolve_source(None, env={"HF_HUB_OFFLINE": "1"})
    assert data is SYNTHETIC
    assert "synthetic" in description and "no network" in description


def test_hub_probe_failure_skips_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> object:
        raise OSError("Name or service not known")

    def must_not_load(*_args: object, **_kwargs: object) -> object:
        raise AssertionError("the hub must not be tried after a failed probe")

    monkeypatch.setattr(source.socket, "create_connection", refuse)
    fake_datasets(monkeypatch, must_not_load)
    data, description = resolve_source(None, env={})
    assert data is SYNTHETIC
    assert "huggingface.co unreachable" in description


def test_try_hub_false_goes_straight_to_synthetic() -> None:
    data, description = resolve_source(None, env={}, try_hub=False)
    assert data is SYNTHETIC and "hub not tried" in description


# --- the real shared folder ---------------------------------------------------------------


@needs_real
def test_real_folder_with_cap_loads_every_subset() -> None:
    data = load_folder(REAL, max_pairs_per_subset=50)
    assert set(data.counts()) == set(hh_rlhf.KNOWN_SUBSETS)
    assert all(n == 50 for n in data.counts().values())
    for pair in data.pairs:
        assert pair.prompt.startswith("Human:") and "\n\nAssistant:" not in pair.prompt[-12:]
        assert pair.chosen != pair.rejected


@needs_real
def test_real_relabeled_rows_match_the_hh_pairs_they_relabel() -> None:
    """relabeled-dpl's own prompt/responses fields agree with our dialogue split, and the ids
    coincide with the helpful-base/harmless-base test pairs they were drawn from."""
    data = load_folder(REAL, subsets=["helpful-base", "harmless-base", "relabeled-dpl"])
    groups = data.by_subset()
    hh_ids = {p.pair_id for s in ("helpful-base", "harmless-base") for p in groups[s]}
    relabeled = groups["relabeled-dpl"]
    matched = sum(p.pair_id in hh_ids for p in relabeled)
    assert matched / len(relabeled) > 0.99
    assert all(p.extra["objective"] in ("helpful", "harmless") for p in relabeled)
