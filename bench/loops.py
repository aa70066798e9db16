"""The gateway on asyncio's loop and on uvloop, each against a bare echo on its own loop.

Two echoes (one per loop) and two gateways (one per loop, as configured otherwise by default)
run side by side. In each round, for each loop, the echo runs for half its seconds just before
its gateway and half just after (``bracketed`` in common.py); the order of the two loops
alternates between rounds. Each round prints both ratios, both echoes' and gateways' rates and
their server CPU per call (or per streamed message). What the loop changes shows twice: in the
gateways' own rates (the same client against each), and in the ratios, which compare each
gateway with the bare stack on its own loop.

Kinds: ``translate`` (Translate, 64 in flight), ``submit`` (durable SubmitCase, 64 in flight),
``stream`` (SubmitCases, 8 streams of 200). Last line: JSON with ``asyncio_vs_echo``,
``uvloop_vs_echo`` and ``uvloop_vs_asyncio`` (the gateways' rates), medians of the rounds.

Usage: python bench/loops.py [--kind stream] [--rounds 6] [--seconds 4]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    ECHO_SERVICE,
    LOOP_VARIABLE,
    EchoServer,
    GatewayProcess,
    bracketed,
    drive_measured,
    report,
    translate_payloads,
)
from submit import ENV, META, STREAMS, stream_payloads, submit_payloads

#: kind -> (client kind, calls or streams in flight, method, echo method, payloads(n, tag), n)
KINDS: dict[str, tuple[str, int, str, str, Callable[[int, str], list[bytes]], int]] = {
    "translate": (
        "unary",
        64,
        "/tongban.v1.TranslationService/Translate",
        "Unary",
        lambda n, tag: translate_payloads(),
        64,
    ),
    "submit": (
        "unary",
        64,
        "/tongban.v1.CaseExchangeService/SubmitCase",
        "Unary",
        submit_payloads,
        60_000,
    ),
    "stream": (
        "client_stream",
        STREAMS,
        "/tongban.v1.CaseExchangeService/SubmitCases",
        "ClientStream",
        stream_payloads,
        200_000,
    ),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kind", choices=sorted(KINDS), default="stream")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seconds", type=float, default=4.0)
    args = p.parse_args()
    kind, concurrency, method, echo_method, make, count = KINDS[args.kind]
    size = len(make(1, "size")[0])
    loops = ("asyncio", "uvloop")
    runs: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {name: [] for name in loops}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        echoes = {name: stack.enter_context(EchoServer(name)) for name in loops}
        gateways = {
            name: stack.enter_context(GatewayProcess({**ENV, LOOP_VARIABLE: name}, tmp / name))
            for name in loops
        }

        def echo(name: str, seconds: float) -> dict[str, Any]:
            e = echoes[name]
            return drive_measured(
                e.proc.pid,
                kind,
                f"127.0.0.1:{e.port}",
                f"/{ECHO_SERVICE}/{echo_method}",
                [b"x" * size],
                concurrency=concurrency,
                seconds=seconds,
            )

        def gateway(name: str, tag: str, seconds: float) -> dict[str, Any]:
            g = gateways[name]
            result = drive_measured(
                g.proc.pid,
                kind,
                f"127.0.0.1:{g.port}",
                method,
                make(count, tag),
                concurrency=concurrency,
                seconds=seconds,
                metadata=META,
            )
            assert not result["errors"], result["errors"]
            if args.kind != "translate":  # a case submitted twice is a replay, not a case
                assert not result["repeats"], f"{result['repeats']} replays: raise the count"
            return result

        for name in loops:  # warm-ups: connections, mapping sets, writer processes
            echo(name, 1.0)
            gateway(name, f"warm-{name}", 1.5)
        half = args.seconds / 2
        for r in range(args.rounds):
            order = loops if r % 2 == 0 else loops[::-1]
            for name in order:
                before = echo(name, half)
                g = gateway(name, f"{name}-{r}", args.seconds)
                runs[name].append((bracketed(before, echo(name, half)), g))
            parts = []
            for name in loops:
                e, g = runs[name][-1]
                parts.append(
                    f"{name} {g['rate'] / e['rate']:.3f} (echo {e['rate']:,.0f}/s, gateway "
                    f"{g['rate']:,.0f}/s, CPU us {e['cpu_us']} / {g['cpu_us']})"
                )
            print(f"round {r}: " + "; ".join(parts), flush=True)

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    figures: dict[str, Any] = {"bench": "loops", "kind": args.kind, "rounds": args.rounds}
    for name in loops:
        figures[f"{name}_vs_echo"] = median([g["rate"] / e["rate"] for e, g in runs[name]])
        figures[f"{name}_echo_rate"] = round(statistics.median(e["rate"] for e, _ in runs[name]))
        figures[f"{name}_gateway_rate"] = round(statistics.median(g["rate"] for _, g in runs[name]))
    figures["uvloop_vs_asyncio"] = median(
        [
            u["rate"] / a["rate"]
            for (_, a), (_, u) in zip(runs["asyncio"], runs["uvloop"], strict=True)
        ]
    )
    print(
        f"{args.kind}: asyncio {figures['asyncio_vs_echo']}x its echo, uvloop "
        f"{figures['uvloop_vs_echo']}x its echo; the gateway on uvloop "
        f"{figures['uvloop_vs_asyncio']}x on asyncio (medians of {args.rounds} rounds)"
    )
    report(figures)


if __name__ == "__main__":
    main()
