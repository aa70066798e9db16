"""Run every check of the project, in order, and stop at the first failure.

ruff (lint and format), mypy --strict on the packages, buf lint, buf breaking against the previous
commit, the stale-stubs check, the mapping engine's C extension (where a C compiler exists), promtool (rules, config, alert unit tests), the mapping checks and
golden tests, then pytest (which includes a real Prometheus scrape test).

Usage: python scripts/check.py [pytest arguments]
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(title: str, cmd: list[str]) -> None:
    print(f"==> {title}: {' '.join(cmd)}", flush=True)
    started = time.monotonic()
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc != 0:
        print(f"FAILED: {title} (exit {rc})", flush=True)
        sys.exit(rc)
    print(f"    ok ({time.monotonic() - started:.1f}s)", flush=True)


def has_previous_commit() -> bool:
    return (
        subprocess.call(
            ["git", "rev-parse", "--verify", "--quiet", "HEAD~1"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        == 0
    )


def main() -> None:
    py = sys.executable
    run("ruff check", [str(BIN / "ruff"), "check", "."])
    run("ruff format", [str(BIN / "ruff"), "format", "--check", "."])
    run("mypy", [str(BIN / "mypy")])
    run("buf lint", [str(BIN / "buf"), "lint"])
    if has_previous_commit():
        run("buf breaking", [str(BIN / "buf"), "breaking", "--against", ".git#ref=HEAD~1"])
    else:
        print("==> buf breaking: skipped (no previous commit to compare with)")
    run("generated stubs up to date", [py, "scripts/genproto.py", "--check"])
    # The mapping engine's C fast path is optional for an install, not here: where a C compiler
    # exists, `pip install` must have built it (tests/unit/test_native.py skips without it).
    if shutil.which("cc") or shutil.which("gcc"):
        run("mapping fast path built", [py, "-c", "import adapters.mapping._native"])
    else:
        print("==> mapping fast path: no C compiler here; the generated Python does the work")
    promtool = shutil.which("promtool")
    if promtool is None:
        print("FAILED: promtool not found (Debian package prometheus; `make test` installs it)")
        sys.exit(1)
    run(
        "promtool check rules",
        [
            promtool,
            "check",
            "rules",
            *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "monitoring/rules").glob("*.yml")),
        ],
    )
    run("promtool check config", [promtool, "check", "config", "monitoring/prometheus.yml"])
    run("promtool test rules", [promtool, "test", "rules", "monitoring/tests/alerts_test.yml"])
    run(
        "grafana dashboard is valid JSON",
        [py, "-c", "import json,sys; json.load(open('monitoring/grafana/tongban-dashboard.json'))"],
    )
    run("mapping check", [str(BIN / "tongban"), "mapping", "check", "mappings"])
    run("mapping test", [str(BIN / "tongban"), "mapping", "test", "mappings"])
    env_args = sys.argv[1:] or []
    run("pytest", [py, "-m", "pytest", *env_args])
    print("all checks passed")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    main()
