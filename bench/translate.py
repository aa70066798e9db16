"""Translate RPC vs a bare grpc.aio echo, unary, 64 in flight, same client, one run.

The gateway translates a Zhongshan case into Shenzhen's schema (full validation); the echo
server returns a message of the same size. Last line: JSON with ``vs_echo``.

Usage: python bench/translate.py [--seconds 5] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common import (
    ECHO_SERVICE,
    EchoServer,
    GatewayProcess,
    cpu_figures,
    drive_measured,
    report,
    translate_payloads,
)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    requests = translate_payloads()
    size = len(requests[0])
    echo_payloads = [b"x" * size]
    gw_rates, echo_rates = [], []
    gw_cpu, echo_cpu = [], []
    with (
        tempfile.TemporaryDirectory() as tmp,
        EchoServer() as echo,
        GatewayProcess(
            {"TONGBAN_AUTH__MODE": "none", "TONGBAN_DELIVERY__ENABLED": "false"}, Path(tmp)
        ) as gw,
    ):
        for _ in range(args.rounds):
            e = drive_measured(
                echo.proc.pid,
                "unary",
                f"127.0.0.1:{echo.port}",
                f"/{ECHO_SERVICE}/Unary",
                echo_payloads,
                concurrency=args.concurrency,
                seconds=args.seconds,
            )
            g = drive_measured(
                gw.proc.pid,
                "unary",
                f"127.0.0.1:{gw.port}",
                "/tongban.v1.TranslationService/Translate",
                requests,
                concurrency=args.concurrency,
                seconds=args.seconds,
            )
            assert not g["errors"], g["errors"]
            echo_rates.append(e["rate"])
            gw_rates.append(g["rate"])
            echo_cpu.append(e["cpu_us"])
            gw_cpu.append(g["cpu_us"])
            print(
                f"round: echo {e['rate']:,.0f}/s  translate {g['rate']:,.0f}/s  "
                f"ratio {g['rate'] / e['rate']:.3f}; server CPU per call: echo {e['cpu_us']} us, "
                f"gateway {g['cpu_us']} us"
            )
    echo_rate, gw_rate = statistics.median(echo_rates), statistics.median(gw_rates)
    report(
        {
            "bench": "translate",
            "message_bytes": size,
            "concurrency": args.concurrency,
            "echo_rps": round(echo_rate),
            "translate_rps": round(gw_rate),
            # The median of the per-round ratios: each round measures both side by side.
            "vs_echo": round(
                statistics.median(g / e for g, e in zip(gw_rates, echo_rates, strict=True)), 3
            ),
            # What a call costs the server (all threads and child processes), in CPU us.
            **cpu_figures(echo_cpu, gw_cpu),
        }
    )


if __name__ == "__main__":
    main()
