"""server.event_loop: which event loop a gateway process runs on (gateway/loops.py)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from gateway.loops import loop_factory, loop_name, run
from gateway.settings import ConfigError, load_settings


async def _which() -> str:
    return loop_name(asyncio.get_running_loop())


def test_auto_runs_on_uvloop_where_it_is_installed() -> None:
    pytest.importorskip("uvloop")
    assert run(_which()) == "uvloop"
    assert run(_which(), "uvloop") == "uvloop"


def test_asyncio_runs_on_asyncios_own_loop() -> None:
    assert loop_factory("asyncio") is None
    assert run(_which(), "asyncio") == "asyncio"


def test_without_uvloop_auto_falls_back_and_uvloop_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    assert loop_factory("auto") is None
    assert run(_which(), "auto") == "asyncio"
    with pytest.raises(RuntimeError, match="uvloop is not installed"):
        loop_factory("uvloop")


def test_the_setting_defaults_to_auto_and_refuses_other_loops() -> None:
    assert load_settings(None, env={}).server.event_loop == "auto"
    assert load_settings(None, env={"TONGBAN_SERVER__EVENT_LOOP": "asyncio"}).server.event_loop == (
        "asyncio"
    )
    with pytest.raises(ConfigError, match="event_loop"):
        load_settings(None, env={"TONGBAN_SERVER__EVENT_LOOP": "trio"})
