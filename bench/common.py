"""Shared benchmark harness: a bare grpc.aio echo server, a gateway process, a load client.

Every figure is measured side by side in one run with the same client (a separate process,
same concurrency), and reported as a ratio: absolute numbers on shared machines are noise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ECHO_SERVICE = "bench.Echo"

from gateway.ports import free_port  # noqa: E402 - after ROOT is on sys.path
from gateway.store.intents import ReleaseIntent  # noqa: E402
from gateway.store.store import Store  # noqa: E402

# -- the bare echo server (bytes in, same bytes out), in its own process -----------------------


async def _echo_main(port: int, ready: Any) -> None:
    # Coroutine handlers, registered as generated code registers them: a plain `def` handler
    # would run in grpc.aio's thread pool, which makes the echo ~20% slower and every ratio
    # against it flattering.
    async def unary(request: bytes, context: Any) -> bytes:
        return request

    async def client_stream(requests: Any, context: Any) -> bytes:
        n = 0
        last = b""
        async for r in requests:
            n += 1
            last = r
        return last + n.to_bytes(4, "big")

    async def bidi(requests: Any, context: Any) -> Any:
        async for r in requests:
            yield r

    async def client_stream_work(requests: Any, context: Any) -> bytes:
        # ClientStream, doing `x-work-us` microseconds of CPU work per message (bench/budget.py)
        work = float(dict(context.invocation_metadata()).get(WORK_HEADER, "0")) / 1e6
        n = 0
        last = b""
        async for r in requests:
            n += 1
            last = r
            if work:  # without work, the same loop as ClientStream
                burn(work)
        return last + n.to_bytes(4, "big")

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "ClientStreamWork": grpc.stream_unary_rpc_method_handler(client_stream_work),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ECHO_SERVICE, handlers),))
    server.add_registered_method_handlers(ECHO_SERVICE, handlers)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    ready.set()
    await server.wait_for_termination()


#: The setting naming the gateways' event loop (server.event_loop), read for the echo's too.
LOOP_VARIABLE = "TONGBAN_SERVER__EVENT_LOOP"

#: The metadata key telling the echo's ClientStreamWork how many µs of CPU to spend per message.
WORK_HEADER = "x-work-us"


def burn(seconds: float) -> None:
    """Spend ``seconds`` of this thread's CPU time (time the thread is not running, waiting
    for a core, does not count)."""
    if seconds <= 0:
        return
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        continue


def _echo_process(port: int, ready: Any, loop: Any) -> None:
    from gateway.loops import run

    run(_echo_main(port, ready), loop)


class EchoServer:
    """A bare grpc.aio echo server in a child process, on event loop ``loop`` ("asyncio" or
    "uvloop"). By default, the loop the gateways run on (``server.event_loop``, read from the
    same environment variable; asyncio's own unless it says uvloop): the comparison is of the
    gateway with the bare stack on one loop, not of two loops."""

    def __init__(self, loop: str | None = None) -> None:
        if loop is None:
            loop = "uvloop" if os.environ.get(LOOP_VARIABLE) == "uvloop" else "asyncio"
        self.loop = loop

    def __enter__(self) -> EchoServer:
        self.port = free_port()
        ctx = mp.get_context("spawn")
        ready = ctx.Event()
        self.proc = ctx.Process(
            target=_echo_process, args=(self.port, ready, self.loop), daemon=True
        )
        self.proc.start()
        ready.wait(20)
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.join(10)


class GatewayProcess:
    """`tongban serve` in a child process, configured by environment variables."""

    def __init__(
        self, env: dict[str, str], data_dir: Path, command: list[str] | None = None
    ) -> None:
        self.command = command or ["-m", "gateway.cli", "serve"]
        self.port = free_port()
        self.metrics_port = free_port()
        self.env = {
            **os.environ,
            "TONGBAN_SERVER__PORT": str(self.port),
            "TONGBAN_STORE__DATA_DIR": str(data_dir),
            "TONGBAN_MAPPINGS__PATH": str(ROOT / "mappings"),
            "TONGBAN_MAPPINGS__WATCH": "false",
            "TONGBAN_METRICS__PORT": str(self.metrics_port),
            # Logging as in production (the default INFO level, JSON lines): a line per unary
            # call, per stream, per delivery, written to `gateway.log` in the data directory.
            **env,
        }
        self.log = data_dir / "gateway.log"

    def __enter__(self) -> GatewayProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, *self.command],
            cwd=ROOT,
            env=self.env,
            stdout=self._out,
            stderr=self._out,
        )
        deadline = time.monotonic() + 60
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(self.log.read_text()[-2000:])
                try:
                    if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                        return self
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._out.close()


# -- the load client, in its own process ---------------------------------------------------------


def _client_process(
    kind: str,
    target: str,
    method: str,
    payloads: list[bytes],
    concurrency: int,
    seconds: float,
    metadata: list[tuple[str, str]],
    server_pid: int | None,
    channels: int,
    out: Any,
) -> None:
    out.put(
        asyncio.run(
            _drive(
                kind, target, method, payloads, concurrency, seconds, metadata, server_pid, channels
            )
        )
    )


class _Snapshot:
    """The machine's CPU counters and the server's per-thread CPU time at one instant (taken
    by the client at the start and the end of its measured seconds)."""

    def __init__(self, server_pid: int | None) -> None:
        self.at = time.perf_counter()
        usage = resource.getrusage(resource.RUSAGE_SELF)  # the client process, every thread
        self.client_cpu = usage.ru_utime + usage.ru_stime
        self.total = self.idle = self.steal = 0
        self.threads: dict[tuple[int, int], float] = {}
        with contextlib.suppress(OSError, ValueError, IndexError):  # no /proc: no figures
            line = Path("/proc/stat").read_text().split("\n", 1)[0]
            fields = [int(v) for v in line.split()[1:]]
            self.total, self.idle = sum(fields), fields[3] + fields[4]
            # Time the hypervisor gave this machine's CPUs to other guests: counted in
            # ``busy``, and a round with much of it measured a machine shared with others.
            self.steal = fields[7] if len(fields) > 7 else 0
            if server_pid is not None:
                self.threads = _thread_cpu(server_pid)

    def load(self, start: _Snapshot) -> dict[str, float]:
        """``busy``: share of the machine's CPU time in use between ``start`` and now (every
        core, client included); ``busiest_thread``: CPU time of the server's busiest thread
        (its event loop, in practice) over the elapsed time, 1.0 = one core all the time;
        ``steal``: share of the machine's CPU time taken by other guests of its hypervisor
        (inside ``busy``); ``client_cpu``: CPU seconds of this (the client's) process."""
        total = self.total - start.total
        out = {"busy": round(1 - (self.idle - start.idle) / total, 3) if total else 0.0}
        out["steal"] = round((self.steal - start.steal) / total, 3) if total else 0.0
        out["client_cpu"] = self.client_cpu - start.client_cpu
        if self.threads:
            wall = self.at - start.at
            top = max(v - start.threads.get(k, 0.0) for k, v in self.threads.items())
            out["busiest_thread"] = round(top / wall, 3)
        return out


def _thread_cpu(pid: int) -> dict[tuple[int, int], float]:
    """CPU seconds of every thread of ``pid`` and of its child processes."""
    return {
        (p, int(task.name)): _cpu_seconds(task / "stat")
        for p in _process_tree(pid)
        for task in Path(f"/proc/{p}/task").iterdir()
    }


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its child processes (the gateway's writer process), from /proc."""
    tree, pending = [], [pid]
    while pending:
        p = pending.pop()
        tree.append(p)
        for task in Path(f"/proc/{p}/task").iterdir():
            pending.extend(int(c) for c in (task / "children").read_text().split())
    return tree


def stat_times(stat: Path) -> tuple[str, float, float]:
    """(name, user CPU seconds, system CPU seconds) in a /proc ``stat`` file (of a process or
    a thread)."""
    text = stat.read_text()
    fields = text.rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (
        text[text.index("(") + 1 : text.rindex(")")],
        int(fields[11]) / tick,
        int(fields[12]) / tick,
    )


def _cpu_seconds(stat: Path) -> float:
    """User plus system CPU seconds in a /proc ``stat`` file (of a process or a thread)."""
    _, user, system = stat_times(stat)
    return user + system


async def _drive(
    kind: str,
    target: str,
    method: str,
    payloads: list[bytes],
    concurrency: int,
    seconds: float,
    metadata: list[tuple[str, str]],
    server_pid: int | None = None,
    channels: int = 1,
) -> dict[str, Any]:
    errors: dict[str, int] = {}
    latencies: list[float] = []
    # Messages sent again because the payloads ran out (the same request id twice: a replay
    # for an idempotent method, which costs the server far less than a new case).
    repeats = 0
    async with contextlib.AsyncExitStack() as stack:
        # Several channels, each with its own connection (grpc shares one connection among
        # channels to one target unless told not to): `tongban serve --workers N` gets each
        # connection's calls in one worker (SO_REUSEPORT). Client w uses channel w % channels.
        options = [("grpc.use_local_subchannel_pool", 1)] if channels > 1 else None
        chans = [
            await stack.enter_async_context(grpc.aio.insecure_channel(target, options=options))
            for _ in range(channels)
        ]
        done = 0
        stop_at = 0.0

        if kind == "unary":
            calls = [ch.unary_unary(method) for ch in chans]

            async def worker(w: int) -> None:
                nonlocal done, repeats
                call = calls[w % len(calls)]
                i = concurrency + w  # payloads[:concurrency] warmed the server up
                while time.perf_counter() < stop_at:
                    t = time.perf_counter()
                    repeats += i >= len(payloads)
                    try:
                        await call(payloads[i % len(payloads)], metadata=metadata)
                        done += 1
                        latencies.append(time.perf_counter() - t)
                    except grpc.aio.AioRpcError as err:
                        errors[err.code().name] = errors.get(err.code().name, 0) + 1
                    i += concurrency

            warm = [
                calls[i % len(calls)](payloads[i % len(payloads)], metadata=metadata)
                for i in range(concurrency)
            ]
            await asyncio.gather(*warm, return_exceptions=True)
            first = _Snapshot(server_pid)
            start = time.perf_counter()
            stop_at = start + seconds
            await asyncio.gather(*(worker(w) for w in range(concurrency)))
            elapsed = time.perf_counter() - start
            return {
                **_Snapshot(server_pid).load(first),
                "rate": done / elapsed,
                "errors": errors,
                "repeats": repeats,
                "p50_ms": 1000 * statistics.median(latencies) if latencies else None,
            }

        # Streams: `concurrency` parallel streams, each sending messages as fast as it can;
        # each stream carries `per_stream` messages (client stream) or echoes them back (bidi).
        per_stream = 200
        streams = [
            ch.stream_unary(method) if kind == "client_stream" else ch.stream_stream(method)
            for ch in chans
        ]
        counter = [0]

        async def stream_worker(w: int) -> None:
            nonlocal repeats
            call = streams[w % len(streams)]
            # Stream n of worker w carries payloads from (n * concurrency + w) * per_stream on:
            # no two streams share a payload until the payloads run out.
            base = w * per_stream
            while time.perf_counter() < stop_at:
                msgs = [payloads[(base + k) % len(payloads)] for k in range(per_stream)]
                repeats += max(0, min(per_stream, base + per_stream - len(payloads)))
                base += concurrency * per_stream
                try:
                    if kind == "client_stream":
                        await call(_items(msgs), metadata=metadata)
                        counter[0] += per_stream
                    else:
                        stream = call(metadata=metadata)
                        for m in msgs:
                            await stream.write(m)
                        await stream.done_writing()
                        async for _ in stream:
                            counter[0] += 1
                except grpc.aio.AioRpcError as err:
                    errors[err.code().name] = errors.get(err.code().name, 0) + 1

        first = _Snapshot(server_pid)
        start = time.perf_counter()
        stop_at = start + seconds
        await asyncio.gather(*(stream_worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - start
        return {
            **_Snapshot(server_pid).load(first),
            "rate": counter[0] / elapsed,
            "errors": errors,
            "repeats": repeats,
        }


async def _items(msgs: list[bytes]) -> Any:
    for m in msgs:
        yield m


def drive(
    kind: str,
    target: str,
    method: str,
    payloads: list[bytes],
    *,
    concurrency: int = 64,
    seconds: float = 5.0,
    metadata: list[tuple[str, str]] | None = None,
    server_pid: int | None = None,
    channels: int = 1,
) -> dict[str, Any]:
    """Run the load client in a separate process; return its rate (calls or messages per s),
    and how busy the machine (``busy``) and the server's busiest thread (``busiest_thread``,
    given ``server_pid``) were during its measured seconds, where /proc tells. The client's
    calls go over ``channels`` connections."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(
        target=_client_process,
        args=(
            kind,
            target,
            method,
            payloads,
            concurrency,
            seconds,
            metadata or [],
            server_pid,
            channels,
            out,
        ),
    )
    proc.start()
    result = out.get(timeout=seconds + 120)
    proc.join(30)
    return dict(result)


def server_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by process ``pid`` and its child processes (the
    gateway's writer process); None where /proc is not available."""
    try:
        return sum(_cpu_seconds(Path(f"/proc/{p}/stat")) for p in _process_tree(pid))
    except (OSError, ValueError, IndexError):
        return None


def drive_measured(
    pid: int, kind: str, target: str, method: str, payloads: list[bytes], **kw: Any
) -> dict[str, Any]:
    """:func:`drive`, adding ``cpu_us``: the server's CPU microseconds per call or message
    (all its threads and child processes), and ``client_cpu_us``: the load client's. Rates
    swing with the machine's other load; the CPU a call costs swings much less, and shows where
    a ratio comes from (on a machine the two share, the client's CPU counts too)."""
    before = server_cpu(pid)
    result = drive(kind, target, method, payloads, server_pid=pid, **kw)
    after = server_cpu(pid)
    seconds = kw.get("seconds", 5.0)
    calls = result["rate"] * seconds
    result["cpu_us"] = (
        round(1e6 * (after - before) / calls, 1)
        if before is not None and after is not None and calls
        else None
    )
    client = result.pop("client_cpu", None)
    result["client_cpu_us"] = (
        round(1e6 * client / calls, 1) if client is not None and calls else None
    )
    return result


def load_figures(results: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    """Medians of the runs' ``busy``, ``busiest_thread`` and ``steal``, as ``{prefix}_busy``,
    ``{prefix}_busiest_thread`` and ``{prefix}_steal`` (absent where /proc did not tell)."""
    out: dict[str, Any] = {}
    for key in ("busy", "busiest_thread", "steal"):
        values = [r[key] for r in results if r.get(key) is not None]
        if values:
            out[f"{prefix}_{key}"] = round(statistics.median(values), 3)
    return out


def load_text(result: dict[str, Any]) -> str:
    """``busy 0.93, loop 0.85, steal 0.04``: how busy the machine and the server's busiest
    thread were, and what share of the machine other guests of its hypervisor took (when any)."""
    parts = []
    if "busy" in result:
        parts.append(f"busy {result['busy']:.2f}")
    if "busiest_thread" in result:
        parts.append(f"loop {result['busiest_thread']:.2f}")
    if result.get("steal"):
        parts.append(f"steal {result['steal']:.2f}")
    return ", ".join(parts)


def bracketed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """One measurement of the echo from two of equal length, taken just before and just after
    the gateway it is compared with. The machines these run on change speed within a round
    (other tenants): an echo measured only before the gateway compared one machine with
    another (a round once gave Translate 1.17x, the next 0.48x). Around the gateway, a steady
    drift moves the two halves in opposite directions and their mean cancels it.

    Rates, loads and latencies: the mean of the halves; CPU per call: weighted by the calls
    of each half; errors and repeats: added. ``halves``: the two rates.
    """
    out = dict(before)
    for key in ("rate", "busy", "busiest_thread", "steal", "p50_ms"):
        a, b = before.get(key), after.get(key)
        if a is not None and b is not None:
            out[key] = (a + b) / 2
    ra, rb = before["rate"], after["rate"]
    for key in ("cpu_us", "client_cpu_us"):
        ca, cb = before.get(key), after.get(key)
        out[key] = (
            round((ca * ra + cb * rb) / (ra + rb), 1)
            if ca is not None and cb is not None and ra + rb
            else None
        )
    errors: dict[str, int] = dict(before.get("errors", {}))
    for code, n in after.get("errors", {}).items():
        errors[code] = errors.get(code, 0) + n
    out["errors"] = errors
    out["repeats"] = before.get("repeats", 0) + after.get("repeats", 0)
    out["halves"] = (ra, rb)
    return out


def cpu_figures(echo: list[float | None], gateway: list[float | None]) -> dict[str, Any]:
    """Median server CPU per call of the echo and of the gateway, and echo / gateway."""
    if any(v is None for v in echo + gateway) or not echo:
        return {}
    e, g = statistics.median(echo), statistics.median(gateway)  # type: ignore[type-var]
    return {"echo_cpu_us": e, "gateway_cpu_us": g, "cpu_vs_echo": round(e / g, 3)}


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    """A store URL on the machine's PostgreSQL (127.0.0.1:5432, database ``test``): a schema of
    its own, migrated, dropped afterwards."""
    import uuid

    import psycopg

    from gateway.store.store import Store

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("host=127.0.0.1 dbname=test", autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = f"postgresql+psycopg://127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    try:
        store = Store(url)
        store.migrate()
        store.engine.dispose()
        store.read_engine.dispose()
        yield url
    finally:
        with psycopg.connect("host=127.0.0.1 dbname=test", autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


BENCH_TOKEN = [("authorization", "Bearer bench")]


def partner_env(inbox_port: int) -> dict[str, str]:
    """Gateway settings for benchmarks: Zhongshan submits (no rate limit), Shenzhen's inbox."""
    return {
        "TONGBAN_AUTH__MODE": "token",
        "TONGBAN_PARTNERS__ZS__CITY": "442000",
        "TONGBAN_PARTNERS__ZS__TOKEN": "bench",
        "TONGBAN_PARTNERS__ZS__RATE_LIMIT__RATE_PER_SECOND": "1000000",
        "TONGBAN_PARTNERS__ZS__RATE_LIMIT__BURST": "1000000",
        "TONGBAN_PARTNERS__SZ__CITY": "440300",
        "TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT": "grpc",
        "TONGBAN_PARTNERS__SZ__INBOX__TARGET": f"127.0.0.1:{inbox_port}",
    }


#: The median share of the machine's CPU time stolen by other guests of its hypervisor above
#: which a run's report says its ratios measured a shared machine more than the code.
STEAL_WARNING = 0.05


def report(figures: dict[str, Any]) -> None:
    """Print the figures, the last line being one JSON object; before it, a warning when a
    measurement's median ``steal`` (``*_steal``) was above :data:`STEAL_WARNING`."""
    stolen = {
        k: v
        for k, v in figures.items()
        if k.endswith("_steal") and isinstance(v, float | int) and v > STEAL_WARNING
    }
    if stolen:
        worst = max(stolen.values())
        print(
            f"warning: the hypervisor gave up to {worst:.0%} of this machine's CPU time to other "
            f"guests during the measurements ({', '.join(sorted(stolen))}); the two sides of a "
            "ratio may not have had the same machine: run again when it is quieter"
        )
    print(json.dumps(figures, ensure_ascii=False))


def case_payloads(n: int, serialize: Callable[[int, bytes], bytes]) -> list[bytes]:
    """``n`` distinct Zhongshan case records, serialized by ``serialize(i, json_bytes)``."""
    base = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))
    out = []
    for i in range(n):
        rec = dict(base, SBLSH=f"442000-2026-b{i:07d}")
        out.append(serialize(i, json.dumps(rec, ensure_ascii=False).encode()))
    return out


def translate_payloads(n: int = 64) -> list[bytes]:
    """``n`` TranslateRequests: a Zhongshan case to Shenzhen's schema."""
    from tongban.v1 import common_pb2, translation_pb2

    return case_payloads(
        n,
        lambda i, body: translation_pb2.TranslateRequest(
            record=common_pb2.ForeignRecord(schema="zhongshan.case", json=body),
            target_schema="shenzhen.case",
        ).SerializeToString(),
    )


@contextlib.asynccontextmanager
async def write_probe(store: Store) -> AsyncIterator[list[float]]:
    """While in the block: a small intent written through ``store``'s writer every 10 ms, each
    timed (seconds, in the list yielded): what other work on the writer costs a caller."""
    times: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            await store.write(ReleaseIntent("probe", [0]))
            times.append(time.perf_counter() - t)
            await asyncio.sleep(0.01)

    task = asyncio.create_task(probe())
    try:
        yield times
    finally:
        stop.set()
        await task


def pct(xs: list[float], p: float) -> float:
    """The ``p`` quantile of ``xs`` (seconds) in milliseconds, two decimals."""
    return round(1000 * sorted(xs)[int(p * (len(xs) - 1))], 2)
