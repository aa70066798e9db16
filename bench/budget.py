"""What the SubmitCases stream's target leaves for the gateway's own work, measured.

The target compares the gateway's SubmitCases stream with a bare client stream that does
nothing with its messages. This benchmark measures what a server doing *some* work per message
reaches against that bare stream: the same echo, spending ``N`` µs of CPU on each message it
reads (a busy loop on the event loop, ``--work``), driven by the same client at the same
concurrency as ``submit.py``'s stream (8 streams of 200 messages). In the same run it drives the
gateway's SubmitCases, and it measures the gateway's own work per case alone, outside gRPC and
with nothing else running: the event loop's share of a stream (``bench/instructions.py``'s
``stream`` workload: the method as registered, checks, translation, idempotency hash, the
intents packed and pickled, the answer) and the writer process's share (its ``write`` workload:
a batch of 200 cases unpickled and committed to a SQLite store with fsync).

It prints, for each amount of work, the rate, its ratio to the bare echo and the server's and
the client's CPU per message; then where the gateway falls among them (the work per message of
an echo as fast as the gateway, interpolated), the most work per message that still reaches
0.5x, and the gateway's own work measured alone. Last line: JSON with ``work_ratios``,
``gateway_vs_echo``, ``gateway_as_work_us``, ``work_at_half_us`` and ``gateway_work_us``.

Usage: python bench/budget.py [--seconds 4] [--work 10,20,30,40,60] [--rounds 2]
"""

from __future__ import annotations

import argparse
import gc
import itertools
import resource
import statistics
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common import (
    ECHO_SERVICE,
    WORK_HEADER,
    EchoServer,
    GatewayProcess,
    drive_measured,
    load_figures,
    load_text,
    report,
)
from submit import ENV, META, STREAMS, stream_payloads


def interpolate(points: Sequence[tuple[float, float]], y: float) -> float | None:
    """The x at which the piecewise-linear curve through ``points`` ((x, y), x ascending, y
    falling as x grows) reaches ``y``; None when ``y`` lies outside the points' range."""
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        lo, hi = min(y0, y1), max(y0, y1)
        if lo <= y <= hi:
            if y0 == y1:
                return x0
            return x0 + (x1 - x0) * (y0 - y) / (y0 - y1)
    return None


def cpu_per_call(fn: Callable[[int], Any], warm: int, calls: int) -> float:
    """This process's CPU microseconds (user + system) per call of ``fn(i)``, after ``warm``
    calls; the garbage collector runs as it would in the gateway."""
    for i in range(warm):
        fn(i)
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF)
    for i in range(warm, warm + calls):
        fn(i)
    after = resource.getrusage(resource.RUSAGE_SELF)
    spent = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return round(1e6 * spent / calls, 1)


def gateway_work() -> dict[str, float]:
    """The gateway's own work per streamed case, measured alone in this process (µs of CPU):
    the event loop's share and the writer process's (bench/instructions.py's workloads)."""
    from instructions import ROOT, _workload

    loop = cpu_per_call(_workload("stream", ROOT), warm=400, calls=4000)
    writer = cpu_per_call(_workload("write", ROOT), warm=400, calls=3000)
    return {"event loop": loop, "writer process": writer, "total": round(loop + writer, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--work", default="10,20,30,40,60", help="µs of CPU per message, by commas")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    works = sorted({float(w) for w in args.work.split(",") if float(w) > 0})
    if not Path("/proc/self/task").is_dir():
        raise SystemExit("needs Linux's /proc (the servers' CPU per message)")
    # First, while nothing else runs: the gateway's own work alone.
    own = gateway_work()
    n = int(args.rounds * (args.seconds + 1) * 32_000) + 40_000
    payloads = stream_payloads(n, "w")
    echo_body = [b"x" * len(payloads[0])]
    runs: dict[float, list[dict[str, Any]]] = {w: [] for w in (0.0, *works)}
    gateway_runs: list[dict[str, Any]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        EchoServer() as echo,
        GatewayProcess(ENV, Path(tmp)) as gw,
    ):
        echo_target = f"127.0.0.1:{echo.port}"
        method = f"/{ECHO_SERVICE}/ClientStreamWork"

        def echo_run(work: float, seconds: float) -> dict[str, Any]:
            return drive_measured(
                echo.proc.pid,
                "client_stream",
                echo_target,
                method,
                echo_body,
                concurrency=STREAMS,
                seconds=seconds,
                metadata=[(WORK_HEADER, str(work))],
            )

        gw_run = (
            gw.proc.pid,
            "client_stream",
            f"127.0.0.1:{gw.port}",
            "/tongban.v1.CaseExchangeService/SubmitCases",
        )
        # Warm-ups: connections, the gateway's mapping set and writer process.
        echo_run(0.0, 1.0)
        drive_measured(*gw_run, payloads[:20_000], concurrency=STREAMS, seconds=1.5, metadata=META)
        at = 20_000
        for r in range(args.rounds):
            # The bare echo first and last in each round: the machine's drift shows in it.
            for work in (0.0, *works):
                runs[work].append(echo_run(work, args.seconds))
            res = drive_measured(
                *gw_run, payloads[at:], concurrency=STREAMS, seconds=args.seconds, metadata=META
            )
            assert not res["errors"], res["errors"]
            assert not res["repeats"], f"{res['repeats']} replays: raise the payload count"
            at += int(res["rate"] * (args.seconds + 1)) + 1_000
            gateway_runs.append(res)
            runs[0.0].append(echo_run(0.0, args.seconds))
            print(
                f"round {r}: bare echo {runs[0.0][-2]['rate']:,.0f} / {runs[0.0][-1]['rate']:,.0f} "
                f"msg/s, gateway {res['rate']:,.0f} msg/s ({load_text(res)})"
            )

    def median(values: list[Any]) -> float:
        return float(statistics.median(values))

    bare = median([x["rate"] for x in runs[0.0]])
    print(
        f"{'work µs/msg':>11s} {'msg/s':>8s} {'vs bare':>8s} {'server µs':>10s} {'client µs':>10s}"
    )
    table = []
    for work in (0.0, *works):
        rate = median([x["rate"] for x in runs[work]])
        server = median([x["cpu_us"] for x in runs[work]])
        client = median([x["client_cpu_us"] for x in runs[work]])
        table.append((work, rate / bare))
        print(f"{work:11.0f} {rate:8,.0f} {rate / bare:8.3f} {server:10.1f} {client:10.1f}")
    g_rate = median([x["rate"] for x in gateway_runs])
    g_server = median([x["cpu_us"] for x in gateway_runs])
    g_client = median([x["client_cpu_us"] for x in gateway_runs])
    g_ratio = g_rate / bare
    print(f"{'gateway':>11s} {g_rate:8,.0f} {g_ratio:8.3f} {g_server:10.1f} {g_client:10.1f}")
    as_work = interpolate(table, g_ratio)
    at_half = interpolate(table, 0.5)

    def text(v: float | None) -> str:
        return f"{v:.0f} µs" if v is not None else "outside the measured range"

    print(
        f"the gateway is as fast as an echo doing {text(as_work)} of work per message; "
        f"0.5x leaves {text(at_half)} per message; the gateway's own work per case, measured "
        f"alone: {own['event loop']} µs on the event loop + {own['writer process']} µs in the "
        f"writer process = {own['total']} µs"
    )
    report(
        {
            "bench": "budget",
            "streams": STREAMS,
            "echo_mps": round(bare),
            "work_ratios": {f"{w:g}": round(r, 3) for w, r in table[1:]},
            "gateway_mps": round(g_rate),
            "gateway_vs_echo": round(g_ratio, 3),
            "gateway_as_work_us": round(as_work, 1) if as_work is not None else None,
            "work_at_half_us": round(at_half, 1) if at_half is not None else None,
            "gateway_work_us": own,
            **load_figures(runs[0.0], "echo"),
            **load_figures(gateway_runs, "gateway"),
        }
    )


if __name__ == "__main__":
    main()
