"""Log records the gateway had to drop (its log pipe did not keep up) are counted in
``tongban_log_records_dropped_total``, the metric behind the TongbanLogRecordsDropped alert."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import pytest

from gateway import logs
from gateway.app import Gateway
from gateway.logs import configure_logging, flush_logging

from .conftest import make_settings


async def test_dropped_log_records_are_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = logging.getLogger("tongban")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    monkeypatch.setattr(logs, "QUEUE_LIMIT", 0)  # a queue with no room: every record dropped
    configure_logging("INFO", "json", background=True)
    gw = Gateway(make_settings(tmp_path))
    await gw.start()
    try:
        for i in range(7):
            logging.getLogger("tongban.test").info("record", extra={"i": i})
        flush_logging()  # the writer reports what it dropped
        warnings = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [w["event"] for w in warnings] == ["log records dropped"]
        dropped = warnings[0]["dropped"]
        assert dropped >= 7  # ours, and the gateway's own start-up lines
        metric = gw.services.metrics.registry.get_sample_value("tongban_log_records_dropped_total")
        assert metric == dropped
    finally:
        await gw.stop(grace=0)
        flush_logging()
        logger.handlers[:], logger.level, logger.propagate = saved
    assert logs._drop_observers == []  # a stopped gateway no longer counts
