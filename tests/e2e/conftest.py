"""Helpers to run the ``tongban`` command as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateway.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
TONGBAN = [sys.executable, "-m", "gateway.cli"]

__all__ = ["ROOT", "TONGBAN", "free_port", "run"]


def run(
    *args: str,
    stdin: bytes | None = None,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*TONGBAN, *args],
        input=stdin.decode() if stdin else None,
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
