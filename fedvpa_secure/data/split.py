"""Splitting HH-RLHF into training and evaluation data with no conversation opener in both.

The key is the first Human turn: every continuation of one conversation (and every pair built
on it, in any subset, including relabeled copies) lands on the same side, so an "unseen" user
is scored on prompts the federation never trained on. The side is decided by a seeded hash of
the key, not by position, so the split is the same on every machine and for any file order.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedvpa_secure.data.dialogue import first_human_turn
from fedvpa_secure.data.hh_rlhf import (
    iter_json_lines,
    parse_row,
    subset_dirs,
    subset_files,
)
from fedvpa_secure.data.types import RawPair
from fedvpa_secure.errors import ConfigError, DataError


@dataclass(frozen=True)
class SplitReport:
    """What :func:`split_folder` wrote: rows per output file, and files left out as empty."""

    train_rows: dict[str, int] = field(default_factory=dict)  # "subset/file" -> rows
    eval_rows: dict[str, int] = field(default_factory=dict)
    omitted: tuple[str, ...] = ()  # "train:subset/file" outputs not written (no rows)


def _check_fraction(eval_fraction: float) -> None:
    if not 0.0 < float(eval_fraction) < 1.0:
        raise ConfigError(f"eval_fraction must be in (0, 1), got {eval_fraction!r}")


def eval_score(key: str, seed: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, key): below eval_fraction means eval."""
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def is_eval_prompt(prompt: str, eval_fraction: float, seed: int) -> bool:
    """Whether a prompt (and every pair sharing its first Human turn) belongs to eval."""
    return eval_score(first_human_turn(prompt), seed) < eval_fraction


def split_pairs(
    pairs: Iterable[RawPair], eval_fraction: float, seed: int
) -> tuple[list[RawPair], list[RawPair]]:
    """Split parsed pairs in memory exactly as :func:`split_folder` splits files.

    Returns:
        (train pairs, eval pairs), each in input order.

    Raises:
        ConfigError: eval_fraction outside (0, 1).
    """
    _check_fraction(eval_fraction)
    train: list[RawPair] = []
    evaluation: list[RawPair] = []
    for pair in pairs:
        (evaluation if is_eval_prompt(pair.prompt, eval_fraction, seed) else train).append(pair)
    return train, evaluation


def split_folder(
    src: str | Path,
    train_dst: str | Path,
    eval_dst: str | Path,
    eval_fraction: float,
    seed: int,
    *,
    subsets: Sequence[str] | None = None,
    overwrite: bool = False,
) -> SplitReport:
    """Write two folders of ``src``'s layout, splitting rows by their first Human turn.

    Lines are copied byte for byte (relabeled rows keep every field), into files of the same
    names, gzip-compressed with a fixed timestamp so equal inputs give equal bytes. An output
    file that would receive no row is not written (and an old copy is removed), because the
    loader rejects empty files.
    Used to make an ``--eval-data`` folder out of one folder.

    Args:
        src: a folder laid out like shared/data/hh-rlhf.
        train_dst: where the training rows go.
        eval_dst: where the evaluation rows go.
        eval_fraction: share of first Human turns (not rows) sent to evaluation, in (0, 1).
        seed: varies the split; the same seed always gives the same split.
        subsets: subset folders to split (default: every known subset present).
        overwrite: allow writing into non-empty destinations.

    Raises:
        ConfigError: bad fraction, destinations equal to each other or to src, or a
            non-empty destination without ``overwrite``.
        DataError: src is missing or holds a malformed file (named with its line).
    """
    _check_fraction(eval_fraction)
    src, train_dst, eval_dst = (Path(p).expanduser() for p in (src, train_dst, eval_dst))
    if not src.is_dir():
        raise DataError(f"split source {str(src)!r} is not a folder of <subset>/*.jsonl.gz files")
    resolved = {p.resolve() for p in (src, train_dst, eval_dst)}
    if len(resolved) != 3:
        raise ConfigError("src, train_dst and eval_dst must be three different folders")
    for dst in (train_dst, eval_dst):
        if dst.exists() and any(dst.iterdir()) and not overwrite:
            raise ConfigError(f"{dst} exists and is not empty; choose another folder or overwrite")
    report = SplitReport()
    omitted: list[str] = []
    for subset in subset_dirs(src, subsets):
        for path in subset_files(src / subset):
            name = f"{subset}/{path.name}"
            sides: dict[bool, list[str]] = {False: [], True: []}
            for number, line, row in iter_json_lines(path):
                pair = parse_row(row, subset, f"{name}:{number}", f"{path}:{number}")
                sides[is_eval_prompt(pair.prompt, eval_fraction, seed)].append(line)
            for is_eval, dst, counts in (
                (False, train_dst, report.train_rows),
                (True, eval_dst, report.eval_rows),
            ):
                counts[name] = len(sides[is_eval])
                if not sides[is_eval]:
                    omitted.append(f"{'eval' if is_eval else 'train'}:{name}")
                    (dst / subset / path.name).unlink(missing_ok=True)  # no stale copy
                    continue
                _write_lines(dst / subset / path.name, sides[is_eval])
    return SplitReport(report.train_rows, report.eval_rows, tuple(omitted))


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    data = text.encode("utf-8")
    if path.name.endswith(".gz"):
        with (
            open(path, "wb") as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, compresslevel=6) as handle,
        ):
            handle.write(data)
    else:
        path.write_bytes(data)
