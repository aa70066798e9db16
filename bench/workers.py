"""`tongban serve --workers 2` against one process: Translate and durable SubmitCase, same client.

Two gateways run side by side, as configured by default (logging, metrics, audit, group commit),
each on its own store (SQLite, or with ``--store postgresql`` a schema of its own on the
machine's PostgreSQL): one process, and `--workers 2` (two processes on one port, each
with its own writer process; the kernel gives each connection to one worker, SO_REUSEPORT). The
same client process keeps 64 calls in flight over 32 connections to each (the kernel spreads
connections between the workers at random: with 8, a split of 6-2 or worse comes about one time
in three). In each round, for Translate then for SubmitCase, the one-process gateway runs for
half its seconds just before the two workers and half just after (``bracketed`` in common.py), so a machine changing speed
within the round moves both sides alike. Each round prints the rates, the server CPU per call
(every process of the gateway) and the load: how busy the machine and the busiest server thread
were. On a machine whose cores the one process leaves idle (its event loop the bound), a second
worker can use them; where the cores are already busy (client included), it cannot.

Last line: JSON with ``translate_2_vs_1`` and ``submit_2_vs_1`` (medians of the rounds).

Usage: python bench/workers.py [--seconds 4] [--rounds 3] [--channels 32] [--concurrency 64]
       [--store sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import (
    GatewayProcess,
    bracketed,
    drive_measured,
    load_figures,
    load_text,
    pg_schema,
    report,
    translate_payloads,
)
from submit import ENV as SUBMIT_ENV
from submit import META, submit_payloads

TRANSLATE = "/tongban.v1.TranslationService/Translate"
SUBMIT = "/tongban.v1.CaseExchangeService/SubmitCase"
SERVE = ["-m", "gateway.cli", "serve"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--concurrency", type=int, default=64, help="calls in flight")
    p.add_argument(
        "--store",
        choices=("sqlite", "postgresql"),
        default="sqlite",
        help="each gateway's store: its own SQLite file, or its own schema on 127.0.0.1:5432",
    )
    p.add_argument("--channels", type=int, default=32, help="client connections to each gateway")
    args = p.parse_args()
    translations = translate_payloads()
    # Room for twice the fastest unary rates seen, per measurement: none is a replay.
    unary_n = max(20_000, int(args.seconds * 16_000))
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ("t1", "t2", "s1", "s2")}
    # One environment for both (Translate needs no more than SubmitCase's partners).
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        env_one, env_two = dict(SUBMIT_ENV), dict(SUBMIT_ENV)
        if args.store == "postgresql":
            env_one["TONGBAN_STORE__URL"] = stack.enter_context(pg_schema())
            env_two["TONGBAN_STORE__URL"] = stack.enter_context(pg_schema())
        one = stack.enter_context(GatewayProcess(env_one, tmp / "one", SERVE))
        two = stack.enter_context(GatewayProcess(env_two, tmp / "two", [*SERVE, "--workers", "2"]))

        def run(gw: GatewayProcess, method: str, payloads: list[bytes], s: float) -> Any:
            result = drive_measured(
                gw.proc.pid,
                "unary",
                f"127.0.0.1:{gw.port}",
                method,
                payloads,
                concurrency=args.concurrency,
                seconds=s,
                metadata=META,
                channels=args.channels,
            )
            assert not result["errors"], result["errors"]
            # A case submitted twice is a replay (a lookup, not a stored case); the 64
            # Translate payloads are used again and again on purpose.
            if method == SUBMIT:
                assert not result["repeats"], f"{result['repeats']} replays: raise the count"
            return result

        # Warm-ups: every connection, the mapping sets, both workers' writer processes.
        for gw in (one, two):
            run(gw, TRANSLATE, translations, 1.5)
            run(gw, SUBMIT, submit_payloads(unary_n, f"w{gw.port}"), 1.5)
        half = args.seconds / 2
        for r in range(args.rounds):
            t1 = run(one, TRANSLATE, translations, half)
            t2 = run(two, TRANSLATE, translations, args.seconds)
            t1 = bracketed(t1, run(one, TRANSLATE, translations, half))
            s1 = run(one, SUBMIT, submit_payloads(unary_n, f"a{r}"), half)
            s2 = run(two, SUBMIT, submit_payloads(unary_n, f"b{r}"), args.seconds)
            s1 = bracketed(s1, run(one, SUBMIT, submit_payloads(unary_n, f"c{r}"), half))
            for key, res in (("t1", t1), ("t2", t2), ("s1", s1), ("s2", s2)):
                runs[key].append(res)
            print(
                f"round {r}: Translate {t1['rate']:,.0f}/s one process, "
                f"{t2['rate']:,.0f}/s two workers ({t2['rate'] / t1['rate']:.3f}); "
                f"SubmitCase {s1['rate']:,.0f}/s, {s2['rate']:,.0f}/s "
                f"({s2['rate'] / s1['rate']:.3f}); server CPU us per call "
                f"{t1['cpu_us']} / {t2['cpu_us']}, {s1['cpu_us']} / {s2['cpu_us']}; load: "
                f"{load_text(t1)} / {load_text(t2)}, {load_text(s1)} / {load_text(s2)}",
                flush=True,
            )

    def median_ratio(a: str, b: str) -> float:
        return round(
            statistics.median(y["rate"] / x["rate"] for x, y in zip(runs[a], runs[b], strict=True)),
            3,
        )

    def median_of(key: str, field: str) -> float | None:
        values = [r[field] for r in runs[key] if r.get(field) is not None]
        return round(statistics.median(values), 1) if values else None

    figures: dict[str, Any] = {
        "bench": "workers",
        "store": args.store,
        "concurrency": args.concurrency,
        "channels": args.channels,
        "translate_one_rps": round(statistics.median(r["rate"] for r in runs["t1"])),
        "translate_two_rps": round(statistics.median(r["rate"] for r in runs["t2"])),
        "translate_2_vs_1": median_ratio("t1", "t2"),
        "submit_one_rps": round(statistics.median(r["rate"] for r in runs["s1"])),
        "submit_two_rps": round(statistics.median(r["rate"] for r in runs["s2"])),
        "submit_2_vs_1": median_ratio("s1", "s2"),
    }
    for key, name in (("t1", "translate_one"), ("t2", "translate_two")):
        figures[f"{name}_cpu_us"] = median_of(key, "cpu_us")
        figures.update(load_figures(runs[key], name))
    for key, name in (("s1", "submit_one"), ("s2", "submit_two")):
        figures[f"{name}_cpu_us"] = median_of(key, "cpu_us")
        figures.update(load_figures(runs[key], name))
    print(
        f"two workers against one process: Translate {figures['translate_2_vs_1']}x, "
        f"durable SubmitCase {figures['submit_2_vs_1']}x (medians of {args.rounds} rounds)"
    )
    report(figures)


if __name__ == "__main__":
    main()
