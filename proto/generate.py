"""Generate the Python gRPC stubs of proto/routegate/v1/*.proto.

    make proto                                   # writes gateway/proto_gen/
    python proto/generate.py --out DIR           # writes DIR/routegate/v1/ (the stub test uses this)

The stubs are committed so a fresh clone needs no code generation; grpcio-tools is therefore a
test dependency only. tests/test_proto_stubs.py regenerates into a temporary folder and fails if
the committed files differ.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
DEFAULT_OUT = PROTO_ROOT.parent / "gateway" / "proto_gen"
PROTO_FILES = ("routegate/v1/gateway.proto",)

# protoc writes absolute imports (`from routegate.v1 import gateway_pb2`) that only resolve when
# the output folder is on sys.path; rewriting them to relative imports lets the stubs live inside
# the `gateway` package.
_ABSOLUTE_IMPORT = re.compile(r"^from routegate\.v1 import (\w+_pb2)", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    """Run protoc on PROTO_FILES into out_dir; return the files written."""
    from grpc_tools import protoc  # test/dev dependency, imported only when generating

    package_dir = out_dir / "routegate" / "v1"
    package_dir.mkdir(parents=True, exist_ok=True)
    for init in (out_dir / "__init__.py", out_dir / "routegate" / "__init__.py", package_dir / "__init__.py"):
        init.touch()
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    written = sorted(package_dir.glob("*_pb2*.py*"))
    for path in written:
        text = path.read_text()
        fixed = _ABSOLUTE_IMPORT.sub(r"from . import \1", text)
        if fixed != text:
            path.write_text(fixed)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
