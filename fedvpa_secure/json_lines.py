"""Reading the JSON-lines files users hand to ``score``, ``label`` and ``dpo``: every line an
object, blank lines skipped, and a bad line reported by file and line number."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from fedvpa_secure.errors import DataError


def read_objects(path: Path, missing_hint: str = "") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of ``path``.

    Raises:
        DataError: the file is missing (with ``missing_hint`` appended), a line is not JSON, or
            not a JSON object.
    """
    if not path.is_file():
        raise DataError(f"{path} does not exist{missing_hint}")
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path}:{number}: not JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: expected a JSON object")
            yield number, row
