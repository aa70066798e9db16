"""Translate RPC vs a bare grpc.aio echo, unary, 64 in flight, same client, one run.

The gateway translates a Zhongshan case into Shenzhen's schema (full validation); the echo
server returns a message of the same size. Two gateways run side by side: as configured by
default (concurrent calls run together in windows once enough arrive together,
`server.translate_batch_window_ms = 2`), and with that window off (`0`). A last round at 4
calls in flight shows what the window's probes cost a client with few calls at a time. In each
round the echo runs for half its seconds before the gateways and half after (a machine changing
speed during the round moves all sides alike: ``bracketed`` in common.py). Each
round also prints the load while it was measured (how busy the machine and each server's event
loop were: which of them bounds the ratio). Last line: JSON with ``vs_echo`` (default
configuration) and ``vs_echo_unbatched``.

Usage: python bench/translate.py [--seconds 5] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import (
    ECHO_SERVICE,
    EchoServer,
    GatewayProcess,
    bracketed,
    cpu_figures,
    drive_measured,
    load_figures,
    load_text,
    report,
    translate_payloads,
)

ENV = {"TONGBAN_AUTH__MODE": "none", "TONGBAN_DELIVERY__ENABLED": "false"}
UNBATCHED = {**ENV, "TONGBAN_SERVER__TRANSLATE_BATCH_WINDOW_MS": "0"}
METHOD = "/tongban.v1.TranslationService/Translate"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    requests = translate_payloads()
    size = len(requests[0])
    echo_payloads = [b"x" * size]
    # Every measurement, by server: rates, CPU per call and load are all read from these.
    runs: dict[str, list[dict[str, Any]]] = {"echo": [], "gateway": [], "unbatched": []}
    with (
        tempfile.TemporaryDirectory() as tmp,
        EchoServer() as echo,
        GatewayProcess(ENV, Path(tmp) / "default") as gw,
        GatewayProcess(UNBATCHED, Path(tmp) / "unbatched") as ugw,
    ):
        targets = {
            "echo": (echo.proc.pid, echo.port, f"/{ECHO_SERVICE}/Unary", echo_payloads),
            "gateway": (gw.proc.pid, gw.port, METHOD, requests),
            "unbatched": (ugw.proc.pid, ugw.port, METHOD, requests),
        }

        def measure(name: str, concurrency: int, seconds: float | None = None) -> dict[str, Any]:
            pid, port, method, payloads = targets[name]
            result = drive_measured(
                pid,
                "unary",
                f"127.0.0.1:{port}",
                method,
                payloads,
                concurrency=concurrency,
                seconds=seconds or args.seconds,
            )
            assert not result["errors"], result["errors"]
            return result

        for r in range(args.rounds):
            # The two gateways take turns going first; the echo brackets them (half its
            # seconds before, half after: a machine changing speed moves all sides alike).
            order = ["gateway", "unbatched"] if r % 2 == 0 else ["unbatched", "gateway"]
            before = measure("echo", args.concurrency, args.seconds / 2)
            got = {name: measure(name, args.concurrency) for name in order}
            got["echo"] = bracketed(before, measure("echo", args.concurrency, args.seconds / 2))
            for name, g in got.items():
                runs[name].append(g)
            e = got["echo"]["rate"]
            print(
                f"round: echo {e:,.0f}/s  translate {got['gateway']['rate']:,.0f}/s "
                f"({got['gateway']['rate'] / e:.3f})  window off {got['unbatched']['rate']:,.0f}/s "
                f"({got['unbatched']['rate'] / e:.3f}); server CPU per call: echo "
                f"{got['echo']['cpu_us']} us, gateway {got['gateway']['cpu_us']} us, window off "
                f"{got['unbatched']['cpu_us']} us; load: echo {load_text(got['echo'])}, gateway "
                f"{load_text(got['gateway'])}, window off {load_text(got['unbatched'])}"
            )
        before = measure("echo", 4, args.seconds / 2)
        few = {name: measure(name, 4) for name in ("gateway", "unbatched")}
        few["echo"] = bracketed(before, measure("echo", 4, args.seconds / 2))
        print(
            f"4 in flight: echo {few['echo']['rate']:,.0f}/s  translate "
            f"{few['gateway']['rate'] / few['echo']['rate']:.3f}  window off "
            f"{few['unbatched']['rate'] / few['echo']['rate']:.3f}"
        )

    rates = {name: [float(g["rate"]) for g in got] for name, got in runs.items()}
    cpu = {name: [g["cpu_us"] for g in got] for name, got in runs.items()}

    def ratio(name: str) -> float:
        return round(
            statistics.median(g / e for g, e in zip(rates[name], rates["echo"], strict=True)), 3
        )

    unbatched_cpu = cpu_figures(cpu["echo"], cpu["unbatched"])
    report(
        {
            "bench": "translate",
            "message_bytes": size,
            "concurrency": args.concurrency,
            "echo_rps": round(statistics.median(rates["echo"])),
            "translate_rps": round(statistics.median(rates["gateway"])),
            # The median of the per-round ratios: each round measures all side by side.
            "vs_echo": ratio("gateway"),
            # What a call costs the server (all threads and child processes), in CPU us.
            **cpu_figures(cpu["echo"], cpu["gateway"]),
            "vs_echo_unbatched": ratio("unbatched"),
            "unbatched_cpu_us": unbatched_cpu.get("gateway_cpu_us"),
            "vs_echo_at_4": round(few["gateway"]["rate"] / few["echo"]["rate"], 3),
            "vs_echo_unbatched_at_4": round(few["unbatched"]["rate"] / few["echo"]["rate"], 3),
            # How busy the machine, and each server's busiest thread (its event loop), were:
            # a ratio is bounded by the machine's cores or by that one thread.
            **load_figures(runs["echo"], "echo"),
            **load_figures(runs["gateway"], "gateway"),
            **load_figures(runs["unbatched"], "unbatched"),
        }
    )


if __name__ == "__main__":
    main()
