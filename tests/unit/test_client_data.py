"""A client's own data: a simulate shard, or an HH-RLHF folder labelled as its user type."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from learner_kit import HH_RLHF as REAL

from fedvpa_secure.client.shards import load_client_data, write_shard
from fedvpa_secure.errors import ConfigError

pytestmark = pytest.mark.skipif(not REAL.is_dir(), reason=f"no HH-RLHF folder at {REAL}")
ROWS = 12


def _copy_rows(subset: str, dest: Path) -> None:
    """The first ROWS real rows of one subset, in the HH layout."""
    source = sorted((REAL / subset).glob("*.jsonl.gz"))[0]
    with gzip.open(source, "rt", encoding="utf-8") as handle:
        lines = [next(handle) for _ in range(ROWS)]
    (dest / subset).mkdir(parents=True)
    with gzip.open(dest / subset / source.name, "wt", encoding="utf-8") as handle:
        handle.writelines(lines)


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "my-data"
    _copy_rows("helpful-base", folder)
    _copy_rows("harmless-base", folder)
    return folder


def _preferred_text(pair) -> str:
    return pair.response_a if pair.preferred == 0 else pair.response_b


def test_p3_types_label_the_same_folder_as_the_protocol_says(user_folder: Path) -> None:
    harmless = load_client_data(user_folder, "c007", "p3", "harmless-first")
    helpful = load_client_data(user_folder, "c007", "p3", "helpful-first")
    assert len(harmless.pairs) == len(helpful.pairs) > 0
    by_id = {p.pair_id: p for p in helpful.pairs}
    flipped = kept = 0
    for pair in harmless.pairs:
        other = by_id[pair.pair_id]
        same = _preferred_text(pair) == _preferred_text(other)
        if pair.subset == "harmless-base":
            flipped += not same
            assert pair.conflicting
        else:
            kept += same
            assert not pair.conflicting
    # control: both subsets present, and only harmless-base preferences differ between types
    assert flipped > 0 and kept > 0
    assert flipped + kept == len(harmless.pairs)
    assert {p.user_type for p in helpful.pairs} == {"helpful-first"}


def test_display_order_is_seeded_by_client_id(user_folder: Path) -> None:
    a = load_client_data(user_folder, "c001", "p3", "harmless-first")
    b = load_client_data(user_folder, "c001", "p3", "harmless-first")
    c = load_client_data(user_folder, "c002", "p3", "harmless-first")
    assert [p.preferred for p in a.pairs] == [p.preferred for p in b.pairs]
    assert [p.preferred for p in a.pairs] != [p.preferred for p in c.pairs]


def test_p1_infers_the_type_when_every_pair_has_one_owner(tmp_path: Path) -> None:
    folder = tmp_path / "harmless-only"
    _copy_rows("harmless-base", folder)
    data = load_client_data(folder, "c000", "p1", None)
    assert data.user_type == "harmless" and len(data.pairs) == ROWS


@pytest.mark.parametrize(
    ("user_type", "message"),
    [(None, "--user-type"), ("dog-lover", "unknown for protocol p3")],
)
def test_bad_user_type_is_a_clear_error(user_folder: Path, user_type, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_client_data(user_folder, "c000", "p3", user_type)


def test_no_pair_for_the_type_is_a_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "helpful-only"
    _copy_rows("helpful-base", folder)
    with pytest.raises(ConfigError, match="has no pair a 'harmless' user holds"):
        load_client_data(folder, "c000", "p1", "harmless")


def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a folder"):
        load_client_data(tmp_path / "nope", "c000", "p3", "harmless-first")


def test_a_shard_folder_still_loads_as_written(user_folder: Path, tmp_path: Path) -> None:
    data = load_client_data(user_folder, "c003", "p3", "helpful-first")
    write_shard(data, tmp_path / "shard")
    again = load_client_data(tmp_path / "shard", "ignored", "p3", None)
    assert again == data
