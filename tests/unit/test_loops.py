"""server.event_loop: which event loop a gateway process runs on (gateway/loops.py)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from gateway.loops import loop_factory, loop_name, run
from gateway.settings import ConfigError, load_settings


async def _which() -> str:
    return loop_name(asyncio.get_running_loop())


def test_asyncio_by_default() -> None:
    assert load_settings(None, env={}).server.event_loop == "asyncio"
    assert loop_factory("asyncio") is None
    assert run(_which()) == "asyncio"


def test_uvloop_when_asked() -> None:
    pytest.importorskip("uvloop")
    settings = load_settings(None, env={"TONGBAN_SERVER__EVENT_LOOP": "uvloop"})
    assert run(_which(), settings.server.event_loop) == "uvloop"


def test_uvloop_asked_but_not_installed_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        loop_factory("uvloop")
    assert run(_which(), "asyncio") == "asyncio"


def test_other_loops_are_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="event_loop"):
        load_settings(None, env={"TONGBAN_SERVER__EVENT_LOOP": "trio"})
