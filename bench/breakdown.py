"""Where a Translate call's cost goes: the gateway with parts of its work taken away.

Side by side with the bare echo, in each round: the gateway as shipped; with a Translate
handler that returns a constant (no translation); that, with calls observed by no metrics; and
that, with the method wrapper (metrics, access guard, deadline watchdog) taken away too; the
gateway as shipped on uvloop (``server.event_loop``), against the same echo; and the gateway as
shipped also serving the echo's own method, driven instead of Translate (``echo_in_gateway``):
the same handler as the bare echo, in the gateway's process beside everything it runs.
Variants are the real `tongban serve` with one function replaced at start (see
``_variant_main``); they exist to explain figures, not to be run in production. Each round
prints each variant's rate ratio and its server CPU per call (the echo's in the same round /
the variant's: rates swing more than CPU does). Last line: JSON with each variant's median ratio and CPU ratio.

Usage: python bench/breakdown.py [--seconds 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from common import (
    ECHO_SERVICE,
    EchoServer,
    GatewayProcess,
    drive_measured,
    report,
    translate_payloads,
)

from tongban.v1 import common_pb2, translation_pb2

VARIANTS = {
    "gateway": {},
    "constant_handler": {"BENCH_VARIANT": "constant"},
    "constant_no_metrics": {"BENCH_VARIANT": "constant,nometrics"},
    "constant_no_wrapper": {"BENCH_VARIANT": "constant,nowrap"},
    # A setting, not a part taken away: the shipped gateway on uvloop (server.event_loop),
    # against the echo on the loop this script's environment gives it (asyncio's own unless
    # TONGBAN_SERVER__EVENT_LOOP says otherwise): what the loop alone changes.
    "uvloop": {"TONGBAN_SERVER__EVENT_LOOP": "uvloop"},
    # The echo's handler served by the gateway's process (driven instead of Translate): what
    # the process costs a call before any of the gateway's work on it.
    "echo_in_gateway": {"BENCH_VARIANT": "echo"},
}


def _variant_main() -> None:
    """`tongban serve` with the parts named in BENCH_VARIANT taken away."""
    parts = set(os.environ.get("BENCH_VARIANT", "").split(","))
    if "constant" in parts:
        from gateway.rpc import translation

        answer = translation_pb2.TranslateResponse(
            record=common_pb2.ForeignRecord(schema="shenzhen.case", json=b"x" * 700)
        )

        async def constant(self: Any, request: Any, context: Any) -> Any:
            return answer

        translation.TranslationServicer.Translate = constant  # type: ignore[method-assign]
    if "nometrics" in parts:
        # Calls observed by nothing (metrics.enabled = false only stops serving /metrics).
        from gateway import app
        from gateway.rpc import registration

        app.call_observer = lambda metrics: registration._NullObserver()  # type: ignore[assignment]
    if "echo" in parts:
        import grpc

        from gateway import app

        build = app.create_server

        def with_echo(*args: Any, **kwargs: Any) -> Any:
            server, port, health = build(*args, **kwargs)

            async def unary(request: bytes, context: Any) -> bytes:
                return request

            handlers = {"Unary": grpc.unary_unary_rpc_method_handler(unary)}
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(ECHO_SERVICE, handlers),)
            )
            server.add_registered_method_handlers(ECHO_SERVICE, handlers)
            return server, port, health

        app.create_server = with_echo  # type: ignore[assignment]
    if "nowrap" in parts:
        from gateway.rpc import registration

        registration._wrap = lambda impl, *args, **kwargs: impl  # type: ignore[assignment]
    from gateway.cli import main

    sys.argv = ["tongban", "serve"]
    main()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    requests = translate_payloads()
    ratios: dict[str, list[float]] = {name: [] for name in VARIANTS}
    cpu: dict[str, list[float]] = {name: [] for name in VARIANTS}
    base = {"TONGBAN_AUTH__MODE": "none", "TONGBAN_DELIVERY__ENABLED": "false"}
    with EchoServer() as echo:
        for r in range(args.rounds):
            line = []
            for name, env in VARIANTS.items():
                with (
                    tempfile.TemporaryDirectory() as tmp,
                    GatewayProcess(
                        {**base, **env}, Path(tmp), command=[__file__, "--variant"]
                    ) as gw,
                ):
                    e = drive_measured(
                        echo.proc.pid,
                        "unary",
                        f"127.0.0.1:{echo.port}",
                        f"/{ECHO_SERVICE}/Unary",
                        [b"x" * len(requests[0])],
                        seconds=args.seconds,
                    )
                    echoing = env.get("BENCH_VARIANT") == "echo"
                    g = drive_measured(
                        gw.proc.pid,
                        "unary",
                        f"127.0.0.1:{gw.port}",
                        f"/{ECHO_SERVICE}/Unary"
                        if echoing
                        else "/tongban.v1.TranslationService/Translate",
                        [b"x" * len(requests[0])] if echoing else requests,
                        seconds=args.seconds,
                    )
                    assert not g["errors"], g["errors"]
                ratios[name].append(g["rate"] / e["rate"])
                line.append(f"{name} {g['rate'] / e['rate']:.3f}")
                if e["cpu_us"] and g["cpu_us"]:
                    cpu[name].append(e["cpu_us"] / g["cpu_us"])
                    line[-1] += f" (CPU {e['cpu_us']:.0f}/{g['cpu_us']:.0f} us)"
            print(f"round {r}: " + "  ".join(line))
    report(
        {"bench": "breakdown"}
        | {name: round(statistics.median(v), 3) for name, v in ratios.items()}
        | {f"{name}_cpu": round(statistics.median(v), 3) for name, v in cpu.items() if v}
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--variant"]:
        _variant_main()
    else:
        main()
