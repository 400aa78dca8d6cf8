"""``stemserve plugin install``: build the native LV2 plugin and install it where hosts look (``~/.lv2``).

The plugin's sources are ``plugin_bridge/lv2`` (C++17, CMake); its gRPC code is
generated from ``protos/stemserve.proto`` during the build. It needs the Debian
packages ``cmake g++ pkg-config lv2-dev libgrpc++-dev libprotobuf-dev
protobuf-compiler protobuf-compiler-grpc`` (``scripts/install-deps`` installs them).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "lv2"
PROTO = Path(__file__).resolve().parents[1] / "protos" / "stemserve.proto"
TOOLS = ("cmake", "c++", "pkg-config", "protoc", "grpc_cpp_plugin")


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    install = sub.add_parser("install", help="build the LV2 bundle stemserve.lv2 and install it")
    install.add_argument(
        "--prefix",
        type=Path,
        default=Path.home() / ".lv2",
        help="the LV2 folder to install stemserve.lv2 into (default: ~/.lv2, which every LV2 host scans)",
    )
    install.add_argument("--build-dir", type=Path, default=None, help="keep the build here (default: a temp folder)")
    install.add_argument("--jobs", type=int, default=2, help="parallel compile jobs (default: 2)")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def build_and_install(prefix: Path, build_dir: Path, jobs: int) -> Path:
    """Configure, build and install; returns the installed bundle. Raises RuntimeError on a failed step."""
    if not (SOURCE / "CMakeLists.txt").is_file() or not PROTO.is_file():
        raise RuntimeError(f"the plugin sources are not here ({SOURCE}, {PROTO}): install from a source checkout")
    steps = [
        [
            "cmake",
            "-S",
            str(SOURCE),
            "-B",
            str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_INSTALL_PREFIX={prefix}",
            f"-DSTEMSERVE_PROTO={PROTO}",
        ],
        ["cmake", "--build", str(build_dir), "-j", str(max(1, jobs))],
        ["cmake", "--install", str(build_dir)],
    ]
    for step in steps:
        print("+", " ".join(step), flush=True)
        done = subprocess.run(step, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{step[0]} {step[1]} failed with exit code {done.returncode}")
    bundle = prefix / "stemserve.lv2"
    if not (bundle / "stemserve.so").is_file():
        raise RuntimeError(f"the install left no {bundle / 'stemserve.so'}")
    return bundle


def run(args: argparse.Namespace) -> int:
    missing = missing_tools()
    if missing:
        print(
            f"stemserve plugin install: missing {', '.join(missing)}; on Debian/Ubuntu: sudo apt-get install "
            "cmake g++ pkg-config lv2-dev libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc",
            file=sys.stderr,
        )
        return 2
    prefix = args.prefix.expanduser().resolve()
    try:
        if args.build_dir is not None:
            bundle = build_and_install(prefix, args.build_dir.expanduser().resolve(), args.jobs)
        else:
            with tempfile.TemporaryDirectory(prefix="stemserve-lv2-") as build:
                bundle = build_and_install(prefix, Path(build), args.jobs)
    except RuntimeError as err:
        print(f"stemserve plugin install: {err}", file=sys.stderr)
        return 1
    print(f"installed {bundle}")
    print(
        "next: start the server (stemserve serve), then insert 'stemserve' on a track in your LV2 host "
        "(Ardour, Carla, Qtractor, jalv) and pick the target"
    )
    return 0
