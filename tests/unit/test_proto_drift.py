"""The committed generated protobuf code equals what scripts/gen_protos.py produces now."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_protos", ROOT / "scripts" / "gen_protos.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_generated_code_matches_protos(tmp_path: Path) -> None:
    written = _generator().generate(tmp_path)
    assert written, "no files generated"
    committed = ROOT / "fedvpa_secure" / "proto"
    for fresh in written:
        old = committed / fresh.name
        assert old.exists(), f"{fresh.name} is not committed; run python scripts/gen_protos.py"
        assert old.read_text() == fresh.read_text(), (
            f"{fresh.name} drifted from protos/; run python scripts/gen_protos.py"
        )
    names = {p.name for p in committed.glob("*_pb2*.py*")}
    assert names == {p.name for p in written}, "stale generated files in fedvpa_secure/proto"
