"""The benchmarks' load figures: how busy the machine and the server's busiest thread were,
where a server's CPU goes by group of threads (bench/threads.py), and the work-per-message
curve of bench/budget.py."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from budget import cpu_per_call, interpolate
from common import _drive, _Snapshot, bracketed, burn, load_figures, load_text, report
from threads import per_message, thread_times

pytestmark = pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs /proc")


def test_a_thread_that_spins_shows_as_the_busiest_thread() -> None:
    spun, release = threading.Event(), threading.Event()

    def spin_then_wait() -> None:
        burn(0.4)
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
    assert 0.0 <= load["steal"] <= load["busy"]
    # The client's own CPU (this process, every thread): at least what the thread spun.
    assert 0.39 <= load["client_cpu"] <= elapsed * (os.cpu_count() or 1) + 0.05


def test_an_idle_server_has_an_idle_busiest_thread() -> None:
    first = _Snapshot(os.getpid())
    time.sleep(0.2)
    load = _Snapshot(os.getpid()).load(first)
    assert 0.0 <= load["busiest_thread"] < 0.5


def test_without_a_server_there_is_only_the_machine() -> None:
    first = _Snapshot(None)
    burn(0.05)
    assert set(_Snapshot(None).load(first)) == {"busy", "client_cpu", "steal"}


def test_medians_and_text() -> None:
    runs = [
        {"busy": 0.9, "busiest_thread": 0.5},
        {"busy": 0.7, "busiest_thread": 0.8},
        {"busy": 0.8},
    ]
    assert load_figures(runs, "echo") == {"echo_busy": 0.8, "echo_busiest_thread": 0.65}
    assert load_figures([{}], "x") == {}
    assert load_text({"busy": 0.934, "busiest_thread": 0.5}) == "busy 0.93, loop 0.50"
    assert load_text({"busy": 0.9, "steal": 0.0}) == "busy 0.90"  # none stolen: not shown
    steal = load_text({"busy": 0.9, "busiest_thread": 0.5, "steal": 0.304})
    assert steal == "busy 0.90, loop 0.50, steal 0.30"
    assert load_figures([{"steal": 0.1}, {"steal": 0.3}], "x") == {"x_steal": 0.2}
    assert load_text({}) == ""


def test_a_bracketed_echo_cancels_a_steady_drift() -> None:
    """The echo measured for half its seconds before the gateway and half after: a machine
    slowing down steadily gives the echo's mean what the gateway saw in between."""
    before = {
        "rate": 5000.0,
        "cpu_us": 200.0,
        "client_cpu_us": 100.0,
        "busy": 0.9,
        "busiest_thread": 0.7,
        "errors": {"UNAVAILABLE": 1},
        "repeats": 0,
    }
    after = {
        "rate": 3000.0,
        "cpu_us": 300.0,
        "client_cpu_us": 60.0,
        "busy": 0.95,
        "busiest_thread": 0.8,
        "errors": {"UNAVAILABLE": 2, "INTERNAL": 1},
        "repeats": 3,
    }
    both = bracketed(before, after)
    assert both["rate"] == 4000.0  # what a steady drift gives the middle of the round
    assert both["cpu_us"] == 237.5  # per call: (200 * 5000 + 300 * 3000) / 8000
    assert both["client_cpu_us"] == 85.0  # (100 * 5000 + 60 * 3000) / 8000
    assert both["busy"] == pytest.approx(0.925)
    assert both["busiest_thread"] == pytest.approx(0.75)
    assert both["errors"] == {"UNAVAILABLE": 3, "INTERNAL": 1}
    assert both["repeats"] == 3
    assert both["halves"] == (5000.0, 3000.0)
    assert before["rate"] == 5000.0  # the halves are left as they were
    unknown = bracketed({**before, "cpu_us": None}, after)
    assert unknown["cpu_us"] is None
    assert unknown["client_cpu_us"] == 85.0


def test_a_report_warns_when_much_of_the_machine_was_stolen(
    capsys: pytest.CaptureFixture[str],
) -> None:
    report({"bench": "x", "echo_steal": 0.02, "gateway_steal": 0.01})
    assert capsys.readouterr().out.splitlines() == [
        '{"bench": "x", "echo_steal": 0.02, "gateway_steal": 0.01}'
    ]
    report({"bench": "x", "echo_steal": None})  # no /proc: nothing to say
    assert capsys.readouterr().out.splitlines() == ['{"bench": "x", "echo_steal": null}']
    report({"bench": "x", "echo_steal": 0.3, "gateway_steal": 0.08, "vs_echo": 0.5})
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("warning: the hypervisor gave up to 30% of this machine's CPU")
    assert "echo_steal, gateway_steal" in lines[0]
    assert lines[1].startswith('{"bench": "x"')  # the JSON stays the last line


def test_groups_of_this_process() -> None:
    """The main thread is the event loop; another thread of the process is one of the others."""
    ready, release = threading.Event(), threading.Event()

    def spin() -> None:
        burn(0.2)
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


def test_burn_spends_the_thread_cpu_it_is_asked_for() -> None:
    start = time.thread_time()
    burn(0.05)
    spent = time.thread_time() - start
    assert 0.05 <= spent < 0.08
    start = time.thread_time()
    burn(0.0)
    burn(-1.0)
    assert time.thread_time() - start < 0.005


def test_cpu_per_call_counts_the_calls_after_the_warm_ones() -> None:
    calls: list[int] = []

    def work(i: int) -> None:
        calls.append(i)
        burn(0.002)

    us = cpu_per_call(work, warm=3, calls=10)
    assert calls == list(range(13))
    assert 2000 <= us < 3000


def test_interpolate_finds_where_a_falling_curve_crosses() -> None:
    curve = [(0.0, 1.0), (10.0, 0.7), (20.0, 0.6), (40.0, 0.5), (60.0, 0.35)]
    assert interpolate(curve, 0.5) == 40.0
    assert interpolate(curve, 0.65) == pytest.approx(15.0)
    assert interpolate(curve, 0.4) == pytest.approx(60.0 - 20.0 * (0.05 / 0.15))
    assert interpolate(curve, 1.0) == 0.0
    assert interpolate(curve, 1.2) is None  # faster than the bare echo
    assert interpolate(curve, 0.2) is None  # slower than the most work measured
    # A flat piece answers its start; a noisy, non-monotonic curve answers its first crossing.
    assert interpolate([(0.0, 1.0), (10.0, 0.5), (20.0, 0.5)], 0.5) == 10.0
    assert interpolate([(0.0, 1.0), (10.0, 0.55), (20.0, 0.6), (30.0, 0.4)], 0.58) == (
        pytest.approx(10.0 * (0.42 / 0.45))
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_the_load_client_spreads_its_calls_over_its_connections(channels: int) -> None:
    # `tongban serve --workers N` gets each connection's calls in one worker, so bench/workers.py
    # needs a client whose calls really go over several connections (grpc shares one between
    # channels to the same target unless each has its own subchannel pool).
    peers: set[str] = set()

    async def main() -> dict[str, object]:
        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            peers.add(context.peer())
            return request

        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(unary)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("t.Echo", {"Unary": handler}),)
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            return await _drive(
                "unary", f"127.0.0.1:{port}", "/t.Echo/Unary", [b"x"], 6, 0.2, [], None, channels
            )
        finally:
            await server.stop(None)

    result = asyncio.run(main())
    assert result["rate"] > 0
    assert not result["errors"]
    assert len(peers) == channels  # one client port per connection
