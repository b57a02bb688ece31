"""Reading HH-RLHF preference pairs from a local folder or the Hugging Face hub.

A folder is laid out like Anthropic's release: one sub-folder per subset, each holding
``*.jsonl.gz`` (or ``*.jsonl``) files whose lines are ``{"chosen": ..., "rejected": ...}``.
relabeled-dpl rows (Siththaranjan et al.) carry more fields and are recognised by their keys,
not by their folder. Every problem names the file and line and says how to fix it, because a
silently skipped line would change which pairs land in which client.
"""

from __future__ import annotations

import gzip
import json
import logging
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path

from fedvpa_secure.data.dialogue import DialogueFormatError, split_dialogue_pair
from fedvpa_secure.data.dialogue import pair_id as make_pair_id
from fedvpa_secure.data.types import RawPair
from fedvpa_secure.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

HUB_ID = "Anthropic/hh-rlhf"
HELPFUL_SUBSETS = ("helpful-base", "helpful-online", "helpful-rejection-sampled")
HARMLESS_SUBSETS = ("harmless-base",)
RELABELED_SUBSET = "relabeled-dpl"
KNOWN_SUBSETS = (*HELPFUL_SUBSETS, *HARMLESS_SUBSETS, RELABELED_SUBSET)
HUB_SUBSETS = (*HELPFUL_SUBSETS, *HARMLESS_SUBSETS)  # relabeled-dpl is not on Anthropic's hub
HUB_SPLITS = ("train", "test")
FILE_PATTERNS = ("*.jsonl.gz", "*.jsonl")
RELABELED_KEYS = ("prompt", "responses", "label", "original_label", "objective")
SKIP_IDENTICAL = "identical responses"


@dataclass(frozen=True)
class RawDataset:
    """Parsed pairs of one source, in file order, with what was left out and why."""

    pairs: tuple[RawPair, ...]
    description: str  # where the pairs came from, printed by the CLI and stored in the report
    skipped: Mapping[str, int] = field(default_factory=dict)  # reason -> number of rows

    def by_subset(self) -> dict[str, tuple[RawPair, ...]]:
        """Pairs grouped by subset, subsets in first-seen order."""
        groups: dict[str, list[RawPair]] = {}
        for pair in self.pairs:
            groups.setdefault(pair.subset, []).append(pair)
        return {name: tuple(pairs) for name, pairs in groups.items()}

    def counts(self) -> dict[str, int]:
        """Number of pairs per subset."""
        return dict(Counter(pair.subset for pair in self.pairs))


def parse_row(row: object, subset: str, source: str, where: str | None = None) -> RawPair:
    """Turn one decoded JSON row into a :class:`RawPair`.

    Args:
        row: the decoded line (must be an object with string ``chosen`` and ``rejected``).
        subset: the subset folder the row came from.
        source: "subset/file:LINE" or "hub:...:INDEX", kept in the pair for audits.
        where: how errors name the row (default ``source``), e.g. the full path and line.

    Raises:
        DataError: the row is malformed; the message starts with ``where``.
    """
    at = where or source
    if not isinstance(row, dict):
        raise DataError(f"{at}: expected a JSON object per line, got {type(row).__name__}")
    for key in ("chosen", "rejected"):
        if not isinstance(row.get(key), str):
            raise DataError(
                f"{at}: field {key!r} is missing or not a string; every line needs "
                '{"chosen": "<dialogue>", "rejected": "<dialogue>"}'
            )
    try:
        prompt, chosen, rejected = split_dialogue_pair(row["chosen"], row["rejected"])
    except DialogueFormatError as exc:
        raise DataError(f"{at}: {exc}; fix or remove this line") from exc
    extra = _relabeled_extra(row, prompt, chosen, rejected, at) if "responses" in row else {}
    return RawPair(
        pair_id=make_pair_id(prompt, chosen, rejected),
        prompt=prompt,
        chosen=chosen,
        rejected=rejected,
        subset=subset,
        source=source,
        extra=extra,
    )


def _relabeled_extra(
    row: dict, prompt: str, chosen: str, rejected: str, source: str
) -> dict[str, object]:
    """Check a relabeled-dpl row against its own dialogue and keep its label fields."""
    missing = [key for key in RELABELED_KEYS if key not in row]
    if missing:
        raise DataError(f"{source}: relabeled row lacks {missing}; it needs {list(RELABELED_KEYS)}")
    responses, label, original = row["responses"], row["label"], row["original_label"]
    valid_labels = all(type(x) is int and x in (0, 1) for x in (label, original))
    if not (isinstance(responses, list) and len(responses) == 2 and valid_labels):
        raise DataError(
            f"{source}: relabeled row needs 'responses' (two strings) and 'label', "
            "'original_label' in {0, 1}"
        )
    if not isinstance(row["objective"], str) or not row["objective"]:
        raise DataError(f"{source}: relabeled row needs a non-empty string 'objective'")
    text = [str(r).strip() for r in responses]
    if text[label] != chosen or text[1 - label] != rejected or str(row["prompt"]).strip() != prompt:
        raise DataError(
            f"{source}: relabeled row is inconsistent: 'chosen' must be the prompt followed by "
            "responses[label] and 'rejected' by the other response"
        )
    extra: dict[str, object] = {key: row[key] for key in ("label", "original_label", "objective")}
    for key in ("data_subset", "Index"):
        if key in row:
            extra[key] = row[key]
    return extra


def load_folder(
    folder: str | Path,
    *,
    subsets: Sequence[str] | None = None,
    max_pairs_per_subset: int | None = None,
    drop_identical: bool = True,
) -> RawDataset:
    """Read every ``<subset>/*.jsonl.gz`` file of a folder laid out like shared/data/hh-rlhf.

    Args:
        folder: the root holding one sub-folder per subset.
        subsets: subset folders to read (default: every known subset present). Unknown
            sub-folders (e.g. red-team-attempts, a different format) are ignored unless named.
        max_pairs_per_subset: keep the first N pairs of each subset (files in name order), so
            tests and CI load fast and deterministically; None reads everything.
        drop_identical: leave out pairs whose two responses are the same text: they carry no
            preference signal (32 such rows in helpful-rejection-sampled test).

    Raises:
        DataError: missing or empty folder, subset or file; malformed line (file and line named).
        ConfigError: max_pairs_per_subset < 1.
    """
    _check_cap(max_pairs_per_subset)
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(
            f"HH-RLHF folder {str(root)!r} does not exist or is not a folder; pass --data with "
            "a folder holding <subset>/*.jsonl.gz files (like shared/data/hh-rlhf) or set "
            "HH_RLHF_DIR"
        )
    names = subset_dirs(root, subsets)
    pairs: list[RawPair] = []
    skipped: Counter[str] = Counter()
    for name in names:
        rows = chain.from_iterable(
            _read_file(path, name, drop_identical, skipped) for path in subset_files(root / name)
        )
        pairs.extend(islice(rows, max_pairs_per_subset))  # lazy: a cap stops reading early
    cap = "" if max_pairs_per_subset is None else f", first {max_pairs_per_subset} per subset"
    description = f"HH-RLHF folder {root} ({', '.join(names)}; {len(pairs)} pairs{cap})"
    logger.info("loaded %d pairs from %s (skipped %s)", len(pairs), root, dict(skipped))
    return RawDataset(tuple(pairs), description, dict(skipped))


def _check_cap(cap: int | None) -> None:
    if cap is not None and (type(cap) is not int or cap < 1):
        raise ConfigError(f"max_pairs_per_subset must be a positive integer or None, got {cap!r}")


def subset_dirs(root: Path, subsets: Sequence[str] | None) -> list[str]:
    """Subset folder names to read under ``root``: the requested ones, or every known one.

    Raises:
        DataError: a requested subset is missing, or (default) no known subset is present.
    """
    present = sorted(p.name for p in root.iterdir() if p.is_dir())
    if subsets is None:
        names = [name for name in KNOWN_SUBSETS if name in present]
        ignored = sorted(set(present) - set(names))
        if ignored:
            logger.info("ignoring sub-folders that are not HH-RLHF pair subsets: %s", ignored)
        if not names:
            raise DataError(
                f"{root} holds no HH-RLHF subset folder (found {present or 'nothing'}); expected "
                f"one or more of {list(KNOWN_SUBSETS)}, each with *.jsonl.gz files"
            )
        return names
    missing = [name for name in subsets if name not in present]
    if missing:
        raise DataError(
            f"{root} has no subset folder {missing} (present: {present}); fix the subset names "
            "or the folder"
        )
    return list(dict.fromkeys(subsets))


def subset_files(directory: Path) -> list[Path]:
    """The subset's data files in name order (the order a per-subset cap reads them).

    Raises:
        DataError: the folder holds no ``*.jsonl.gz`` / ``*.jsonl`` file.
    """
    files = sorted({p for pattern in FILE_PATTERNS for p in directory.glob(pattern)})
    if not files:
        raise DataError(
            f"subset folder {directory} has no *.jsonl.gz or *.jsonl file; add the subset's "
            "files or remove the folder"
        )
    return files


def _read_file(
    path: Path, subset: str, drop_identical: bool, skipped: Counter[str]
) -> Iterator[RawPair]:
    """Yield the pairs of one file lazily (a per-subset cap stops reading early)."""
    label = f"{path.parent.name}/{path.name}"
    for number, _line, row in iter_json_lines(path):
        pair = parse_row(row, subset, f"{label}:{number}", f"{path}:{number}")
        if drop_identical and pair.chosen == pair.rejected:
            skipped[SKIP_IDENTICAL] += 1
            continue
        yield pair


def iter_json_lines(path: Path) -> Iterator[tuple[int, str, object]]:
    """Yield (line number, raw line, decoded JSON) for each non-blank line of a JSONL file.

    Raises:
        DataError: unreadable or corrupt file, a line that is not JSON, or no line at all.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    seen_any = False
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                seen_any = True
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(
                        f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                        "fix or remove the line"
                    ) from exc
                yield number, line, row
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise DataError(
            f"{path}: cannot be read ({exc}); it must be gzip-compressed (or plain for .jsonl) "
            "UTF-8 JSON Lines; re-download or re-create the file"
        ) from exc
    if not seen_any:
        raise DataError(
            f"{path}: the file is empty; remove it or fill it with one JSON pair per line"
        )


def load_hub(
    hub_id: str = HUB_ID,
    *,
    subsets: Sequence[str] = HUB_SUBSETS,
    splits: Sequence[str] = HUB_SPLITS,
    max_pairs_per_subset: int | None = None,
    drop_identical: bool = True,
) -> RawDataset:
    """Read HH-RLHF through ``datasets`` (one ``data_dir`` per subset, train and test splits).

    The hub is the fallback for users with network access and no local copy; offline it fails
    fast (with HF_HUB_OFFLINE=1) or after datasets' retries, always with a DataError that says
    how to use a local folder instead.

    Raises:
        DataError: datasets is missing, the hub cannot be reached, or a row is malformed.
    """
    _check_cap(max_pairs_per_subset)
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - datasets is a declared dependency
        raise DataError(
            "the 'datasets' package is not installed; install it or pass --data FOLDER"
        ) from exc
    pairs: list[RawPair] = []
    skipped: Counter[str] = Counter()
    for subset in subsets:
        kept = 0
        for split in splits:
            if max_pairs_per_subset is not None and kept >= max_pairs_per_subset:
                break
            rows = _hub_rows(datasets, hub_id, subset, split)
            for index, row in enumerate(rows):
                if max_pairs_per_subset is not None and kept >= max_pairs_per_subset:
                    break
                pair = parse_row(dict(row), subset, f"hub:{hub_id}/{subset}:{split}:{index}")
                if drop_identical and pair.chosen == pair.rejected:
                    skipped[SKIP_IDENTICAL] += 1
                    continue
                pairs.append(pair)
                kept += 1
    cap = "" if max_pairs_per_subset is None else f", first {max_pairs_per_subset} per subset"
    description = f"hub {hub_id} ({', '.join(subsets)}; {len(pairs)} pairs{cap})"
    return RawDataset(tuple(pairs), description, dict(skipped))


def _hub_rows(datasets_module: object, hub_id: str, subset: str, split: str) -> Iterable[Mapping]:
    try:
        return datasets_module.load_dataset(hub_id, data_dir=subset, split=split)  # type: ignore[attr-defined]
    except Exception as exc:  # datasets raises many types (ConnectionError, FileNotFound, ...)
        raise DataError(
            f"could not load {hub_id!r} (data_dir={subset!r}, split={split!r}) from the Hugging "
            f"Face hub: {type(exc).__name__}: {exc}. Offline? Download the HH-RLHF files and "
            "pass --data FOLDER (or set HH_RLHF_DIR)"
        ) from exc
