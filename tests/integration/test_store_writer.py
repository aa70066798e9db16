"""The group-commit writer with batches larger than any SQL expression limit."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.app import bootstrap
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import common_pb2

from .conftest import ROOT, make_settings

CASE = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))


async def test_large_batch_commits_once_and_replays_idempotently(tmp_path: Path) -> None:
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
    writer = services.store.writer
    first = writer._run_batch(intents)  # one transaction for all 1500
    assert all(replayed is False for _, replayed in first)
    again = writer._run_batch([services.cases.prepare(caller, r) for r in requests])
    assert [replayed for _, replayed in again] == [True] * 1500
    assert [stored for stored, _ in again] == [stored for stored, _ in first]
    services.store.engine.dispose()
