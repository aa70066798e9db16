"""Logging: JSON lines; in the background (``tongban serve``) a blocked stderr never blocks the
caller, nothing queued is lost at exit, and what had to be dropped is counted."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import logs
from gateway.logs import configure_logging, flush_logging, observe_drops

ROOT = Path(__file__).resolve().parents[2]


class _Gate(io.StringIO):
    """A stream whose writes wait until the gate opens (a pipe nobody reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()

    def write(self, s: str) -> int:
        self.open.wait(30)
        return super().write(s)


@pytest.fixture
def tongban_logger() -> Iterator[logging.Logger]:
    logger = logging.getLogger("tongban")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield logger
    flush_logging()
    observe_drops(None)
    logger.handlers[:], logger.level, logger.propagate = saved


def _lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("background", [False, True])
def test_json_lines_with_fields_and_traceback(
    tongban_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch, background: bool
) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    configure_logging("INFO", "json", background=background)
    log = logging.getLogger("tongban.test")
    log.info("case %s", "accepted", extra={"exchange_id": "e1", "city": "深圳"})
    log.debug("not at INFO")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    flush_logging()
    first, second = _lines(out.getvalue())
    assert first["event"] == "case accepted"
    assert first["exchange_id"] == "e1"
    assert first["city"] == "深圳"
    assert first["level"] == "info"
    assert str(first["ts"]).endswith("Z")
    assert second["event"] == "failed"
    assert "ValueError: boom" in str(second["exception"])


def test_records_skip_what_no_formatter_prints(
    tongban_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The module-wide knobs are restored after the test, like everything monkeypatch sets.
    for knob in ("_srcfile", "logThreads", "logMultiprocessing"):
        monkeypatch.setattr(logging, knob, getattr(logging, knob))

    def walk_the_stack(*args: object, **kwargs: object) -> None:
        raise AssertionError("the caller's file and line were looked up")

    monkeypatch.setattr(logging.Logger, "findCaller", walk_the_stack)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    configure_logging("INFO", "json")
    logging.getLogger("tongban.test").info("case accepted", extra={"exchange_id": "e1"})
    (line,) = _lines(out.getvalue())
    assert line["pid"] == os.getpid()  # the process id is still collected
    assert line["exchange_id"] == "e1"


def test_a_blocked_stderr_does_not_block_the_caller_and_drops_are_counted(
    tongban_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = _Gate()
    monkeypatch.setattr(sys, "stderr", gate)
    monkeypatch.setattr(logs, "QUEUE_LIMIT", 50)
    counted: list[float] = []
    observe_drops(counted.append)  # the gateway passes its tongban_log_records_dropped_total
    configure_logging("INFO", "json", background=True)
    log = logging.getLogger("tongban.test")
    log.info("first")
    time.sleep(0.3)  # the writer takes "first" and waits on the closed gate
    started = time.perf_counter()
    for i in range(200):
        log.info("record", extra={"i": i})
    assert time.perf_counter() - started < 5  # the gate is closed: nothing waited on it
    gate.open.set()
    time.sleep(0.3)  # the writer catches up, then reports what it dropped
    log.info("after")
    flush_logging()
    lines = _lines(gate.getvalue())
    events = [line["event"] for line in lines]
    assert events[0] == "first"
    kept = [line["i"] for line in lines if line["event"] == "record"]
    assert kept == list(range(50))  # the first 50 fit the queue, in order
    dropped = [line for line in lines if line["event"] == "log records dropped"]
    assert len(dropped) == 1
    assert dropped[0]["dropped"] == 150
    assert dropped[0]["level"] == "warning"
    assert sum(counted) == 150
    assert events[-1] == "after"


def _python(script: str) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter (forks stay out of the test process)."""
    out = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out


def test_queued_records_are_written_at_exit_and_by_a_forked_child() -> None:
    script = (
        "import logging, os, sys\n"
        "from gateway.logs import configure_logging\n"
        "configure_logging('INFO', 'json', background=True)\n"
        "log = logging.getLogger('tongban.t')\n"
        "for i in range(1000):\n"
        "    log.info('parent', extra={'i': i})\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    log.info('child')\n"
        "    sys.exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "log.info('last')\n"
    )
    out = _python(script)
    lines = _lines(out.stderr)
    parent = [line["i"] for line in lines if line["event"] == "parent"]
    assert parent == list(range(1000))  # written once (not again by the child), in order
    assert [line["event"] for line in lines].count("child") == 1
    assert lines[-1]["event"] == "last"


def test_a_fork_waits_for_a_write_in_progress() -> None:
    # A child forked in the middle of a write would inherit the stream's buffer lock taken.
    script = (
        "import io, logging, os, sys, threading, time\n"
        "from gateway.logs import configure_logging\n"
        "started, ended = threading.Event(), []\n"
        "class Slow(io.StringIO):\n"
        "    def write(self, s):\n"
        "        started.set(); time.sleep(0.5); ended.append(time.monotonic())\n"
        "        return len(s)\n"
        "sys.stderr = Slow()\n"
        "configure_logging('INFO', 'json', background=True)\n"
        "logging.getLogger('tongban.t').info('slow')\n"
        "started.wait(5)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0)\n"
        "forked = time.monotonic()\n"
        "os.waitpid(pid, 0)\n"
        "print(forked >= ended[0] if ended else 'no write ended', file=sys.__stdout__)\n"
    )
    out = _python(script)
    assert out.stdout.strip() == "True"
