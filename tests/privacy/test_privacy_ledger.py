"""Ledger: round trip, tamper evidence (edit, drop, reorder, truncate, splice), crash safety."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from privacy_testkit import read_lines, rewrite_consistently, write_lines

from privacy.errors import InvalidParameterError, LedgerConfigError, LedgerIntegrityError
from privacy.events import ComposedEvent, GaussianEvent, SampledGaussianEvent
from privacy.ledger import GENESIS_PREV_HASH, Ledger, find_ledgers

EVENT = SampledGaussianEvent(1.0, 0.1, 1)


def make_ledger(path: Path, entries: int = 4, **kwargs) -> Ledger:
    options = {
        "run_id": "run-1",
        "actor": "server",
        "unit": "user",
        "accountant": "rdp",
        "delta": 1e-5,
        "epsilon_max": 8.0,
    }
    options.update(kwargs)
    ledger = Ledger.create(path, **options)
    for r in range(entries):
        ledger.append(EVENT, round=r, epsilon_after=0.5 * (r + 1), participants=3)
    return ledger


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return make_ledger(tmp_path / "server.ledger.jsonl")


def integrity_error(path: Path) -> LedgerIntegrityError:
    with pytest.raises(LedgerIntegrityError) as info:
        Ledger.open(path)
    assert info.value.path == path
    return info.value


def test_round_trip(ledger: Ledger) -> None:
    reopened = Ledger.open(ledger.path)
    assert reopened.entries == ledger.entries
    assert reopened.head == ledger.head
    assert reopened.epsilon == 2.0
    assert [e.seq for e in reopened.entries] == [1, 2, 3, 4]
    assert reopened.entries[0].prev_hash == reopened.genesis.hash
    assert reopened.entries[2].participant_count == 3


def test_untouched_ledger_passes_control(ledger: Ledger) -> None:
    Ledger.open(ledger.path, expected_head=ledger.head)  # does not raise


def test_genesis_binds_run_and_budget(ledger: Ledger) -> None:
    g = Ledger.open(ledger.path).genesis
    assert (g.run_id, g.actor, g.unit, g.accountant, g.epsilon_max) == (
        "run-1",
        "server",
        "user",
        "rdp",
        8.0,
    )
    assert len(g.ledger_id) == 32
    first = json.loads(read_lines(ledger.path)[0])
    assert first["prev_hash"] == GENESIS_PREV_HASH


def test_entries_carry_the_spec_fields(ledger: Ledger) -> None:
    obj = json.loads(read_lines(ledger.path)[1])
    for key in (
        "seq",
        "time",
        "actor",
        "round",
        "mechanism",
        "event",
        "unit",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "clipping_norm",
        "participants",
        "accountant",
        "delta",
        "epsilon_after",
        "prev_hash",
        "hash",
    ):
        assert key in obj


def test_composed_event_has_no_flat_summary(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path / "c.ledger.jsonl", entries=0, unit="record", actor="c1")
    event = ComposedEvent((SampledGaussianEvent(1.0, 0.01, 5), GaussianEvent(9.0)))
    entry = ledger.append(event, round=0, epsilon_after=0.3, label="dp-sgd+prior")
    assert entry.noise_multiplier is None and entry.mechanism == "composed"
    assert Ledger.open(ledger.path).entries[0].event == event


def test_edited_entry_is_detected(ledger: Ledger) -> None:
    lines = read_lines(ledger.path)
    lines[2] = lines[2].replace(b'"epsilon_after":1.0', b'"epsilon_after":0.1')
    write_lines(ledger.path, lines)
    err = integrity_error(ledger.path)
    assert (err.seq, err.line) == (2, 3)
    assert "edited" in err.reason


def test_whitespace_edit_is_detected(ledger: Ledger) -> None:
    lines = read_lines(ledger.path)
    lines[1] = lines[1].replace(b'"round":0', b'"round": 0')
    write_lines(ledger.path, lines)
    assert integrity_error(ledger.path).seq == 1


def test_dropped_middle_entry_is_detected(ledger: Ledger) -> None:
    lines = read_lines(ledger.path)
    del lines[2]
    write_lines(ledger.path, lines)
    err = integrity_error(ledger.path)
    assert err.seq == 3 and "dropped" in err.reason


def test_dropped_last_entry_is_detected(ledger: Ledger) -> None:
    lines = read_lines(ledger.path)
    del lines[-2]  # the newest entry, keeping the seal
    write_lines(ledger.path, lines)
    err = integrity_error(ledger.path)
    assert err.seq == 3 and "dropped" in err.reason


def test_missing_seal_is_detected(ledger: Ledger) -> None:
    write_lines(ledger.path, read_lines(ledger.path)[:-1])
    err = integrity_error(ledger.path)
    assert "truncated" in err.reason and err.seq == 4


def test_reordered_entries_are_detected(ledger: Ledger) -> None:
    lines = read_lines(ledger.path)
    lines[2], lines[3] = lines[3], lines[2]
    write_lines(ledger.path, lines)
    err = integrity_error(ledger.path)
    assert (err.seq, err.line) == (3, 3) and "reordered" in err.reason


def test_torn_last_line_is_detected(ledger: Ledger) -> None:
    data = ledger.path.read_bytes()
    ledger.path.write_bytes(data[:-40])
    err = integrity_error(ledger.path)
    assert "torn" in err.reason


def test_truncated_entry_line_is_detected(ledger: Ledger) -> None:
    lines = read_lines(ledger.path)
    lines[-2] = lines[-2][:60] + b"\n"
    write_lines(ledger.path, lines)
    err = integrity_error(ledger.path)
    assert err.line == len(lines) - 1


def test_duplicated_entry_is_detected(ledger: Ledger) -> None:
    lines = read_lines(ledger.path)
    lines.insert(2, lines[1])
    write_lines(ledger.path, lines)
    assert "reordered" in integrity_error(ledger.path).reason


def test_entry_spliced_from_another_ledger_is_detected(ledger: Ledger, tmp_path: Path) -> None:
    other = make_ledger(tmp_path / "other.ledger.jsonl")
    lines = read_lines(ledger.path)
    lines[2] = read_lines(other.path)[2]  # same seq, valid own hash, other chain
    write_lines(ledger.path, lines)
    err = integrity_error(ledger.path)
    assert err.seq == 2 and "prev_hash" in err.reason


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "x.ledger.jsonl"
    path.write_bytes(b"")
    assert "empty" in integrity_error(path).reason


def test_consistent_rewrite_is_caught_by_a_published_head(ledger: Ledger) -> None:
    head = ledger.head

    def lower_epsilon(body: list[dict]) -> None:
        body[2]["epsilon_after"] = 0.01

    rewrite_consistently(ledger.path, lower_epsilon)
    Ledger.open(ledger.path)  # an unkeyed chain alone cannot see this ...
    with pytest.raises(LedgerIntegrityError, match="expected"):
        Ledger.open(ledger.path, expected_head=head)  # ... the published head can


def test_entry_contradicting_its_event_is_rejected(ledger: Ledger) -> None:
    def contradict(body: list[dict]) -> None:
        body[1]["noise_multiplier"] = 5.0  # summary column no longer matches the event

    rewrite_consistently(ledger.path, contradict)
    err = integrity_error(ledger.path)
    assert err.seq == 1 and "contradicts" in err.reason


def test_actor_change_mid_ledger_is_rejected(ledger: Ledger) -> None:
    def other_actor(body: list[dict]) -> None:
        body[3]["actor"] = "client-9"

    rewrite_consistently(ledger.path, other_actor)
    assert integrity_error(ledger.path).seq == 3


def test_create_refuses_to_overwrite(ledger: Ledger) -> None:
    with pytest.raises(LedgerConfigError, match="already exists"):
        make_ledger(ledger.path, entries=0)
    Ledger.open(ledger.path)


@pytest.mark.parametrize("name", ["server.jsonl", "server.ledger.json", ".ledger.jsonl"])
def test_ledger_file_naming_rule(tmp_path: Path, name: str) -> None:
    with pytest.raises(InvalidParameterError, match=r"ledger\.jsonl"):
        make_ledger(tmp_path / name, entries=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"round": 1, "epsilon_after": 3.0},  # round goes back
        {"round": 5, "epsilon_after": -1.0},
        {"round": 5, "epsilon_after": float("inf")},
        {"round": 5, "epsilon_after": 3.0, "participants": "abc"},
        {"round": 5, "epsilon_after": 3.0, "participants": [1, 2]},
        {"round": 5, "epsilon_after": 3.0, "clipping_norm": 0.0},
        {"round": -1, "epsilon_after": 3.0},
    ],
)
def test_invalid_append_writes_nothing(ledger: Ledger, kwargs: dict) -> None:
    before = ledger.path.read_bytes()
    with pytest.raises(InvalidParameterError):
        ledger.append(EVENT, **kwargs)
    assert ledger.path.read_bytes() == before
    assert len(ledger) == 4


def test_crash_during_append_leaves_the_previous_ledger(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = ledger.path.read_bytes()

    def crash(*_args, **_kwargs):
        raise OSError("simulated power loss")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power loss"):
        ledger.append(EVENT, round=4, epsilon_after=2.5)
    monkeypatch.undo()
    assert ledger.path.read_bytes() == before
    assert len(Ledger.open(ledger.path)) == 4 and len(ledger) == 4
    assert find_ledgers(ledger.path.parent) == [ledger.path]  # no temp file looks like a ledger
    ledger.append(EVENT, round=4, epsilon_after=2.5)  # and the writer carries on
    assert len(Ledger.open(ledger.path)) == 5


def test_concurrent_writer_is_detected(ledger: Ledger) -> None:
    second = Ledger.open(ledger.path)
    second.append(EVENT, round=4, epsilon_after=2.5)
    with pytest.raises(LedgerIntegrityError, match="changed on disk"):
        ledger.append(EVENT, round=4, epsilon_after=2.5)
    assert len(Ledger.open(ledger.path)) == 5


def test_find_ledgers_in_nested_run_directory(tmp_path: Path) -> None:
    a = make_ledger(tmp_path / "run" / "server.ledger.jsonl", entries=1)
    b = make_ledger(tmp_path / "run" / "clients" / "deep" / "c.ledger.jsonl", entries=1)
    (tmp_path / "run" / "notes.jsonl").write_text("{}\n")
    assert find_ledgers(tmp_path / "run") == sorted([a.path, b.path])
