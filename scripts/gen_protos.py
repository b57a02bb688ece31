"""Regenerate the committed Python code for ``protos/fedvpa/v1/*.proto``.

Usage: ``python scripts/gen_protos.py [OUT_DIR]`` (default: ``fedvpa_secure/proto``). The drift
test runs this into a temporary folder and compares the files byte for byte, so the generated
code in the repository always matches the wire contract.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "protos"
DEFAULT_OUT = ROOT / "fedvpa_secure" / "proto"


def generate(out_dir: Path) -> list[Path]:
    """Run grpc_tools.protoc for every proto file and return the files written."""
    from grpc_tools import protoc

    out_dir.mkdir(parents=True, exist_ok=True)
    protos = sorted(PROTO_ROOT.glob("fedvpa/v1/*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files under {PROTO_ROOT}")
    with_include = Path(protoc.__file__).parent / "_proto"
    with _Tmp(out_dir) as tmp:
        args = [
            "protoc",
            f"-I{PROTO_ROOT}",
            f"-I{with_include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p.relative_to(PROTO_ROOT)) for p in protos],
        ]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        written = []
        for src in sorted((tmp / "fedvpa" / "v1").iterdir()):
            text = src.read_text()
            # flat package: `from fedvpa.v1 import x_pb2` -> `from fedvpa_secure.proto import x_pb2`
            text = re.sub(r"from fedvpa\.v1 import", "from fedvpa_secure.proto import", text)
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
    return written


class _Tmp:
    def __init__(self, near: Path) -> None:
        self.near = near

    def __enter__(self) -> Path:
        import tempfile

        self._td = tempfile.TemporaryDirectory()
        return Path(self._td.name)

    def __exit__(self, *exc: object) -> None:
        self._td.cleanup()


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
