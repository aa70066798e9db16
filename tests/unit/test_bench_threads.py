"""bench/threads.py: a server's CPU per message, by group of threads."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from threads import per_message, thread_times

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc")


def test_groups_of_this_process() -> None:
    """The main thread is the event loop; another thread of the process is one of the others."""
    ready, release = threading.Event(), threading.Event()

    def spin() -> None:
        end = time.thread_time() + 0.2
        while time.thread_time() < end:
            pass
        ready.set()
        release.wait(10)

    t = threading.Thread(target=spin)
    t.start()
    try:
        assert ready.wait(10)
        times = thread_times(os.getpid())
    finally:
        release.set()
        t.join()
    groups = {key[1]: group for key, (group, _, _) in times.items()}
    assert groups[os.getpid()] == "event loop"
    assert groups[t.native_id] == "other threads"
    _, user, system = times[(os.getpid(), t.native_id)]
    assert user + system >= 0.15  # it spun 0.2 s (clock ticks of 10 ms)


def test_per_message_adds_each_groups_threads() -> None:
    before = {
        (1, 1): ("event loop", 1.0, 0.5),
        (1, 2): ("gRPC event engine", 2.0, 1.0),
        (1, 3): ("gRPC event engine", 0.0, 0.0),
        (9, 9): ("writer process", 3.0, 0.0),
    }
    after = {
        (1, 1): ("event loop", 1.4, 0.6),
        (1, 2): ("gRPC event engine", 2.1, 1.2),
        (1, 3): ("gRPC event engine", 0.1, 0.1),
        (1, 4): ("other threads", 0.2, 0.0),  # started between the readings
        (9, 9): ("writer process", 3.0, 0.0),  # idle: left out
    }
    rows = per_message(before, after, 10_000)
    assert rows == {
        "event loop": (40.0, 10.0),
        "gRPC event engine": (20.0, 30.0),
        "other threads": (20.0, 0.0),
    }
