"""``tongban serve``: run the gateway until SIGTERM or Ctrl-C; SIGHUP reloads the mappings."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

from adapters.mapping import MappingLoadError

from .app import Gateway
from .logs import configure_logging
from .loops import loop_factory, loop_name, run
from .settings import ConfigError, Settings, load_settings
from .tls_files import CertificateError

__all__ = ["add_serve_command", "read_settings"]

log = logging.getLogger("tongban.serve")


def read_settings(path: str | None) -> Settings | None:
    """Settings from ``path`` and the environment; print the problem and return None if bad."""
    try:
        return load_settings(Path(path) if path else None)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


async def _serve(settings: Settings) -> int:
    try:
        gateway = Gateway(settings)
    except MappingLoadError as exc:
        print(f"error: the mapping set does not load:\n{exc}", file=sys.stderr)
        return 1
    except CertificateError as exc:
        print(f"error: tls: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    await gateway.start()
    # Everything built so far (settings, compiled mappings, SQLAlchemy, gRPC) lives as long as
    # the process: keep it out of the cyclic collector's generations, so that collections
    # under load only walk the objects of calls in flight (~5% of a streamed case's CPU).
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.services.mappings.reload)
    print(f"tongban serving on {gateway.address} ({loop_name(loop)})", file=sys.stderr, flush=True)
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": settings.server.grace_seconds})
    await gateway.stop()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gateway (in ``--workers`` processes sharing the port)."""
    settings = read_settings(args.config)
    if settings is None:
        return 2
    configure_logging(settings.log.level, settings.log.format, background=True)
    try:
        loop_factory(settings.server.event_loop)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    workers = args.workers or settings.server.workers
    if workers > 1:
        return _serve_workers(settings, workers)
    return run(_serve(settings), settings.server.event_loop)


def _serve_workers(settings: Settings, n: int) -> int:
    """Fork ``n`` worker processes (before any gRPC object exists) on one SO_REUSEPORT port.

    The parent migrates an SQLite store once, serves the aggregated /metrics (prometheus_client
    multiprocess mode), forwards SIGTERM/SIGINT to the workers and exits 0 once all drained.
    """
    import os
    import shutil
    import tempfile
    import time

    from .metrics import serve_metrics
    from .store.store import Store

    if settings.server.port == 0:
        print("error: --workers needs a fixed server.port", file=sys.stderr)
        return 2
    store = Store(settings.store.effective_url, keyring=settings.store.keyring)
    if store.is_sqlite:
        store.migrate()
    store.dispose()
    metrics_dir = tempfile.mkdtemp(prefix="tongban-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    worker_settings = settings.model_copy(
        update={
            "server": settings.server.model_copy(update={"workers": n}),
            "metrics": settings.metrics.model_copy(update={"enabled": False}),
        }
    )
    children: list[int] = []
    for _ in range(n):
        pid = os.fork()
        if pid == 0:  # worker
            from prometheus_client import values

            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
            code = 1
            try:
                code = run(_serve(worker_settings), settings.server.event_loop)
            finally:
                os._exit(code)
        children.append(pid)
    server = None
    if settings.metrics.enabled:
        server = serve_metrics(None, settings.metrics.host, settings.metrics.port)
    stopping = False

    def forward(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    print(
        f"tongban serving on {settings.server.host}:{settings.server.port} with {n} workers",
        file=sys.stderr,
        flush=True,
    )
    status = 0
    alive = set(children)
    while alive:
        try:
            pid, code = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        alive.discard(pid)
        if os.waitstatus_to_exitcode(code) != 0:
            status = 1
            if not stopping:  # a worker died on its own: stop the others too
                forward(signal.SIGTERM, None)
        time.sleep(0)
    if server is not None:
        server.shutdown()
    shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def add_serve_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``serve``."""
    p = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gRPC gateway. SIGTERM or Ctrl-C drain in-flight calls and exit 0; "
        "SIGHUP reloads the mapping set (only a set that passes every check replaces the old).",
    )
    p.add_argument("--config", help="TOML settings file (environment TONGBAN_* overrides it)")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes sharing the port (SO_REUSEPORT); default server.workers",
    )
    p.set_defaults(func=cmd_serve)
