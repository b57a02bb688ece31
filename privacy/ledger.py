"""Append-only, hash-chained privacy ledger in JSON lines.

One ledger file per actor (the server, or one client) and guarantee, named ``*.ledger.jsonl``; a
run directory may hold any number of them at any depth. Line 1 is the *genesis* entry, which binds
a random ``ledger_id``, the ``run_id``, the actor, the unit of privacy (``record`` or ``user``),
the accountant, delta and the budget ``epsilon_max``. Each following line is one *event* entry:

``{seq, time, actor, round, unit, mechanism, event, noise_multiplier, sample_rate, steps,
clipping_norm, participants, accountant, delta, epsilon_after, label, prev_hash, hash}``

``hash`` is SHA-256 over the canonical JSON of the entry without ``hash`` (sorted keys, no
spaces, ASCII, shortest round-trip floats) and ``prev_hash`` is the previous entry's hash
(64 zeros for the genesis), so editing, dropping, inserting or reordering any entry breaks the
chain at that entry. Every line must *be* its canonical JSON, so even a whitespace edit shows.

The last line is a *seal* ``{kind: "seal", seq, head, hash}`` naming the last entry. Because the
file is rewritten atomically (below), a correctly written ledger always ends with a seal and a
newline; a missing seal or a seal that names an earlier entry means trailing entries were cut,
and a last line without a newline is a torn write. Neither is ever silently accepted.

Crash safety: append writes the *whole* new file to a temporary file in the same directory,
fsyncs it, ``os.replace`` s it over the ledger (atomic on POSIX) and fsyncs the directory. A crash
leaves either the old or the new ledger, never a half-written line, so resume needs no repair.
Before writing, the current file is re-read and must equal what this process last wrote or read:
a concurrent writer or an edit between appends is detected instead of overwritten. The cost is
O(file size) per append, a few hundred bytes per round. One writer per ledger file.

Limits, stated plainly: the chain is unkeyed. It proves integrity against accidents and naive
edits, and pins history once the head hash is known to someone else; a party with write access
who rewrites an entry *and* recomputes every later hash and the seal is only caught by comparing
:attr:`Ledger.head` with a copy published elsewhere (``expected_head``) and by the audit's
independent recomputation of epsilon.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import math
import numbers
import os
import secrets
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from privacy.accountants import canonical_name, check_delta
from privacy.errors import InvalidParameterError, LedgerConfigError, LedgerIntegrityError
from privacy.events import PrivacyEvent, event_from_dict

FORMAT_VERSION = 1
LEDGER_SUFFIX = ".ledger.jsonl"
GENESIS_PREV_HASH = "0" * 64
ACROSS_RUNS_PREFIX = "across-runs:"
"""A ``run_id`` starting with this marks a ledger that accounts for one data owner across every
run its data takes part in (a client's own user-level budget), not for one run."""
UNITS = ("record", "user")

_GENESIS_KEYS = frozenset(
    {
        "v",
        "kind",
        "seq",
        "time",
        "ledger_id",
        "run_id",
        "actor",
        "unit",
        "accountant",
        "delta",
        "epsilon_max",
        "prev_hash",
        "hash",
    }
)
_EVENT_KEYS = frozenset(
    {
        "v",
        "kind",
        "seq",
        "time",
        "actor",
        "round",
        "unit",
        "mechanism",
        "event",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "clipping_norm",
        "participants",
        "accountant",
        "delta",
        "epsilon_after",
        "label",
        "prev_hash",
        "hash",
    }
)
_SEAL_KEYS = frozenset({"v", "kind", "seq", "head", "hash"})


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """The one byte form of a JSON object that is hashed and written."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def entry_hash(obj: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the canonical JSON of ``obj`` without its ``hash`` key."""
    body = {k: v for k, v in obj.items() if k != "hash"}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def _time_text(now: _dt.datetime | str | None) -> str:
    if now is None:
        return _utc_now()
    if isinstance(now, _dt.datetime):
        if now.tzinfo is None:
            raise InvalidParameterError("time must be timezone-aware (UTC)")
        return now.astimezone(_dt.UTC).isoformat(timespec="microseconds")
    return str(now)


@dataclasses.dataclass(frozen=True)
class Genesis:
    """The first entry: what the ledger is about and the budget it is held to."""

    ledger_id: str
    run_id: str
    actor: str
    unit: str
    accountant: str
    delta: float
    epsilon_max: float
    time: str
    hash: str


@dataclasses.dataclass(frozen=True)
class LedgerEntry:
    """One recorded event and the epsilon spent after it."""

    seq: int
    time: str
    actor: str
    round: int
    unit: str
    mechanism: str
    event: PrivacyEvent
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int | None
    clipping_norm: float | None
    participants: int | tuple[str, ...] | None
    accountant: str
    delta: float
    epsilon_after: float
    label: str | None
    prev_hash: str
    hash: str

    @property
    def participant_count(self) -> int | None:
        """Number of participants, whether recorded as ids or as a count."""
        if self.participants is None or isinstance(self.participants, int):
            return self.participants
        return len(self.participants)


def _fail(path: Path, message: str, *, seq: int | None = None, line: int | None = None) -> NoReturn:
    raise LedgerIntegrityError(message, path=path, seq=seq, line=line)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_participants(value: Any) -> int | tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise InvalidParameterError(f"participants must be >= 0, got {value}")
        return value
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise InvalidParameterError(
            f"participants must be a count or a list of ids, got {type(value).__name__}"
        )
    ids = tuple(value)
    if not all(isinstance(v, str) for v in ids):
        raise InvalidParameterError("participant ids must be strings")
    return ids


def _check_name(what: str, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 200:
        raise InvalidParameterError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _parse_json_line(raw: bytes, path: Path, line: int) -> dict[str, Any]:
    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            raise ValueError("duplicate key")
        return dict(pairs)

    def no_constants(name: str) -> None:
        raise ValueError(f"non-finite number {name}")

    try:
        obj = json.loads(
            raw.decode("ascii"), object_pairs_hook=no_duplicates, parse_constant=no_constants
        )
    except (UnicodeDecodeError, ValueError):
        _fail(path, "line is not valid ledger JSON (edited or corrupted)", line=line)
    if not isinstance(obj, dict):
        _fail(path, "line is not a JSON object", line=line)
    seq = obj.get("seq") if isinstance(obj.get("seq"), int) else None
    if canonical_json(obj) != raw:
        _fail(path, "line is not in canonical form (entry edited)", seq=seq, line=line)
    if not isinstance(obj.get("hash"), str) or entry_hash(obj) != obj["hash"]:
        _fail(path, "entry hash does not match its content (entry edited)", seq=seq, line=line)
    return obj


def _genesis_from(obj: dict[str, Any], path: Path) -> Genesis:
    if obj.get("kind") != "genesis" or set(obj) != _GENESIS_KEYS:
        _fail(path, "first line is not a genesis entry", line=1)
    if obj["seq"] != 0 or obj["prev_hash"] != GENESIS_PREV_HASH:
        _fail(path, "genesis entry must have seq 0 and an all-zero prev_hash", seq=0, line=1)
    if obj["v"] != FORMAT_VERSION:
        _fail(path, f"unsupported ledger format version {obj['v']!r}", seq=0, line=1)
    try:
        for key in ("ledger_id", "run_id", "actor", "time"):
            _check_name(key, obj[key])
        if obj["unit"] not in UNITS:
            raise InvalidParameterError(f"unit must be one of {UNITS}")
        if canonical_name(obj["accountant"]) != obj["accountant"]:
            raise InvalidParameterError("accountant name is not canonical")
        check_delta(obj["delta"])
        if not (_is_number(obj["epsilon_max"]) and obj["epsilon_max"] > 0):
            raise InvalidParameterError("epsilon_max must be > 0")
    except InvalidParameterError as err:
        _fail(path, f"invalid genesis entry: {err}", seq=0, line=1)
    return Genesis(
        ledger_id=obj["ledger_id"],
        run_id=obj["run_id"],
        actor=obj["actor"],
        unit=obj["unit"],
        accountant=obj["accountant"],
        delta=float(obj["delta"]),
        epsilon_max=float(obj["epsilon_max"]),
        time=obj["time"],
        hash=obj["hash"],
    )


def _entry_from(
    obj: dict[str, Any], genesis: Genesis, path: Path, line: int, last_round: int | None
) -> LedgerEntry:
    seq = obj["seq"]
    if set(obj) != _EVENT_KEYS:
        _fail(path, "event entry has missing or unknown fields", seq=seq, line=line)
    for key in ("actor", "unit", "accountant", "delta"):
        if obj[key] != getattr(genesis, key):
            _fail(
                path,
                f"{key} {obj[key]!r} differs from the genesis entry's {getattr(genesis, key)!r}",
                seq=seq,
                line=line,
            )
    try:
        event = event_from_dict(obj["event"])
        participants = _check_participants(obj["participants"])
        _check_name("time", obj["time"])
        if obj["label"] is not None:
            _check_name("label", obj["label"])
    except InvalidParameterError as err:
        _fail(path, f"invalid event entry: {err}", seq=seq, line=line)
    summary = event.summary()
    derived = {
        "mechanism": event.type_name,
        "noise_multiplier": None if summary is None else summary[0],
        "sample_rate": None if summary is None else summary[1],
        "steps": None if summary is None else summary[2],
    }
    for key, value in derived.items():
        # z_eff of a distributed event is recomputed in floating point: allow last-bit drift
        # between numpy/libm versions, nothing more.
        close = (
            key == "noise_multiplier"
            and _is_number(obj[key])
            and value is not None
            and math.isclose(obj[key], value, rel_tol=1e-9)
        )
        if obj[key] != value and not close:
            _fail(path, f"{key} {obj[key]!r} contradicts the event ({value!r})", seq=seq, line=line)
    rnd = obj["round"]
    if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
        _fail(path, f"round must be an integer >= 0, got {rnd!r}", seq=seq, line=line)
    if last_round is not None and rnd < last_round:
        _fail(path, f"round {rnd} goes back from round {last_round}", seq=seq, line=line)
    eps = obj["epsilon_after"]
    if not (_is_number(eps) and math.isfinite(eps) and eps >= 0):
        _fail(path, f"epsilon_after must be a finite number >= 0, got {eps!r}", seq=seq, line=line)
    clip = obj["clipping_norm"]
    if clip is not None and not (_is_number(clip) and math.isfinite(clip) and clip > 0):
        _fail(path, f"clipping_norm must be > 0 or null, got {clip!r}", seq=seq, line=line)
    return LedgerEntry(
        seq=seq,
        time=obj["time"],
        actor=obj["actor"],
        round=rnd,
        unit=obj["unit"],
        mechanism=obj["mechanism"],
        event=event,
        noise_multiplier=obj["noise_multiplier"],
        sample_rate=obj["sample_rate"],
        steps=obj["steps"],
        clipping_norm=None if clip is None else float(clip),
        participants=participants,
        accountant=obj["accountant"],
        delta=float(obj["delta"]),
        epsilon_after=float(eps),
        label=obj["label"],
        prev_hash=obj["prev_hash"],
        hash=obj["hash"],
    )


def _seal(seq: int, head: str) -> bytes:
    obj: dict[str, Any] = {"v": FORMAT_VERSION, "kind": "seal", "seq": seq, "head": head}
    obj["hash"] = entry_hash(obj)
    return canonical_json(obj) + b"\n"


def _verify(data: bytes, path: Path) -> tuple[Genesis, list[LedgerEntry], list[bytes]]:
    """Check a whole ledger; return genesis, entries and the entry lines (without the seal)."""
    if not data:
        _fail(path, "ledger is empty (no genesis entry)")
    lines = data.split(b"\n")
    if lines[-1] != b"":
        # A writer that crashed mid-line, or a truncation: never accept a partial entry.
        _fail(path, "last line is torn: the file does not end with a newline", line=len(lines))
    lines.pop()
    genesis: Genesis | None = None
    entries: list[LedgerEntry] = []
    prev_hash = GENESIS_PREV_HASH
    last_round: int | None = None
    for index, raw in enumerate(lines):
        line = index + 1
        obj = _parse_json_line(raw, path, line)
        kind = obj.get("kind")
        seq = obj.get("seq")
        if kind == "seal":
            if index != len(lines) - 1:
                _fail(path, "seal found before the end of the ledger", seq=seq, line=line)
            if set(obj) != _SEAL_KEYS:
                _fail(path, "seal has missing or unknown fields", line=line)
            if seq != index - 1 or obj["head"] != prev_hash:
                _fail(
                    path,
                    f"seal names seq {seq} but the last entry is seq {index - 1}: entries after "
                    f"seq {index - 1} were dropped or the file was spliced",
                    seq=index - 1,
                    line=line,
                )
            if genesis is None:
                _fail(path, "seal without a genesis entry", line=line)
            return genesis, entries, [raw + b"\n" for raw in lines[:-1]]
        if seq != index:
            how = "dropped or reordered" if isinstance(seq, int) and seq > index else "reordered"
            _fail(
                path,
                f"expected seq {index}, found seq {seq!r}: entries were {how}",
                seq=seq if isinstance(seq, int) else None,
                line=line,
            )
        if obj.get("prev_hash") != prev_hash:
            _fail(
                path,
                "prev_hash does not match the previous entry (entries dropped, reordered or "
                "spliced from another ledger)",
                seq=seq,
                line=line,
            )
        if genesis is None:
            genesis = _genesis_from(obj, path)
        else:
            if kind != "event":
                _fail(path, f"unknown entry kind {kind!r}", seq=seq, line=line)
            entry = _entry_from(obj, genesis, path, line, last_round)
            last_round = entry.round
            entries.append(entry)
        prev_hash = obj["hash"]
    last = len(lines) - 1
    _fail(
        path,
        f"no seal after seq {last}: the ledger was truncated (its final seal line is missing)",
        seq=last,
        line=len(lines),
    )


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def atomic_replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via temp file + fsync + ``os.replace`` + directory fsync."""
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


class Ledger:
    """A verified, open ledger file. Create with :meth:`create`, reopen with :meth:`open`."""

    def __init__(
        self, path: Path, genesis: Genesis, entries: list[LedgerEntry], lines: list[bytes]
    ) -> None:
        self._path = path
        self._genesis = genesis
        self._entries = entries
        self._lines = lines
        self._content = self._render()

    @property
    def path(self) -> Path:
        """The ledger file."""
        return self._path

    @property
    def genesis(self) -> Genesis:
        """The genesis entry."""
        return self._genesis

    @property
    def entries(self) -> tuple[LedgerEntry, ...]:
        """Event entries in order (without the genesis)."""
        return tuple(self._entries)

    @property
    def head(self) -> str:
        """Hash of the newest entry: publish it elsewhere to pin this ledger's history."""
        return self._entries[-1].hash if self._entries else self._genesis.hash

    @property
    def epsilon(self) -> float:
        """Epsilon recorded after the newest entry (0.0 for a fresh ledger)."""
        return self._entries[-1].epsilon_after if self._entries else 0.0

    def __len__(self) -> int:
        return len(self._entries)

    def _render(self) -> bytes:
        return b"".join(self._lines) + _seal(len(self._lines) - 1, self.head)

    @staticmethod
    def _check_path(path: Path | str) -> Path:
        path = Path(path)
        if not path.name.endswith(LEDGER_SUFFIX) or path.name == LEDGER_SUFFIX:
            raise InvalidParameterError(
                f"ledger files must be named '<name>{LEDGER_SUFFIX}', got {path.name!r}"
            )
        return path

    @classmethod
    def create(
        cls,
        path: Path | str,
        *,
        run_id: str,
        actor: str,
        unit: str,
        accountant: str,
        delta: float,
        epsilon_max: float,
        ledger_id: str | None = None,
        now: _dt.datetime | str | None = None,
    ) -> Ledger:
        """Create a new ledger holding only its genesis entry; refuses to overwrite a file.

        Args:
            path: File to create (``*.ledger.jsonl``); missing parent directories are created.
            run_id: Identifier of the training run this ledger belongs to.
            actor: ``"server"`` or a client id.
            unit: Unit of privacy, ``"record"`` or ``"user"``.
            accountant: Accountant whose epsilons will be recorded.
            delta: Delta at which epsilons are recorded.
            epsilon_max: The budget; the audit flags any entry beyond it.
            ledger_id: Defaults to 128 random bits (hex).
            now: Timestamp override for tests.
        """
        path = cls._check_path(path)
        if unit not in UNITS:
            raise InvalidParameterError(f"unit must be one of {UNITS}, got {unit!r}")
        epsilon_max = float(epsilon_max)
        if not (math.isfinite(epsilon_max) and epsilon_max > 0):
            raise InvalidParameterError(f"epsilon_max must be finite and > 0, got {epsilon_max}")
        obj: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "kind": "genesis",
            "seq": 0,
            "time": _time_text(now),
            "ledger_id": _check_name("ledger_id", ledger_id or secrets.token_hex(16)),
            "run_id": _check_name("run_id", run_id),
            "actor": _check_name("actor", actor),
            "unit": unit,
            "accountant": canonical_name(accountant),
            "delta": check_delta(delta),
            "epsilon_max": epsilon_max,
            "prev_hash": GENESIS_PREV_HASH,
        }
        obj["hash"] = entry_hash(obj)
        line = canonical_json(obj) + b"\n"
        genesis = _genesis_from(obj, path)
        ledger = cls(path, genesis, [], [line])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _write_temp(path, ledger._content)
        try:
            os.link(tmp, path)  # atomic and never clobbers an existing ledger
        except FileExistsError:
            raise LedgerConfigError(
                f"{path} already exists; open it instead of creating it"
            ) from None
        finally:
            os.unlink(tmp)
        _fsync_dir(path.parent)
        return ledger

    @classmethod
    def open(cls, path: Path | str, *, expected_head: str | None = None) -> Ledger:
        """Read and fully verify a ledger.

        Args:
            path: The ledger file.
            expected_head: If given, the newest entry's hash must equal it (an anchor published
                elsewhere); catches a consistently rewritten or shortened ledger.

        Raises:
            LedgerIntegrityError: on any verification failure, naming file, seq and line.
        """
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise LedgerIntegrityError("ledger file not found", path=path) from None
        genesis, entries, lines = _verify(data, path)
        ledger = cls(path, genesis, entries, lines)
        if ledger._content != data:  # pragma: no cover - _verify accepts exactly this form
            raise LedgerIntegrityError("ledger does not re-render identically", path=path)
        if expected_head is not None and ledger.head != expected_head:
            raise LedgerIntegrityError(
                f"head hash {ledger.head} differs from the expected {expected_head}",
                path=path,
                seq=len(entries),
            )
        return ledger

    def append(
        self,
        event: PrivacyEvent,
        *,
        round: int,
        epsilon_after: float,
        clipping_norm: float | None = None,
        participants: int | Sequence[str] | None = None,
        label: str | None = None,
        now: _dt.datetime | str | None = None,
    ) -> LedgerEntry:
        """Append one event entry atomically (see the module docstring) and return it.

        Args:
            event: What was released.
            round: Federation round (non-decreasing along the ledger).
            epsilon_after: Cumulative epsilon at the genesis delta after this event, computed
                with the genesis accountant (see :class:`privacy.budget.PersistentAccountant`).
            clipping_norm: L2 clipping norm used for the release, if any.
            participants: Server side: client ids in the round, or their count.
            label: Free-form short tag, e.g. ``"dp-sgd"`` or ``"prior-stats"``.
            now: Timestamp override for tests.

        Raises:
            LedgerIntegrityError: the file changed on disk since this object last saw it.
            InvalidParameterError: an argument is out of range; nothing was written.
        """
        if not isinstance(event, PrivacyEvent):
            raise InvalidParameterError(f"not a privacy event: {event!r}")
        if isinstance(round, bool) or not isinstance(round, int) or round < 0:
            raise InvalidParameterError(f"round must be an integer >= 0, got {round!r}")
        if self._entries and round < self._entries[-1].round:
            raise InvalidParameterError(
                f"round {round} is before the last recorded round {self._entries[-1].round}"
            )
        if not (_is_number(epsilon_after) and math.isfinite(epsilon_after) and epsilon_after >= 0):
            raise InvalidParameterError(f"epsilon_after must be finite and >= 0: {epsilon_after}")
        if clipping_norm is not None and not (
            _is_number(clipping_norm) and math.isfinite(clipping_norm) and clipping_norm > 0
        ):
            raise InvalidParameterError(f"clipping_norm must be > 0, got {clipping_norm!r}")
        ids = _check_participants(participants)
        if label is not None:
            _check_name("label", label)
        summary = event.summary()
        obj: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "kind": "event",
            "seq": len(self._lines),
            "time": _time_text(now),
            "actor": self._genesis.actor,
            "round": round,
            "unit": self._genesis.unit,
            "mechanism": event.type_name,
            "event": event.to_dict(),
            "noise_multiplier": None if summary is None else summary[0],
            "sample_rate": None if summary is None else summary[1],
            "steps": None if summary is None else summary[2],
            "clipping_norm": None if clipping_norm is None else float(clipping_norm),
            "participants": list(ids) if isinstance(ids, tuple) else ids,
            "accountant": self._genesis.accountant,
            "delta": self._genesis.delta,
            "epsilon_after": float(epsilon_after),
            "label": label,
            "prev_hash": self.head,
        }
        obj["hash"] = entry_hash(obj)
        line = canonical_json(obj) + b"\n"
        entry = _entry_from(
            obj,
            self._genesis,
            self._path,
            len(self._lines) + 1,
            self._entries[-1].round if self._entries else None,
        )
        try:
            on_disk = self._path.read_bytes()
        except FileNotFoundError:
            on_disk = b""
        if on_disk != self._content:
            raise LedgerIntegrityError(
                "ledger changed on disk since it was opened (another writer or an edit); "
                "refusing to append",
                path=self._path,
                seq=len(self._entries),
            )
        new_lines = [*self._lines, line]
        content = b"".join(new_lines) + _seal(len(new_lines) - 1, entry.hash)
        atomic_replace(self._path, content)
        self._lines = new_lines
        self._entries.append(entry)
        self._content = content
        return entry


def find_ledgers(path: Path | str) -> list[Path]:
    """Ledger files at ``path``: the file itself, or every ``*.ledger.jsonl`` below a directory."""
    path = Path(path)
    if path.is_dir():
        return sorted(p for p in path.rglob(f"*{LEDGER_SUFFIX}") if p.is_file())
    return [path]
