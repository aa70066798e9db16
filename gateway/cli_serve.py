"""``tongban serve``: run the gateway until SIGTERM or Ctrl-C; SIGHUP reloads the mappings."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from adapters.mapping import MappingLoadError

from .app import Gateway
from .logs import configure_logging
from .settings import ConfigError, Settings, load_settings

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
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    await gateway.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.services.mappings.reload)
    print(f"tongban serving on {gateway.address}", file=sys.stderr, flush=True)
    await stop.wait()
    log.info("shutting down", extra={"grace_seconds": settings.server.grace_seconds})
    await gateway.stop()
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the gateway."""
    settings = read_settings(args.config)
    if settings is None:
        return 2
    configure_logging(settings.log.level, settings.log.format)
    return asyncio.run(_serve(settings))


def add_serve_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``serve``."""
    p = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gRPC gateway. SIGTERM or Ctrl-C drain in-flight calls and exit 0; "
        "SIGHUP reloads the mapping set (only a set that passes every check replaces the old).",
    )
    p.add_argument("--config", help="TOML settings file (environment TONGBAN_* overrides it)")
    p.set_defaults(func=cmd_serve)
