"""Deliveries to a partner system that exposes an HTTP/JSON API (httpx, with timeouts).

``POST {base}/cases`` and ``POST {base}/statuses`` with a JSON body and the header
``Idempotency-Key``. 2xx is success; 408, 429 and 5xx are retried (honouring ``Retry-After`` in
seconds); anything else is permanent, with the partner's reason kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from typing import Any

import httpx
from google.protobuf import json_format

from tongban.v1 import common_pb2
from tongban.v1 import partner_inbox_pb2 as inbox

from .base import CertificateSource, TransportError

__all__ = ["HttpInboxTransport"]

log = logging.getLogger("tongban.tls")

_RETRYABLE = {408, 429, 500, 502, 503, 504}


def _foreign(data: dict[str, Any]) -> common_pb2.ForeignRecord:
    return common_pb2.ForeignRecord(
        schema=str(data.get("schema", "")),
        json=json.dumps(data.get("record", {}), ensure_ascii=False).encode(),
    )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        return None


def _refused(resp: httpx.Response) -> TransportError:
    """The partner's refusal, retryable for the codes in _RETRYABLE, with its Retry-After."""
    return TransportError(
        resp.text[:300] or resp.reason_phrase,  # the status is in ``code``
        retryable=resp.status_code in _RETRYABLE,
        code=f"HTTP_{resp.status_code}",
        retry_after=_retry_after(resp),
    )


class HttpInboxTransport:
    """An httpx client of a partner's JSON API.

    With ``certificates`` (the TLS files of the partner's inbox, watched), a request made after
    the files changed and passed their checks goes through a new client holding them; requests
    in flight finish on the old client, which is closed after the last of them.
    """

    def __init__(
        self,
        base_url: str,
        client: httpx.AsyncClient | None = None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str = "",
        certificates: CertificateSource | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # ``ssl_context``: trust anchors and the gateway's client certificate (mutual TLS);
        # ``server_name``: the name the partner's certificate must carry (and SNI), when the
        # URL's host is an address.
        self._certificates = certificates
        if certificates is not None:
            ssl_context = certificates.current.ssl_context()
        self._client = client or self._new_client(ssl_context)
        self._extensions = {"sni_hostname": server_name} if server_name else None
        self._users: dict[httpx.AsyncClient, int] = {}  # requests in flight, per client
        self._closing: set[asyncio.Task[None]] = set()

    @staticmethod
    def _new_client(ssl_context: ssl.SSLContext | None) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            timeout=httpx.Timeout(5.0, connect=2.0),
            verify=ssl_context if ssl_context is not None else True,
        )

    def _refresh(self) -> None:
        """Take a new client if the certificate files changed and pass their checks."""
        if self._certificates is None:
            return
        material = self._certificates.poll()
        if material is None:
            return
        try:
            ssl_context = material.ssl_context()
        except ValueError as exc:  # CertificateError: the files changed again meanwhile
            log.warning("inbox certificate files not taken", extra={"error": str(exc)})
            return
        old, self._client = self._client, self._new_client(ssl_context)
        if old not in self._users:
            self._close_later(old)

    def _close_later(self, client: httpx.AsyncClient) -> None:
        task = asyncio.get_running_loop().create_task(client.aclose())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _send(self, method: str, path: str, timeout: float, **kwargs: Any) -> httpx.Response:
        """One request to the partner; a failure to get an answer as a retryable TransportError."""
        self._refresh()
        client = self._client
        self._users[client] = self._users.get(client, 0) + 1
        try:
            return await client.request(
                method,
                f"{self.base_url}{path}",
                timeout=timeout,
                extensions=self._extensions,
                **kwargs,
            )
        except httpx.TimeoutException as exc:
            raise TransportError(
                f"timeout: {type(exc).__name__}", retryable=True, code="TIMEOUT"
            ) from None
        except httpx.TransportError as exc:
            raise TransportError(
                f"connection failed: {type(exc).__name__}", retryable=True, code="CONNECT"
            ) from None
        except ssl.SSLError as exc:
            # httpcore maps TLS failures during the handshake to ConnectError, but not a TLS
            # alert that arrives with the first read (TLS 1.3: the partner refuses our client
            # certificate after the handshake completed), which escapes as ssl.SSLError.
            raise TransportError(
                f"TLS failed: {exc.reason or type(exc).__name__}", retryable=True, code="TLS"
            ) from None
        finally:
            left = self._users.pop(client) - 1
            if left:
                self._users[client] = left
            elif client is not self._client:
                self._close_later(client)  # replaced, and its last request is done

    async def _post(
        self, path: str, key: str, body: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        resp = await self._send("POST", path, timeout, json=body, headers={"Idempotency-Key": key})
        if not resp.is_success:
            raise _refused(resp)
        try:
            data = resp.json() if resp.content else {}
        except json.JSONDecodeError:
            data = {}
        return data if isinstance(data, dict) else {}

    async def deliver_case(
        self, request: inbox.DeliverCaseRequest, timeout: float
    ) -> inbox.DeliverCaseResponse:
        """POST the case."""
        body: dict[str, Any] = {
            "idempotency_key": request.idempotency_key,
            "source_city": request.source_city,
            "attempt": request.attempt,
        }
        if request.HasField("foreign"):
            body["schema"] = request.foreign.schema
            body["record"] = json.loads(request.foreign.json)
        else:
            body["schema"] = "tongban.v1.Case"
            body["record"] = json_format.MessageToDict(
                request.canonical, preserving_proto_field_name=True
            )
        data = await self._post("/cases", request.idempotency_key, body, timeout)
        return inbox.DeliverCaseResponse(
            partner_reference=str(data.get("reference", "")),
            duplicate=bool(data.get("duplicate", False)),
        )

    async def deliver_status(
        self, request: inbox.DeliverStatusRequest, timeout: float
    ) -> inbox.DeliverStatusResponse:
        """POST the status change."""
        body = json_format.MessageToDict(request, preserving_proto_field_name=True)
        data = await self._post("/statuses", request.idempotency_key, body, timeout)
        return inbox.DeliverStatusResponse(duplicate=bool(data.get("duplicate", False)))

    async def _get(self, path: str, params: dict[str, str], timeout: float) -> dict[str, Any]:
        resp = await self._send("GET", path, timeout, params=params)
        if resp.status_code == 404:
            raise TransportError("not found", retryable=False, code="NOT_FOUND")
        if not resp.is_success:
            raise _refused(resp)
        data = resp.json()
        return data if isinstance(data, dict) else {}

    async def lookup_person(
        self, request: inbox.LookupPersonRequest, timeout: float
    ) -> inbox.LookupPersonResponse:
        """GET {base}/persons/{number}: answers {"schema": ..., "record": {...}}."""
        data = await self._get(
            f"/persons/{request.certificate_number}",
            {"purpose": request.purpose, "requesting_city": request.requesting_city},
            timeout,
        )
        return inbox.LookupPersonResponse(foreign=_foreign(data))

    async def lookup_enterprise(
        self, request: inbox.LookupEnterpriseRequest, timeout: float
    ) -> inbox.LookupEnterpriseResponse:
        """GET {base}/enterprises/{credit_code}."""
        data = await self._get(
            f"/enterprises/{request.credit_code}",
            {"purpose": request.purpose, "requesting_city": request.requesting_city},
            timeout,
        )
        return inbox.LookupEnterpriseResponse(foreign=_foreign(data))

    async def close(self) -> None:
        """Close the client (and any replaced one still finishing its requests)."""
        for client in [self._client, *self._users]:
            if not client.is_closed:
                await client.aclose()
        await asyncio.gather(*self._closing, return_exceptions=True)
