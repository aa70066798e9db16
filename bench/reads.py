"""GetCase (a case and its history read from the store, in the caller's schema) vs bare echo,
and with ``audit.case_reads`` (each read recorded in the audit log before it is answered).

Two gateways on their own embedded stores, each holding the same 200 cases submitted through
it, delivery off; the same client process and concurrency (64) for all three. In each round
the echo brackets the two gateways (half its seconds before them, half after), and the two
gateways alternate their order. Each round prints the rates, the ratios and the server CPU per
call. Last line: JSON with ``vs_echo`` (GetCase) and ``audited_vs_plain`` (GetCase with
``audit.case_reads`` against GetCase without it).

Usage: python bench/reads.py [--seconds 4] [--concurrency 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

import grpc
from common import (
    BENCH_TOKEN,
    ECHO_SERVICE,
    EchoServer,
    GatewayProcess,
    bracketed,
    drive_measured,
    partner_env,
    report,
)
from submit import submit_payloads

from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import case_exchange_pb2_grpc as cx_grpc

ENV = {**partner_env(9), "TONGBAN_DELIVERY__ENABLED": "false"}
CASES = 200


def get_requests(port: int) -> list[bytes]:
    """Submit :data:`CASES` cases to the gateway on ``port``; a GetCase request for each."""
    out = []
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = cx_grpc.CaseExchangeServiceStub(ch)
        for body in submit_payloads(CASES, "reads"):
            answer = stub.SubmitCase(cx.SubmitCaseRequest.FromString(body), metadata=BENCH_TOKEN)
            out.append(cx.GetCaseRequest(exchange_id=answer.exchange_id).SerializeToString())
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    runs: dict[str, list[dict[str, Any]]] = {"echo": [], "plain": [], "audited": []}
    with (
        tempfile.TemporaryDirectory() as tmp,
        EchoServer() as echo,
        GatewayProcess(ENV, Path(tmp) / "plain") as plain,
        GatewayProcess(
            {**ENV, "TONGBAN_AUDIT__CASE_READS": "true"}, Path(tmp) / "audited"
        ) as audited,
    ):
        gateways = {"plain": plain, "audited": audited}
        requests = {name: get_requests(gw.port) for name, gw in gateways.items()}
        size = len(requests["plain"][0])

        def echo_half() -> dict[str, Any]:
            return drive_measured(
                echo.proc.pid,
                "unary",
                f"127.0.0.1:{echo.port}",
                f"/{ECHO_SERVICE}/Unary",
                [b"x" * size],
                concurrency=args.concurrency,
                seconds=args.seconds / 2,
            )

        for r in range(args.rounds):
            before = echo_half()
            order = ["plain", "audited"] if r % 2 == 0 else ["audited", "plain"]
            measured = {}
            for name in order:
                gw = gateways[name]
                res = drive_measured(
                    gw.proc.pid,
                    "unary",
                    f"127.0.0.1:{gw.port}",
                    "/tongban.v1.CaseExchangeService/GetCase",
                    requests[name],
                    concurrency=args.concurrency,
                    seconds=args.seconds,
                    metadata=BENCH_TOKEN,
                )
                assert not res["errors"], res["errors"]
                measured[name] = res
            e = bracketed(before, echo_half())
            runs["echo"].append(e)
            for name, res in measured.items():
                runs[name].append(res)
            print(
                f"round {r}: echo {e['rate']:,.0f}/s  GetCase {measured['plain']['rate']:,.0f}/s "
                f"({measured['plain']['rate'] / e['rate']:.3f})  with audit.case_reads "
                f"{measured['audited']['rate']:,.0f}/s "
                f"({measured['audited']['rate'] / measured['plain']['rate']:.3f} of GetCase); "
                f"server CPU per call: echo {e['cpu_us']} us, GetCase "
                f"{measured['plain']['cpu_us']} us, audited {measured['audited']['cpu_us']} us",
                flush=True,
            )

    def med(values: list[float]) -> float:
        return round(statistics.median(values), 3)

    report(
        {
            "bench": "reads",
            "concurrency": args.concurrency,
            "echo_rps": round(med([e["rate"] for e in runs["echo"]])),
            "get_case_rps": round(med([g["rate"] for g in runs["plain"]])),
            "audited_rps": round(med([g["rate"] for g in runs["audited"]])),
            "vs_echo": med(
                [g["rate"] / e["rate"] for g, e in zip(runs["plain"], runs["echo"], strict=True)]
            ),
            "audited_vs_plain": med(
                [a["rate"] / g["rate"] for a, g in zip(runs["audited"], runs["plain"], strict=True)]
            ),
            "echo_cpu_us": med([e["cpu_us"] for e in runs["echo"] if e["cpu_us"]]),
            "get_case_cpu_us": med([g["cpu_us"] for g in runs["plain"] if g["cpu_us"]]),
            "audited_cpu_us": med([a["cpu_us"] for a in runs["audited"] if a["cpu_us"]]),
        }
    )


if __name__ == "__main__":
    main()
