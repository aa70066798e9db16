"""The group-commit writer with batches larger than any SQL expression limit."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from gateway.app import bootstrap
from gateway.store.writer import run_intents
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import common_pb2

from .conftest import ROOT, make_settings

CASE = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))


async def test_large_batch_commits_once_and_replays_idempotently(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    services = bootstrap(
        make_settings(
            tmp_path,
            TONGBAN_AUTH__MODE="token",
            TONGBAN_PARTNERS__ZS__CITY="442000",
            TONGBAN_PARTNERS__ZS__TOKEN="t",
            TONGBAN_PARTNERS__SZ__CITY="440300",
            TONGBAN_PARTNERS__SZ__INBOX__TRANSPORT="grpc",
            TONGBAN_PARTNERS__SZ__INBOX__TARGET="127.0.0.1:9",
        )
    )
    caller = services.auth.identify([("authorization", "Bearer t")])
    assert caller is not None
    requests = [
        cx.SubmitCaseRequest(
            request_id=f"big-{i}",
            target_city="440300",
            foreign=common_pb2.ForeignRecord(
                schema="zhongshan.case",
                json=json.dumps(dict(CASE, SBLSH=f"442000-2026-{i:06d}")).encode(),
            ),
        )
        for i in range(1500)
    ]
    intents = [services.cases.prepare(caller, r) for r in requests]
    engine = services.store.engine
    with caplog.at_level(logging.WARNING, logger="tongban.store"):
        first = run_intents(engine, intents, 1.0)  # one transaction for all 1500
        assert all(replayed is False for _, replayed in first)
        again = run_intents(engine, [services.cases.prepare(caller, r) for r in requests], 2.0)
    # Neither batch fell back to one transaction per intent.
    assert not [r for r in caplog.records if "one by one" in r.getMessage()]
    assert [replayed for _, replayed in again] == [True] * 1500
    assert [stored for stored, _ in again] == [stored for stored, _ in first]
    engine.dispose()
