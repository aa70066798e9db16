"""Instructions per call of the gateway's hot Python paths, counted by valgrind's callgrind.

Rates on these shared machines swing by ±15% between rounds, and a change worth 5% hides in
that. An instruction count does not swing: the same code, inputs and hash seed give the same
count whatever else the machine is doing (``PYTHONHASHSEED=0`` here). So a change to the
translation engine or to the preparation of a case is judged here, and two checkouts are
compared side by side in one run with ``--against DIR``. Instructions are not time (a cache
miss costs more than an add), which is why the rate benchmarks stay the judges of the targets.

Workloads, each ``--calls`` warm calls minus a run of none (start-up, imports and loading the
mapping set cancel out), with the cyclic garbage collector off while they are counted (its
share depends on the rest of the heap, not on the code measured):

* ``translate``  ``translate_json`` of the benchmarks' Zhongshan case into Shenzhen's schema:
                 the work of one Translate call;
* ``inbound``    the same case into the canonical model, JSON parsed;
* ``prepare``    one case of a SubmitCases stream prepared for the store (checks, translation,
                 exchange id, answer, idempotency hash, canonical JSON). Valgrind's CPU has
                 no SHA extensions, so OpenSSL's SHA-256 of the request counts ~24k here
                 that it does not cost on such hardware;
* ``stream``     the event loop's share of a SubmitCases stream, per case (streams of 200):
                 the method as registered (wrapper, metrics, access guard), the servicer,
                 preparing, packing and pickling for the writer process (a stand-in that
                 answers as it would), the stream's answer. Not gRPC's own work, not the
                 writer's SQL;
* ``write``      the writer process's share of a streamed case, per case: a batch of 200
                 prepared cases unpickled, committed to a SQLite store, its results pickled
                 (SQLite's own instructions counted, not the kernel's writes and fsyncs);
* ``unary``      the writer process's share of a unary SubmitCase, per case: a batch of 40
                 submissions as the event loop hands them over (caller, request bytes,
                 context token), each prepared there and committed, the results pickled;
* ``person_engine`` / ``person_handwritten``  the job of ``bench/mapping.py`` (Zhongshan's
                 person samples into the canonical Person): the compiled mapping against the
                 same mapping written by hand. This checkout only.

Needs ``valgrind`` (Debian's package). About six minutes on two cores (twelve minutes with
``--against``). The last line is one JSON object.

Usage: python bench/instructions.py [--calls 1000] [--against OTHER_CHECKOUT]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("translate", "inbound", "prepare", "stream", "write", "unary")
PERSON = ("person_engine", "person_handwritten")
_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def collected(valgrind_output: str) -> int:
    """The instruction count callgrind reports (``Collected : N``) in its output."""
    found = _COLLECTED.findall(valgrind_output)
    if not found:
        raise RuntimeError(f"no instruction count in valgrind's output: {valgrind_output[-500:]}")
    return int(found[-1])


def per_call(none: int, many: int, calls: int) -> int:
    """Instructions per call: a run of ``calls`` calls minus a run of none, divided."""
    return round((many - none) / calls)


# -- the worker: one workload, in a process valgrind counts ----------------------------------


def _workload(name: str, root: Path) -> Callable[[int], Any]:
    """``fn(i)`` running workload ``name`` once on input ``i``, with ``root``'s code."""
    if name == "person_handwritten":
        sys.path.insert(0, str(ROOT / "bench"))
        from mapping import handwritten

        persons = _persons(root)
        return lambda i: handwritten(persons[i % len(persons)], [])
    sys.path.insert(0, str(root))
    import adapters

    if not Path(adapters.__file__).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"adapters imported from {adapters.__file__}, not from {root}")
    from adapters.mapping import MappingSet, parse_json

    ms = MappingSet.load(root / "mappings")
    if name == "person_engine":
        persons = _persons(root)
        cm = ms.compiled["zhongshan.person"]
        return lambda i: cm.forward(persons[i % len(persons)], [])
    bodies = _cases(root, 200)
    if name == "translate":
        return lambda i: ms.translate_json("zhongshan.case", "shenzhen.case", bodies[i % 200])
    if name == "inbound":
        return lambda i: ms.to_canonical("zhongshan.case", parse_json(bodies[i % 200]))
    if name == "prepare":
        from gateway.auth import Caller
        from gateway.services.submission import CasePreparer, SubmitRules
        from tongban.v1 import case_exchange_pb2 as cx
        from tongban.v1 import common_pb2

        requests = [
            cx.SubmitCaseRequest(
                request_id=f"ic-{n}",
                target_city="440300",
                foreign=common_pb2.ForeignRecord(schema="zhongshan.case", json=body),
            )
            for n, body in enumerate(bodies)
        ]
        prepare = CasePreparer(
            ms,
            SubmitRules(256 * 1024, {"440300": "sz"}),
            Caller("zs", "442000"),
            time.time(),
            random.Random(1),
        )
        return lambda i: prepare(requests[i % 200])
    if name == "stream":
        return _stream(root)
    if name == "write":
        return _write(root)
    if name == "unary":
        return _unary(root)
    raise ValueError(f"unknown workload {name!r}")


def _write(root: Path) -> Callable[[int], Any]:
    """The writer process's share of a streamed case: a batch of 200 prepared cases as the
    writer process receives it (packed, pickled), unpickled, committed to a SQLite store
    (the same store throughout, as a running gateway's), its results pickled. A call with
    ``i % 200 == 0`` runs a batch; the others do nothing. SQLite's own work is counted; the
    kernel's (writes, fsync) is not."""
    import pickle

    from adapters.mapping import MappingSet
    from gateway.auth import Caller
    from gateway.services.submission import CasePreparer, SubmitRules
    from gateway.store.writer import pack_intents
    from tongban.v1 import case_exchange_pb2 as cx
    from tongban.v1 import common_pb2

    ms = MappingSet.load(root / "mappings")
    bodies = _cases(root, 200)
    start = 1_764_000_000.0

    def batch(n: int) -> bytes:
        # One preparer per batch, as per stream: ids and times move on as a gateway's do.
        now = start + n * 0.02
        prepare = CasePreparer(
            ms,
            SubmitRules(256 * 1024, {"440300": "sz"}),
            Caller("zs", "442000"),
            now,
            random.Random(n),
        )
        intents = [
            prepare(
                cx.SubmitCaseRequest(
                    request_id=f"w{n}-{k}",
                    target_city="440300",
                    foreign=common_pb2.ForeignRecord(schema="zhongshan.case", json=body),
                )
            )
            for k, body in enumerate(bodies)
        ]
        return pickle.dumps((now, pack_intents(intents)), pickle.HIGHEST_PROTOCOL)

    # Made before counting (the event loop's work); each batch once, as a replayed one costs
    # a lookup, not a stored case: up to 3,700 counted calls after the 300 warm ones.
    return _writer_batches([batch(n) for n in range(20)], 200)


def _unary(root: Path) -> Callable[[int], Any]:
    """The writer process's share of a unary SubmitCase, per case: a batch of 40 submissions
    as the event loop hands them over (each the caller, the request's bytes and the mapping
    context's token, pickled), unpickled, each prepared there (checks, translation, intent),
    committed to a SQLite store, the results pickled. A call with ``i % 40 == 0`` runs a
    batch; the others do nothing. Preparing is counted here, not in ``stream`` (a unary case
    is prepared by the writer, a streamed one on the event loop)."""
    import pickle

    from adapters.mapping import MappingSet
    from gateway.auth import Caller
    from gateway.services.submission import SubmitContext, SubmitRequestIntent, SubmitRules
    from gateway.store.writer import pack_intents
    from tongban.v1 import case_exchange_pb2 as cx
    from tongban.v1 import common_pb2

    ms = MappingSet.load(root / "mappings")
    context = SubmitContext(1, ms, SubmitRules(256 * 1024, {"440300": "sz"}))
    context.rng = random.Random(5)
    caller = Caller("zs", "442000")
    size = 40
    bodies = _cases(root, size * 100)  # 100 batches: up to 3,700 counted calls after 300 warm

    def batch(n: int) -> bytes:
        intents = [
            SubmitRequestIntent(
                caller,
                cx.SubmitCaseRequest(
                    request_id=f"u{n}-{k}",
                    target_city="440300",
                    foreign=common_pb2.ForeignRecord(
                        schema="zhongshan.case", json=bodies[n * size + k]
                    ),
                ).SerializeToString(deterministic=True),
                context.token,
            )
            for k in range(size)
        ]
        now = 1_764_000_000.0 + n * 0.01
        return pickle.dumps((now, pack_intents(intents)), pickle.HIGHEST_PROTOCOL)

    # Made before counting: the event loop's work.
    return _writer_batches([batch(n) for n in range(100)], size, context)


def _writer_batches(batches: list[bytes], size: int, context: Any = None) -> Callable[[int], Any]:
    """``fn(i)`` doing what the writer process does with each of ``batches`` (``(now, packed
    intents)`` pickled), one every ``size`` calls, on a new SQLite store (the same throughout,
    as a running gateway's): unpickle, give deferred intents their ``context``, run the
    batch, pickle its results. ``fn`` returns the last batch's results."""
    import atexit
    import pickle

    from gateway.store.engine import make_engine, upgrade
    from gateway.store.writer import DeferredIntent, run_intents, unpack_intents

    data = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, data, True)
    engine = make_engine(f"sqlite:///{data / 'store.db'}")
    upgrade(engine)
    atexit.register(engine.dispose)
    pending = iter(batches)
    last: list[Any] = []

    def fn(i: int) -> Any:
        if i % size == 0:
            now, packed = pickle.loads(next(pending))
            intents = unpack_intents(packed)
            for intent in intents:
                if isinstance(intent, DeferredIntent):
                    intent.context = context  # as the writer process attaches its contexts
            results = run_intents(engine, intents, now)
            pickle.dumps(results, pickle.HIGHEST_PROTOCOL)
            last[:] = [results]
        return last[0]

    return fn


def _stream(root: Path) -> Callable[[int], Any]:
    """The event loop's share of a SubmitCases stream, per case: the method as registered
    (wrapper, metrics, access guard), the servicer, each case prepared, the batch packed and
    pickled for the writer and its answers unpickled, the stream's answer serialized. The
    writer process is a stand-in answering what it would; gRPC's own work is not counted.
    A call with ``i % 200 == 0`` runs a stream of 200 cases; the others do nothing."""
    import asyncio
    import atexit
    import pickle

    sys.path.insert(0, str(ROOT / "bench"))
    from common import BENCH_TOKEN, case_payloads, partner_env

    from gateway.app import bootstrap
    from gateway.rpc.registration import register_service
    from gateway.settings import load_settings
    from gateway.store.writer import pack_intents
    from tongban.v1 import case_exchange_pb2 as cx
    from tongban.v1 import common_pb2

    data = Path(tempfile.mkdtemp())
    atexit.register(shutil.rmtree, data, True)
    env = {
        **partner_env(9),
        "TONGBAN_STORE__DATA_DIR": str(data),
        "TONGBAN_MAPPINGS__PATH": str(root / "mappings"),
        "TONGBAN_MAPPINGS__WATCH": "false",
        "TONGBAN_LOG__LEVEL": "WARNING",
    }
    # A fixed clock and id generator: the same ids and times in every run (a count moved by
    # ±3% between runs with fresh ones).
    loop = asyncio.new_event_loop()
    atexit.register(loop.close)

    async def started() -> Any:  # the partners' channels are made on the running loop
        return bootstrap(load_settings(None, env=env), clock=lambda: 1_764_000_000.0)

    services = loop.run_until_complete(started())
    services.cases._rng = random.Random(7)

    async def writer(intents: Sequence[Any]) -> list[Any]:
        pickle.loads(pickle.dumps((1.0, pack_intents(intents)), pickle.HIGHEST_PROTOCOL))
        answers = [(i.response, False) for i in intents]
        return pickle.loads(pickle.dumps(answers, pickle.HIGHEST_PROTOCOL))  # type: ignore[no-any-return]

    services.store.write_many = writer  # type: ignore[method-assign]
    handlers: dict[str, Any] = {}

    class Server:
        def add_generic_rpc_handlers(self, _: Any) -> None:
            """Not needed here: the calls go to the method handlers below."""

        def add_registered_method_handlers(self, _: str, found: dict[str, Any]) -> None:
            handlers.update(found)

    register_service(
        Server(),
        cx.DESCRIPTOR.services_by_name["CaseExchangeService"],
        services.servicers["CaseExchangeService"],
        services.observer,
        services.guard,
        services.watchdog,
    )
    handler = handlers["SubmitCases"]

    class Context:
        def invocation_metadata(self) -> Any:
            return BENCH_TOKEN

    streams = iter(range(1_000_000))

    def items() -> list[bytes]:
        tag = f"st{next(streams)}"
        return case_payloads(
            200,
            lambda i, body: cx.SubmitCasesRequest(
                case_request=cx.SubmitCaseRequest(
                    request_id=f"{tag}-{i}",
                    target_city="440300",
                    foreign=common_pb2.ForeignRecord(schema="zhongshan.case", json=body),
                )
            ).SerializeToString(),
        )

    async def one_stream(messages: list[bytes]) -> Any:
        async def requests() -> Any:
            for m in messages:
                yield handler.request_deserializer(m)

        answer = await handler.stream_unary(requests(), Context())
        handler.response_serializer(answer)
        return answer

    ready = [items() for _ in range(40)]  # made before counting: the client's work
    last: list[Any] = []

    def fn(i: int) -> Any:
        """The stream's answer (the last one, between streams)."""
        if i % 200 == 0:
            last[:] = [loop.run_until_complete(one_stream(ready[(i // 200) % len(ready)]))]
        return last[0]

    return fn


def _cases(root: Path, n: int) -> list[bytes]:
    """``n`` distinct Zhongshan cases (as ``bench/common.py`` makes them), as JSON bytes."""
    base = json.loads((root / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))
    return [
        json.dumps(dict(base, SBLSH=f"442000-2026-b{i:07d}"), ensure_ascii=False).encode()
        for i in range(n)
    ]


def _persons(root: Path) -> list[dict[str, Any]]:
    folder = root / "mappings/zhongshan/samples/person"
    return [json.loads(p.read_text("utf-8")) for p in sorted(folder.glob("[0-9][0-9]-person.json"))]


def worker(name: str, calls: int, root: Path) -> None:
    """Run workload ``name`` 300 times to warm up, then ``calls`` times."""
    fn = _workload(name, root)
    for i in range(300):
        fn(i)
    # The cyclic collector's share of a call depends on everything else the heap holds (two
    # checkouts with the same code in these paths differed by ±5% with it on): off while
    # counting, so a count is the code's own instructions. The rate benchmarks include it.
    gc.collect()
    gc.disable()
    for i in range(calls):
        fn(i)


# -- the driver --------------------------------------------------------------------------------


def count(name: str, calls: int, root: Path) -> int:
    """Instructions of one worker run under callgrind."""
    out = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            name,
            "--calls",
            str(calls),
            "--root",
            str(root),
        ],
        env={**os.environ, "PYTHONHASHSEED": "0"},
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{name} under valgrind failed: {out.stderr[-2000:]}")
    return collected(out.stderr)


def measure(jobs: list[tuple[str, Path]], calls: int) -> dict[tuple[str, Path], int]:
    """Instructions per call of each (workload, checkout), two valgrind runs at a time.

    Each checkout is reached through a symbolic link of the same length (``.../r0``,
    ``.../r1``): a path's length moves the interpreter's memory layout, and with it the
    counts (CPython's method cache is indexed by object addresses). The same code at
    ``/work/x`` and ``/tmp/y/x`` counted 1-2% apart before this.
    """
    with tempfile.TemporaryDirectory() as tmp:
        alias: dict[Path, Path] = {}
        for _, root in jobs:
            if root not in alias:
                alias[root] = Path(tmp) / f"r{len(alias)}"
                alias[root].symlink_to(root.resolve(), target_is_directory=True)
        runs = [(name, root, n) for name, root in jobs for n in (0, calls)]
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            counted = pool.map(lambda r: count(r[0], r[2], alias[r[1]]), runs)
            totals = dict(zip(runs, counted, strict=True))
    return {
        (name, root): per_call(totals[(name, root, 0)], totals[(name, root, calls)], calls)
        for name, root in jobs
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1000, help="warm calls counted per workload")
    p.add_argument("--against", type=Path, help="another checkout, counted side by side")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.calls, args.root)
        return
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not installed (Debian: apt-get install valgrind)")
    jobs = [(name, ROOT) for name in (*WORKLOADS, *PERSON)]
    if args.against is not None:
        jobs += [(name, args.against.resolve()) for name in WORKLOADS]
    counts = measure(jobs, args.calls)
    figures: dict[str, Any] = {"bench": "instructions", "calls": args.calls}
    for name in (*WORKLOADS, *PERSON):
        figures[name] = counts[(name, ROOT)]
        print(f"{name:<20} {counts[(name, ROOT)]:>10,} instructions per call")
    figures["engine_vs_handwritten"] = round(
        figures["person_handwritten"] / figures["person_engine"], 3
    )
    print(
        f"engine / handwritten (instructions, inverted like a rate): {figures['engine_vs_handwritten']}"
    )
    if args.against is not None:
        other = args.against.resolve()
        figures["against"] = {name: counts[(name, other)] for name in WORKLOADS}
        figures["vs_against"] = {
            name: round(counts[(name, ROOT)] / counts[(name, other)], 4) for name in WORKLOADS
        }
        for name in WORKLOADS:
            print(
                f"{name:<20} {counts[(name, other)]:>10,} in {other}: this checkout "
                f"{figures['vs_against'][name]:.4f}x"
            )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
