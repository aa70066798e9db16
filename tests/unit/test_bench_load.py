"""The benchmarks' load figures: how busy the machine and the server's busiest thread were."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from common import _Snapshot, load_figures, load_text

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs /proc")


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_thread_that_spins_shows_as_the_busiest_thread() -> None:
    spun, release = threading.Event(), threading.Event()

    def spin_then_wait() -> None:
        _spin(0.4)
        spun.set()
        release.wait(10)  # alive at the second snapshot: /proc lists live threads only

    first = _Snapshot(os.getpid())
    started = time.perf_counter()
    t = threading.Thread(target=spin_then_wait)
    t.start()
    try:
        assert spun.wait(10)
        time.sleep(0.1)
        load = _Snapshot(os.getpid()).load(first)
        elapsed = time.perf_counter() - started
    finally:
        release.set()
        t.join()
    # The thread spun 0.4 s of CPU and nothing else of this process spins: the busiest
    # thread's share is about that CPU time over the elapsed time (clock ticks: 10 ms).
    assert 0.4 / elapsed - 0.1 <= load["busiest_thread"] <= 1.05
    assert 0.0 < load["busy"] <= 1.0


def test_an_idle_server_has_an_idle_busiest_thread() -> None:
    first = _Snapshot(os.getpid())
    time.sleep(0.2)
    load = _Snapshot(os.getpid()).load(first)
    assert 0.0 <= load["busiest_thread"] < 0.5


def test_without_a_server_there_is_only_the_machine() -> None:
    first = _Snapshot(None)
    _spin(0.05)
    assert set(_Snapshot(None).load(first)) == {"busy"}


def test_medians_and_text() -> None:
    runs = [
        {"busy": 0.9, "busiest_thread": 0.5},
        {"busy": 0.7, "busiest_thread": 0.8},
        {"busy": 0.8},
    ]
    assert load_figures(runs, "echo") == {"echo_busy": 0.8, "echo_busiest_thread": 0.65}
    assert load_figures([{}], "x") == {}
    assert load_text({"busy": 0.934, "busiest_thread": 0.5}) == "busy 0.93, loop 0.50"
    assert load_text({}) == ""
