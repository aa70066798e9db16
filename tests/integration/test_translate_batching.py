"""Translate with ``server.translate_batch_window_ms`` (on by default): concurrent calls run in
windows and get exactly the answers and errors they get one by one (window 0)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from gateway.app import Gateway
from gateway.rpc.translation import TranslationServicer
from tongban.v1 import translation_pb2_grpc

from .conftest import ROOT, make_settings, rich_error
from .test_translation_rpc import ZS_CASE, req

ZS_PERSON = (ROOT / "mappings/zhongshan/samples/person/02-person.json").read_bytes()

REQUESTS = [
    req("zhongshan.case", ZS_CASE, "shenzhen.case"),
    req("zhongshan.case", b'{"SBLSH": ', "shenzhen.case"),  # not JSON
    req("zhongshan.person", ZS_PERSON, "shenzhen.person"),  # a warning
    req("zhongshan.case", ZS_CASE, "guangzhou.case"),
    req("zhongshan.case", b"{}", "shenzhen.case"),  # required fields missing
    req("zhongshan.case", ZS_CASE, "tongban.v1.Case"),
]


async def _answers(gw: Gateway) -> list[object]:
    async with grpc.aio.insecure_channel(gw.address) as ch:
        stub = translation_pb2_grpc.TranslationServiceStub(ch)
        calls = [stub.Translate(r) for r in REQUESTS * 4]
        out: list[object] = []
        for result in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(result, grpc.aio.AioRpcError):
                out.append(rich_error(result))
            else:
                out.append(result.SerializeToString(deterministic=True))
        return out


async def test_batched_answers_are_those_of_one_by_one(tmp_path: Path) -> None:
    plain = Gateway(
        make_settings(tmp_path / "plain", TONGBAN_SERVER__TRANSLATE_BATCH_WINDOW_MS="0")
    )
    batched = Gateway(
        make_settings(
            tmp_path / "batched",
            TONGBAN_SERVER__TRANSLATE_BATCH_WINDOW_MS="20",
            TONGBAN_SERVER__TRANSLATE_BATCH_MAX="8",
        )
    )
    await plain.start()
    await batched.start()
    try:
        expected = await _answers(plain)
        assert await _answers(batched) == expected
        # Every error path and a warning are among them.
        codes = {e["code"] for e in expected if isinstance(e, dict)}
        assert codes == {grpc.StatusCode.INVALID_ARGUMENT}
        servicer = batched.services.servicers["TranslationService"]
        assert isinstance(servicer, TranslationServicer)
        assert servicer.batcher is not None
        # 24 concurrent calls, at most 8 per window: the first window (a probe) filled up,
        # which turned batching on; they ran together, not one by one.
        assert servicer.batcher.calls == 24
        assert 3 <= servicer.batcher.batches < 24
        # What each window held reaches the histogram operators tune the window with.
        registry = batched.services.metrics.registry
        assert registry.get_sample_value("tongban_translate_batch_calls_sum") == 24
        assert (
            registry.get_sample_value("tongban_translate_batch_calls_count")
            == servicer.batcher.batches
        )
        assert plain.services.servicers["TranslationService"].batcher is None  # type: ignore[attr-defined]
    finally:
        await plain.stop(grace=0)
        await batched.stop(grace=0)
