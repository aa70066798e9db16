"""TranslationService: translate records between registered schemas, store nothing."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import Any

import grpc
import orjson

from adapters.mapping import MappingSet, TranslationResult, UnknownSchemaError
from gateway.auth import Authenticator
from gateway.errors import InvalidPageToken, InvalidRequest, RecordTooLarge
from gateway.mappings import MappingRegistry
from gateway.rpc.batching import CallBatcher
from tongban.v1 import common_pb2, translation_pb2

__all__ = ["TranslationServicer", "warnings_to_proto"]


def warnings_to_proto(warnings: tuple[object, ...]) -> list[common_pb2.TranslationWarning]:
    """Translation warnings as protobuf messages."""
    return [
        common_pb2.TranslationWarning(code=w.code, field=w.pointer, message=w.message)  # type: ignore[attr-defined]
        for w in warnings
    ]


class TranslationServicer:
    """Implements ``tongban.v1.TranslationService`` on the serving mapping set."""

    def __init__(
        self,
        mappings: MappingRegistry,
        max_record_bytes: int,
        auth: Authenticator | None = None,
        *,
        batch_window: float = 0.0,
        batch_max: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.mappings = mappings
        self.max_record_bytes = max_record_bytes
        self.auth = auth
        # server.translate_batch_window_ms: translations of concurrent calls run together.
        self.batcher: CallBatcher[tuple[TranslationResult, bytes]] | None = (
            CallBatcher(batch_window, batch_max, on_batch) if batch_window > 0 else None
        )

    async def Translate(
        self, request: translation_pb2.TranslateRequest, context: grpc.aio.ServicerContext
    ) -> translation_pb2.TranslateResponse:
        """Translate one record from its schema to ``target_schema``."""
        ms = self.mappings.current
        if not request.HasField("record"):
            raise InvalidRequest("record is required", "record")
        source, target = request.record.schema, request.target_schema
        if not source:
            raise InvalidRequest("record.schema is required", "record.schema")
        if not target:
            raise InvalidRequest("target_schema is required", "target_schema")
        if len(request.record.json) > self.max_record_bytes:
            raise RecordTooLarge(
                f"record is larger than {self.max_record_bytes} bytes", "record.json"
            )
        caller = self.auth.optional(context) if self.auth else None
        for name, field in ((source, "record.schema"), (target, "target_schema")):
            try:
                kind = ms.kind_of(name)
            except UnknownSchemaError:
                raise UnknownSchemaError(name, field) from None
            if caller is not None:
                caller.check_kind(kind, field)
        data = request.record.json
        if self.batcher is None:
            result, body = _translate(ms, source, target, data)
        else:
            result, body = await self.batcher.run(lambda: _translate(ms, source, target, data))
        return translation_pb2.TranslateResponse(
            record=common_pb2.ForeignRecord(schema=target, json=body),
            mapping_versions=list(result.versions),
            warnings=warnings_to_proto(result.warnings),
        )

    async def ListSchemas(
        self, request: translation_pb2.ListSchemasRequest, context: grpc.aio.ServicerContext
    ) -> translation_pb2.ListSchemasResponse:
        """List schemas with their mapping versions, by name, in pages."""
        ms = self.mappings.current
        size = request.page_size or 50
        if size < 0:
            raise InvalidRequest("page_size must not be negative", "page_size")
        size = min(size, 500)
        after = ""
        if request.page_token:
            after = _decode_token(request.page_token, request.city)
        infos: list[translation_pb2.SchemaInfo] = []
        city_filter = ms.city(request.city) if request.city else None
        if request.city and city_filter is None:
            return translation_pb2.ListSchemasResponse()
        for name, cm in sorted(ms.compiled.items()):
            m = cm.mapping
            if city_filter is not None and m.city.name != city_filter.name:
                continue
            infos.append(
                translation_pb2.SchemaInfo(
                    name=name,
                    city=m.city.name,
                    city_code=m.city.code,
                    kind=m.kind,
                    canonical_message=m.canonical,
                    mapping_version=m.version,
                    code_lists=[c.ref for c in m.code_lists],
                    reversible=any(r.outbound for r in m.rules),
                )
            )
        if city_filter is None:
            for canonical in sorted(
                ("tongban.v1.Case", "tongban.v1.Person", "tongban.v1.Enterprise")
            ):
                infos.append(
                    translation_pb2.SchemaInfo(
                        name=canonical,
                        kind=ms.kind_of(canonical),
                        canonical_message=canonical,
                        reversible=True,
                    )
                )
        infos.sort(key=lambda i: i.name)
        page = [i for i in infos if i.name > after][:size]
        more = len([i for i in infos if i.name > after]) > size
        token = _encode_token(page[-1].name, request.city) if more and page else ""
        return translation_pb2.ListSchemasResponse(schemas=page, next_page_token=token)


def _translate(
    ms: MappingSet, source: str, target: str, data: Any
) -> tuple[TranslationResult, bytes]:
    result = ms.translate_json(source, target, data)
    return result, orjson.dumps(result.record)


def _encode_token(after: str, city: str) -> str:
    raw = json.dumps({"after": after, "city": city}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_token(token: str, city: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        after = data["after"]
        same_query = data["city"] == city
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidPageToken("page_token is malformed", "page_token") from None
    if not same_query or not isinstance(after, str):
        raise InvalidPageToken("page_token belongs to a different query", "page_token")
    return after
