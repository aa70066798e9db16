"""Submissions are prepared (validated, translated) in the store's writer process: the same
answers and errors as preparing them in the gateway, translation metrics kept, and the mapping
set a case was accepted under, across reloads and writer restarts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from adapters.mapping import MalformedRecordError, RecordInvalidError
from gateway.app import Services, bootstrap
from gateway.auth import Caller
from gateway.errors import BackendUnavailable
from gateway.rpc.errors import status_for
from gateway.services.submission import Completed, SubmitRequestIntent
from gateway.store.engine import make_engine
from gateway.store.writer import run_intents
from tongban.v1 import case_exchange_pb2 as cx
from tongban.v1 import common_pb2, records_pb2

from .conftest import ROOT, WRITER_PROCESS_ENV, make_settings

CASE = json.loads((ROOT / "mappings/zhongshan/samples/case/01-case.json").read_text("utf-8"))
ENV = {
    **WRITER_PROCESS_ENV,
    # A partner without an inbox: its city receives no cases.
    "TONGBAN_PARTNERS__GZ__CITY": "440100",
    "TONGBAN_SERVER__MAX_RECORD_BYTES": "4096",
}


def _foreign(rid: str, record: Any, schema: str = "zhongshan.case", **kw: Any) -> Any:
    body = record if isinstance(record, bytes) else json.dumps(record).encode()
    return cx.SubmitCaseRequest(
        request_id=rid,
        target_city=kw.get("target", "440300"),
        foreign=common_pb2.ForeignRecord(schema=schema, json=body),
    )


def _refused() -> list[cx.SubmitCaseRequest]:
    """One request for each way preparation refuses a case."""
    no_number = {k: v for k, v in CASE.items() if k != "SBLSH"}
    return [
        _foreign("", CASE),  # request_id missing
        _foreign("r-\x00", CASE),  # request_id not printable
        _foreign("r-target", CASE, target=""),
        _foreign("r-city", CASE, target="999999"),  # no such city
        _foreign("r-noinbox", CASE, target="440100"),  # a city without an inbox
        cx.SubmitCaseRequest(request_id="r-norecord", target_city="440300"),
        _foreign("r-schema", CASE, schema=""),
        _foreign("r-unknown", CASE, schema="nowhere.case"),
        _foreign("r-kind", CASE, schema="zhongshan.person"),
        _foreign("r-large", dict(CASE, SQRDZ="x" * 5000)),
        _foreign("r-json", b'{"SBLSH": '),
        _foreign("r-array", b"[1, 2]"),
        _foreign("r-invalid", no_number),  # the mapping refuses it: field pointer inside
        _foreign("r-type", dict(CASE, SQSJ=20260101)),
        _foreign("r-receiving", dict(CASE, SJD="440100")),  # not the caller's city
        cx.SubmitCaseRequest(
            request_id="r-canonical", target_city="440300", canonical=records_pb2.Case()
        ),
        cx.SubmitCaseRequest(
            request_id="r-canonical-city",
            target_city="440300",
            canonical=records_pb2.Case(case_number="N-1", handling_city="440100"),
        ),
    ]


def _status(exc: BaseException) -> tuple[Any, ...]:
    code, message, st = status_for(exc)
    return code, message, st.SerializeToString(deterministic=True)


async def _started(tmp_path: Path, **env: str) -> tuple[Services, Caller]:
    services = bootstrap(make_settings(tmp_path, **{**ENV, **env}))
    in_child = env.get("TONGBAN_STORE__WRITER", "process") == "process"
    assert (services.store.writer_process is not None) == in_child
    caller = services.auth.identify([("authorization", "Bearer t")])
    assert caller is not None
    services.store.start()
    return services, caller


WRITERS = pytest.mark.parametrize("writer", ["process", "thread"])


@WRITERS
async def test_refusals_from_the_writer_are_those_of_preparing_here(
    tmp_path: Path, writer: str
) -> None:
    services, caller = await _started(tmp_path, TONGBAN_STORE__WRITER=writer)
    try:
        requests = _refused()
        here = []
        for request in requests:
            with pytest.raises(Exception) as err:
                services.cases.prepare(caller, request)
            here.append(err.value)
        # One at a time (unary), then all at once (a stream): each refused alike.
        for request, expected in zip(requests, here, strict=True):
            with pytest.raises(Exception) as err:
                await services.cases.submit(caller, request)
            assert type(err.value) is type(expected), request.request_id
            assert _status(err.value) == _status(expected), request.request_id
        results = await services.cases.submit_many(caller, requests)
        for request, result, expected in zip(requests, results, here, strict=True):
            assert isinstance(result, Exception), request.request_id
            assert _status(result) == _status(expected), request.request_id
        # Nothing refused left a row behind.
        rows = await services.store.read(
            services.store.reader.cases, ["442000", "440300"], before_seq=None, limit=100
        )
        assert rows == []
    finally:
        await services.store.stop()


@WRITERS
async def test_accepted_cases_and_translation_metrics(tmp_path: Path, writer: str) -> None:
    services, caller = await _started(tmp_path, TONGBAN_STORE__WRITER=writer)
    registry = services.metrics.registry

    def count(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    try:
        ok = _foreign("m-1", dict(CASE, SBLSH="442000-2026-m0001"))
        answer = await services.cases.submit(caller, ok)
        assert len(answer.exchange_id) == 32
        assert answer.status == records_pb2.CASE_STATUS_SUBMITTED
        row = await services.store.read(services.store.reader.case, answer.exchange_id)
        assert row is not None
        assert (row.case_number, row.receiving_city, row.handling_city) == (
            "442000-2026-m0001",
            "442000",
            "440300",
        )
        assert row.mapping_versions == "zhongshan.case@1"
        # A replay: the first answer, byte for byte.
        assert await services.cases.submit(caller, ok) == answer
        bad = _foreign("m-2", {k: v for k, v in CASE.items() if k != "SBLSH"})
        with pytest.raises(RecordInvalidError):
            await services.cases.submit(caller, bad)
        # Counted in this process, as if translated here: two translations, one failure.
        labels = {"schema": "zhongshan.case", "direction": "inbound"}
        assert count("tongban_translations_total", **labels) == 2
        assert count("tongban_translation_failures_total", code="REQUIRED_MISSING", **labels) == 1
    finally:
        await services.store.stop()


async def test_a_reload_gives_the_writer_the_new_set_and_queued_cases_keep_theirs(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", folder)
    services, caller = await _started(tmp_path, TONGBAN_MAPPINGS__PATH=str(folder))
    store = services.store
    try:
        first = await services.cases.submit(caller, _foreign("v-1", dict(CASE, SBLSH="N-v1")))
        # Accepted under version 1, written after the reload to version 2.
        queued = services.cases._deferred(caller, _foreign("v-2", dict(CASE, SBLSH="N-v2")))
        yaml = folder / "zhongshan/case.yaml"
        yaml.write_text(yaml.read_text("utf-8").replace("version: 1", "version: 2"), "utf-8")
        assert services.mappings.reload().ok
        second = services.cases._settle(await store.write(queued))
        third = await services.cases.submit(caller, _foreign("v-3", dict(CASE, SBLSH="N-v3")))
        # More reloads than the writer keeps sets for: each case is still prepared.
        for n in range(12):
            assert services.mappings.reload().ok
            await services.cases.submit(caller, _foreign(f"v-r{n}", dict(CASE, SBLSH=f"N-r{n}")))
        # A writer process started anew (this one died between batches) gets the set again.
        wp = store.writer_process
        assert wp is not None
        assert wp._proc is not None
        wp._proc.kill()
        wp._proc.wait()
        last = await services.cases.submit(caller, _foreign("v-4", dict(CASE, SBLSH="N-v4")))
        versions = []
        for exchange_id in (
            first.exchange_id,
            cx.SubmitCaseResponse.FromString(second[0]).exchange_id,
            third.exchange_id,
            last.exchange_id,
        ):
            row = await store.read(store.reader.case, exchange_id)
            assert row is not None
            versions.append(row.mapping_versions)
        assert versions == [
            "zhongshan.case@1",
            "zhongshan.case@1",
            "zhongshan.case@2",
            "zhongshan.case@2",
        ]
    finally:
        await store.stop()


async def test_one_batch_may_need_more_mapping_sets_than_the_writer_keeps(
    tmp_path: Path,
) -> None:
    services, caller = await _started(tmp_path)
    store = services.store
    try:
        queued = []
        for n in range(7):  # seven sets, each with a case queued under it
            queued.append(
                services.cases._deferred(caller, _foreign(f"k-{n}", dict(CASE, SBLSH=f"N-k{n}")))
            )
            assert services.mappings.reload().ok
        assert len({intent.token for intent in queued}) == 7
        outcomes = await store.write_many(queued)
        answers = [services.cases._settle(outcome) for outcome in outcomes]
        assert [replayed for _, replayed in answers] == [False] * 7
        # Then the writer keeps only the newest sets, and the gateway knows which.
        wp = store.writer_process
        assert wp is not None
        assert len(wp._shipped) == 4
        again = await services.cases.submit(caller, _foreign("k-7", dict(CASE, SBLSH="N-k7")))
        assert again.exchange_id
        # A set the writer forgot is shipped again when a case still needs it.
        first = queued[0]
        assert first.token not in wp._shipped
        late = SubmitRequestIntent(
            caller,
            _foreign("k-8", dict(CASE, SBLSH="N-k8")).SerializeToString(deterministic=True),
            first.token,
        )
        late.context = first.context
        stored, replayed = services.cases._settle(await store.write(late))
        assert replayed is False
        assert cx.SubmitCaseResponse.FromString(stored).exchange_id
    finally:
        await store.stop()


async def test_with_the_store_down_a_refused_case_keeps_its_own_error(tmp_path: Path) -> None:
    services = bootstrap(make_settings(tmp_path, **ENV))
    caller = services.auth.identify([("authorization", "Bearer t")])
    assert caller is not None
    good = services.cases._deferred(caller, _foreign("d-1", CASE))
    bad = services.cases._deferred(caller, _foreign("d-2", b"[1, 2]"))
    # A database without the gateway's tables: every statement fails.
    empty = make_engine(f"sqlite:///{tmp_path / 'empty.db'}", write=True)
    try:
        first, second = run_intents(empty, [good, bad], 1.0)
    finally:
        empty.dispose()
    assert isinstance(first, Completed)
    assert isinstance(first.result, BackendUnavailable)  # retry later
    assert isinstance(second, Completed)
    assert isinstance(second.result, MalformedRecordError)  # not worth a retry
