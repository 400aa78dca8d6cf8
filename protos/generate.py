"""Regenerate protos/stemserve_pb2*.py from protos/stemserve.proto.

    python protos/generate.py          # write the generated modules
    python protos/generate.py --check  # exit 1 if the committed ones are stale (CI)

Generated imports are rewritten to be package-relative (``from stemserve.protos import ...``)
so the modules work when installed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUTPUTS = ("stemserve_pb2.py", "stemserve_pb2_grpc.py", "stemserve_pb2.pyi")


def generate(out_dir: Path) -> None:
    from grpc_tools import protoc

    args = [
        "grpc_tools.protoc",
        f"-I{HERE}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        str(HERE / "stemserve.proto"),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    grpc_module = out_dir / "stemserve_pb2_grpc.py"
    text = grpc_module.read_text()
    grpc_module.write_text(text.replace("import stemserve_pb2 as", "from stemserve.protos import stemserve_pb2 as"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the committed modules are out of date")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        stale = [name for name in OUTPUTS if (Path(tmp) / name).read_text() != _read(HERE / name)]
        if args.check:
            if stale:
                print(f"generated protos are stale: {stale}; run python protos/generate.py", file=sys.stderr)
                return 1
            print("generated protos are current")
            return 0
        for name in OUTPUTS:
            (HERE / name).write_text((Path(tmp) / name).read_text())
        print(f"wrote {', '.join(OUTPUTS)}")
    return 0


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


if __name__ == "__main__":
    sys.exit(main())
