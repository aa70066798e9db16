"""The stale-stubs check fails when a .proto changes without regeneration."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts/genproto.py"), "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
    )


def test_stale_stubs_detected(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copytree(
        ROOT / "tongban", tmp_path / "tongban", ignore=shutil.ignore_patterns("__pycache__")
    )
    fresh = check(tmp_path)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    proto = tmp_path / "proto/tongban/v1/common.proto"
    proto.write_text(
        proto.read_text().replace(
            "  bytes json = 2;\n", "  bytes json = 2;\n  // Added.\n  string note = 3;\n"
        )
    )
    stale = check(tmp_path)
    assert stale.returncode == 1
    assert "common_pb2.py" in stale.stdout
