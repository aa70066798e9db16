"""Generate the Python stubs in ``tongban/v1/`` from ``proto/tongban/v1/*.proto``.

Usage::

    python scripts/genproto.py          # regenerate in place
    python scripts/genproto.py --check  # exit 1 when the committed stubs are stale

The output depends only on the ``.proto`` files and the pinned versions of grpcio-tools and
mypy-protobuf (the ``dev`` extra), so CI can compare it byte for byte with what is committed.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_INIT = '"""Generated gRPC stubs of the tongban.v1 API. Do not edit: run scripts/genproto.py."""\n'


def _generate(out: Path, proto_root: Path) -> None:
    import grpc_tools

    protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    plugin_dir = Path(sys.executable).parent
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{include}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={plugin_dir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    subprocess.run(cmd, check=True, cwd=proto_root, stdout=subprocess.DEVNULL)
    (out / "tongban" / "__init__.py").write_text(
        '"""Generated protobuf and gRPC stubs of the Tongban API."""\n'
    )
    (out / "tongban" / "v1" / "__init__.py").write_text(_INIT)
    (out / "tongban" / "py.typed").write_text("")


def _diff(a: Path, b: Path) -> list[str]:
    names = sorted({p.name for p in a.iterdir()} | {p.name for p in b.iterdir()})
    stale = []
    for name in names:
        if name == "__pycache__":
            continue
        pa, pb = a / name, b / name
        if not (pa.exists() and pb.exists()) or not filecmp.cmp(pa, pb, shallow=False):
            stale.append(name)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the stubs are stale")
    parser.add_argument("--root", type=Path, default=ROOT, help="project root (default: this repo)")
    args = parser.parse_args(argv)
    root: Path = args.root.resolve()
    package_dir = root / "tongban" / "v1"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        _generate(out, root / "proto")
        fresh = out / "tongban"
        if args.check:
            stale = _diff(fresh / "v1", package_dir) + [
                n
                for n in ("__init__.py", "py.typed")
                if not (root / "tongban" / n).exists()
                or not filecmp.cmp(fresh / n, root / "tongban" / n, shallow=False)
            ]
            if stale:
                print(
                    "stale generated stubs (run: python scripts/genproto.py):", *stale, sep="\n  "
                )
                return 1
            print("generated stubs are up to date")
            return 0
        if package_dir.exists():
            shutil.rmtree(package_dir)
        package_dir.parent.mkdir(exist_ok=True)
        shutil.copytree(fresh / "v1", package_dir)
        for n in ("__init__.py", "py.typed"):
            shutil.copy(fresh / n, root / "tongban" / n)
    print(f"generated {package_dir.relative_to(root)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
