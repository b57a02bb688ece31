"""What ``server --check`` and ``client --check`` share: the files a valid config names."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path


def report_files(files: Mapping[str, Path]) -> int:
    """Print each named file as ok or MISSING; 0 when all exist, 1 otherwise (what to make)."""
    missing = 0
    for key, path in files.items():
        ok = path.is_file()
        missing += not ok
        print(f"  {key}: {path} {'ok' if ok else 'MISSING'}")
    if missing:
        print(
            f"{missing} file(s) missing: make them with `fedvpa-secure certs` (init on the "
            "operator's machine, request on each client, sign on the operator's) or fix the paths"
        )
        return 1
    print("ready")
    return 0
