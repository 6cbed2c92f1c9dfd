"""Regenerate the committed `*_pb2.py` / `*_pb2.pyi` from the `.proto` files in this folder.

Run `make protos` (or `python -m raredet.protos.generate`). The .proto files import each other as
`raredet/protos/<name>.proto`, with `src/` as the proto path, so the generated code imports its
dependencies as `raredet.protos.<name>_pb2` and works from an installed package.
A test regenerates into a temporary folder and compares byte for byte, so stale output fails CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
SRC_ROOT = PROTO_DIR.parent.parent  # the folder that contains the `raredet` package


def proto_files() -> list[Path]:
    """All schema files, sorted so the generated output does not depend on directory order."""
    return sorted(PROTO_DIR.glob("*.proto"))


def generate(out_root: Path = SRC_ROOT) -> list[Path]:
    """Compile every .proto into `out_root/raredet/protos/`; returns the files written.

    Raises RuntimeError with protoc's message when compilation fails.
    """
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    out_root.mkdir(parents=True, exist_ok=True)
    rel = [str(p.relative_to(SRC_ROOT)) for p in proto_files()]
    args = ["protoc", f"-I{SRC_ROOT}", f"--python_out={out_root}", f"--pyi_out={out_root}", *rel]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {', '.join(rel)} (see the messages above)")
    out_dir = out_root / "raredet" / "protos"
    return sorted(out_dir.glob("*_pb2.py*"))


def main() -> int:
    for path in generate():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
