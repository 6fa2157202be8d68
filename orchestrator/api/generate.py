"""Regenerates the Python stubs beside `geolocator.proto`: `python -m navig.orchestrator.api.generate`.

protoc runs on a copy laid out as `navig/orchestrator/api/`, so the generated modules import
each other by their installed names whatever folder the checkout lives in.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

API_DIR = Path(__file__).resolve().parent
PROTO = "geolocator.proto"
PACKAGE = Path("navig/orchestrator/api")
GENERATED = ("geolocator_pb2.py", "geolocator_pb2.pyi", "geolocator_pb2_grpc.py")


def compile_proto(out: Path, *extra: str) -> None:
    """protoc on a package-shaped copy of the proto; outputs land in out/navig/orchestrator/api."""
    source = out / "src"
    (source / PACKAGE).mkdir(parents=True)
    shutil.copy(API_DIR / PROTO, source / PACKAGE / PROTO)
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{source}", f"-I{include}", *extra, str(PACKAGE / PROTO)]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {API_DIR / PROTO}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        compile_proto(out, f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}")
        for name in GENERATED:
            shutil.copy(out / PACKAGE / name, API_DIR / name)
            print(f"wrote {API_DIR / name}", file=sys.stderr)


if __name__ == "__main__":
    main()
