"""Durable SubmitCase on SQLite vs bare echo (unary), and SubmitCases vs a bare client stream.

The gateway runs as configured in production (token auth, audit, outbox, metrics; delivery off
so that only submission is measured) on the embedded SQLite store, fsync on commit. Same client
process and concurrency for both sides; in each round the echo runs for half its seconds just
before the gateway and half just after, so that a machine changing speed during the round moves
both sides alike (``bracketed`` in common.py). Each round also prints the load while it was measured
(how busy the machine and the server's event loop were: which of them bounds the ratio). Last
line: JSON with ``vs_echo`` and ``stream_vs_stream_echo``.

Usage: python bench/submit.py [--seconds 5] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import (
    BENCH_TOKEN,
    ECHO_SERVICE,
    EchoServer,
    GatewayProcess,
    bracketed,
    case_payloads,
    cpu_figures,
    drive_measured,
    load_figures,
    load_text,
    partner_env,
    report,
)

from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import common_pb2

ENV = {**partner_env(9), "TONGBAN_DELIVERY__ENABLED": "false"}
META = BENCH_TOKEN
_ids = itertools.count()


def submit_payloads(n: int, tag: str) -> list[bytes]:
    return case_payloads(
        n,
        lambda i, body: cx.SubmitCaseRequest(
            request_id=f"{tag}-{i}",
            target_city="440300",
            foreign=common_pb2.ForeignRecord(schema="zhongshan.case", json=body),
        ).SerializeToString(),
    )


#: Streams in flight in the stream measurements (each carries 200 cases; common.py's _drive).
STREAMS = 8


def stream_payloads(n: int, tag: str) -> list[bytes]:
    """``n`` SubmitCases stream messages, one distinct case each (:func:`submit_payloads`)."""
    return [
        cx.SubmitCasesRequest(case_request=cx.SubmitCaseRequest.FromString(b)).SerializeToString()
        for b in submit_payloads(n, tag)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    # Every measurement (unary/stream, echo/gateway): rates, CPU and load are read from these.
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in ("ue", "ug", "se", "sg")}
    with (
        tempfile.TemporaryDirectory() as tmp,
        EchoServer() as echo,
        GatewayProcess(ENV, Path(tmp)) as gw,
    ):
        # Enough distinct request ids that no submission is an idempotent replay (a replay
        # costs a lookup, not a stored case): asserted after each run.

        def echo_half(kind: str, method: str, payload: bytes, concurrency: int) -> dict[str, Any]:
            """The echo for half a measurement's seconds: it runs just before and just after
            the gateway it is compared with (see ``bracketed``)."""
            return drive_measured(
                echo.proc.pid,
                kind,
                f"127.0.0.1:{echo.port}",
                f"/{ECHO_SERVICE}/{method}",
                [payload],
                concurrency=concurrency,
                seconds=args.seconds / 2,
            )

        # Room for twice the fastest rates seen (unary ~3.5k calls/s, the stream ~16k msg/s,
        # which ran out of payloads at 16k a second): a run that still runs out fails below.
        unary_n = max(20_000, int(args.seconds * 8_000))
        stream_n = max(60_000, int(args.seconds * 32_000))
        for r in range(args.rounds):
            reqs = submit_payloads(unary_n, f"u{r}")
            size = len(reqs[0])
            # The echo brackets the gateway: half its seconds before, half after.
            e_before = echo_half("unary", "Unary", b"x" * size, args.concurrency)
            g = drive_measured(
                gw.proc.pid,
                "unary",
                f"127.0.0.1:{gw.port}",
                "/tongban.v1.CaseExchangeService/SubmitCase",
                reqs,
                concurrency=args.concurrency,
                seconds=args.seconds,
                metadata=META,
            )
            e = bracketed(e_before, echo_half("unary", "Unary", b"x" * size, args.concurrency))
            assert not g["errors"], g["errors"]
            assert not g["repeats"], f"{g['repeats']} replays: raise the payload count"
            items = stream_payloads(stream_n, f"s{r}")
            se_before = echo_half("client_stream", "ClientStream", b"x" * len(items[0]), STREAMS)
            sg = drive_measured(
                gw.proc.pid,
                "client_stream",
                f"127.0.0.1:{gw.port}",
                "/tongban.v1.CaseExchangeService/SubmitCases",
                items,
                concurrency=STREAMS,
                seconds=args.seconds,
                metadata=META,
            )
            se = bracketed(
                se_before, echo_half("client_stream", "ClientStream", b"x" * len(items[0]), STREAMS)
            )
            assert not sg["errors"], sg["errors"]
            assert not sg["repeats"], f"{sg['repeats']} replays: raise the payload count"
            for key, res in (("ue", e), ("ug", g), ("se", se), ("sg", sg)):
                runs[key].append(res)
            print(
                f"round {r}: unary echo {e['rate']:,.0f}/s submit {g['rate']:,.0f}/s "
                f"({g['rate'] / e['rate']:.3f}); stream echo {se['rate']:,.0f} msg/s "
                f"submit {sg['rate']:,.0f} msg/s ({sg['rate'] / se['rate']:.3f}); server CPU us "
                f"per call {e['cpu_us']} / {g['cpu_us']}, per message {se['cpu_us']} / {sg['cpu_us']}; "
                f"client CPU us per call {e['client_cpu_us']} / {g['client_cpu_us']}, per message "
                f"{se['client_cpu_us']} / {sg['client_cpu_us']}; "
                f"load: unary {load_text(e)} / {load_text(g)}, stream {load_text(se)} / "
                f"{load_text(sg)}"
            )
    rates = {key: [res["rate"] for res in got] for key, got in runs.items()}
    cpu = {key: [res["cpu_us"] for res in got] for key, got in runs.items()}
    client = {key: [res["client_cpu_us"] for res in got] for key, got in runs.items()}

    def ratio(gateway: str, echo: str) -> float:
        pairs = zip(rates[gateway], rates[echo], strict=True)
        return round(statistics.median(g / e for g, e in pairs), 3)

    report(
        {
            "bench": "submit",
            "store": "sqlite",
            "concurrency": args.concurrency,
            "echo_rps": round(statistics.median(rates["ue"])),
            "submit_rps": round(statistics.median(rates["ug"])),
            # Medians of the per-round ratios: each round measures both side by side.
            "vs_echo": ratio("ug", "ue"),
            "stream_echo_mps": round(statistics.median(rates["se"])),
            "stream_submit_mps": round(statistics.median(rates["sg"])),
            "stream_vs_stream_echo": ratio("sg", "se"),
            # Server CPU (all threads and the writer process) per call / per streamed message.
            **{f"unary_{k}": v for k, v in cpu_figures(cpu["ue"], cpu["ug"]).items()},
            **{f"stream_{k}": v for k, v in cpu_figures(cpu["se"], cpu["sg"]).items()},
            # The load client's CPU per call / per message, against each server.
            **{f"unary_client_{k}": v for k, v in cpu_figures(client["ue"], client["ug"]).items()},
            **{f"stream_client_{k}": v for k, v in cpu_figures(client["se"], client["sg"]).items()},
            # How busy the machine and each server's busiest thread (its event loop) were.
            **load_figures(runs["ue"], "unary_echo"),
            **load_figures(runs["ug"], "unary_gateway"),
            **load_figures(runs["se"], "stream_echo"),
            **load_figures(runs["sg"], "stream_gateway"),
        }
    )


if __name__ == "__main__":
    main()
