"""Where a streamed case's (or a unary SubmitCase's) server CPU goes, thread by thread.

Runs ``submit.py``'s loads (a SubmitCases stream: 8 client streams of 200 cases; unary
SubmitCase: 64 in flight) against the bare echo and the gateway, one after the other, and reads
each server's threads from ``/proc`` at the start and the end of the measured seconds. Prints,
in microseconds of CPU per message (or call), user + system:

- ``event loop``: the server's main thread (asyncio and everything it runs);
- ``gRPC event engine``: gRPC's C++ threads (``event_engine`` in ``/proc``): socket reads and
  writes, HTTP/2;
- ``other threads``: the rest of the server process (gRPC's poller, the log writer, the store's
  read workers);
- ``writer process``: the gateway's child processes (the store's writer process).

The tables in docs/performance.md ("Where the remaining gaps are") come from this. Linux only.
Last line: JSON with each server's rows, rate, load and the client's CPU per message.

Usage: python bench/threads.py [--kind stream|unary] [--seconds 8]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from common import (
    ECHO_SERVICE,
    EchoServer,
    GatewayProcess,
    _process_tree,
    drive_measured,
    load_text,
    report,
    stat_times,
)
from submit import ENV, META, STREAMS, stream_payloads, submit_payloads

GROUPS = ("event loop", "gRPC event engine", "other threads", "writer process")


def thread_times(pid: int) -> dict[tuple[int, int], tuple[str, float, float]]:
    """(process, thread) -> (group, user seconds, system seconds) for ``pid`` and its children."""
    out = {}
    for p in _process_tree(pid):
        for task in Path(f"/proc/{p}/task").iterdir():
            name, user, system = stat_times(task / "stat")
            tid = int(task.name)
            if p != pid:
                group = "writer process"
            elif tid == pid:
                group = "event loop"
            elif name.startswith("event_engine"):
                group = "gRPC event engine"
            else:
                group = "other threads"
            out[(p, tid)] = (group, user, system)
    return out


def per_message(
    before: dict[tuple[int, int], tuple[str, float, float]],
    after: dict[tuple[int, int], tuple[str, float, float]],
    messages: float,
) -> dict[str, tuple[float, float]]:
    """Group -> (user, system) µs of CPU per message between two readings (threads that ended
    between them are not counted; a thread that started counts from zero)."""
    rows = {g: [0.0, 0.0] for g in GROUPS}
    for key, (group, user, system) in after.items():
        _, user0, system0 = before.get(key, (group, 0.0, 0.0))
        rows[group][0] += user - user0
        rows[group][1] += system - system0
    return {
        g: (round(1e6 * u / messages, 1), round(1e6 * s / messages, 1))
        for g, (u, s) in rows.items()
        if u + s > 0
    }


def measure(
    pid: int, kind: str, target: str, method: str, payloads: list[bytes], **kw: Any
) -> dict[str, Any]:
    """One measured run: its rate and load, and the server's CPU per message by group."""
    before = thread_times(pid)
    result = drive_measured(pid, kind, target, method, payloads, **kw)
    after = thread_times(pid)
    result["threads"] = per_message(before, after, result["rate"] * kw["seconds"])
    return result


def print_table(kind: str, echo: dict[str, Any], gateway: dict[str, Any]) -> None:
    unit = "message" if kind == "stream" else "call"
    print(f"µs of CPU per {unit}, user + system")
    print(f"{'':22s} {'echo':>16s} {'gateway':>16s}")
    totals = []
    for group in GROUPS:
        cells = []
        for res in (echo, gateway):
            u, s = res["threads"].get(group, (0.0, 0.0))
            cells.append(f"{u:7.1f} + {s:6.1f}" if u + s else "")
        print(f"{group:22s} {cells[0]:>16s} {cells[1]:>16s}")
    for res in (echo, gateway):
        totals.append(sum(u + s for u, s in res["threads"].values()))
    print(f"{'total':22s} {totals[0]:16.1f} {totals[1]:16.1f}")
    print(
        f"rate: echo {echo['rate']:,.0f}/s, gateway {gateway['rate']:,.0f}/s; client CPU per "
        f"{unit}: {echo['client_cpu_us']} / {gateway['client_cpu_us']} µs; "
        f"load: {load_text(echo)} / {load_text(gateway)}"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=("stream", "unary"), default="stream")
    p.add_argument("--seconds", type=float, default=8.0)
    args = p.parse_args()
    if not Path("/proc/self/task").is_dir():
        raise SystemExit("needs Linux's /proc")
    stream = args.kind == "stream"
    # Room for twice the fastest rates seen (see submit.py), warm-up included.
    n = int((args.seconds + 2) * (32_000 if stream else 8_000))
    if stream:
        payloads = stream_payloads(n, "t")
        kind, echo_method, method = "client_stream", "ClientStream", "SubmitCases"
        concurrency = STREAMS
    else:
        payloads = submit_payloads(n, "t")
        kind, echo_method, method, concurrency = "unary", "Unary", "SubmitCase", 64
    warm = payloads[: len(payloads) // 10]
    with (
        tempfile.TemporaryDirectory() as tmp,
        EchoServer() as echo,
        GatewayProcess(ENV, Path(tmp)) as gw,
    ):
        echo_run = (echo.proc.pid, kind, f"127.0.0.1:{echo.port}", f"/{ECHO_SERVICE}/{echo_method}")
        gw_run = (
            gw.proc.pid,
            kind,
            f"127.0.0.1:{gw.port}",
            f"/tongban.v1.CaseExchangeService/{method}",
        )
        echo_body = [b"x" * len(payloads[0])]
        # Warm-ups: connections, the mapping set's first translations, the writer process.
        drive_measured(*echo_run, echo_body, concurrency=concurrency, seconds=1.5)
        drive_measured(*gw_run, warm, concurrency=concurrency, seconds=1.5, metadata=META)
        e = measure(*echo_run, echo_body, concurrency=concurrency, seconds=args.seconds)
        g = measure(
            *gw_run,
            payloads[len(warm) :],
            concurrency=concurrency,
            seconds=args.seconds,
            metadata=META,
        )
        assert not g["errors"], g["errors"]
        assert not g["repeats"], f"{g['repeats']} replays: raise the payload count"
    print_table(args.kind, e, g)
    report(
        {
            "bench": "threads",
            "kind": args.kind,
            "echo_steal": e.get("steal"),
            "gateway_steal": g.get("steal"),
            **{
                name: {
                    "rate": round(res["rate"]),
                    "cpu_us": res["cpu_us"],
                    "client_cpu_us": res["client_cpu_us"],
                    "busy": res.get("busy"),
                    "steal": res.get("steal"),
                    "threads": {k: list(v) for k, v in res["threads"].items()},
                }
                for name, res in (("echo", e), ("gateway", g))
            },
        }
    )


if __name__ == "__main__":
    main()
