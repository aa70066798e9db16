"""Who is calling and what they may do: one guard run before every tongban.v1 handler.

Identity comes from the client certificate in mTLS mode (its SAN DNS name, else its CN, matched
against ``partners.<id>.cert_name`` or the partner id), or from a development bearer token
(``authorization: Bearer <token>``, refused by the settings when TLS is on). The guard then applies
the partner's rate limit (RESOURCE_EXHAUSTED with RetryInfo) and the operator ACL; handlers check
the request-level ACL (target cities, record kinds, identity purposes) with :class:`Caller`.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc

from .errors import PermissionDenied, RateLimited, Unauthenticated
from .settings import AclSettings, Settings

__all__ = ["AccessGuard", "Authenticator", "Caller", "TokenBucket"]

_CURRENT: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)
_OPEN_WITHOUT_AUTH = "tongban.v1.TranslationService"
#: Services only peer gateways may call.
_PEERS_ONLY = frozenset({"tongban.v1.PartnerInboxService", "tongban.v1.AuditWitnessService"})


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated partner: its id, its city, what it may do."""

    partner: str
    city: str
    acl: AclSettings = field(default_factory=AclSettings)
    operator: bool = False
    # another Tongban gateway: may call this one's PartnerInboxService and AuditWitnessService
    peer: bool = False

    def may_target(self, city: str) -> bool:
        """Whether it may submit cases for ``city``."""
        return self.acl.target_cities is None or city in self.acl.target_cities

    def check_kind(self, kind: str, field_name: str) -> None:
        """PERMISSION_DENIED unless it may exchange records of ``kind``."""
        if kind not in self.acl.kinds:
            raise PermissionDenied(f"this partner may not exchange {kind} records", field_name)

    def check_purpose(self, purpose: str) -> None:
        """PERMISSION_DENIED unless it holds ``purpose``."""
        if purpose not in self.acl.purposes:
            raise PermissionDenied("this partner does not hold that purpose", "purpose")


class TokenBucket:
    """A token bucket; ``take`` returns 0 when allowed, else the seconds to wait."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self.rate, self.burst, self.clock = rate, float(burst), clock
        self.tokens = float(burst)
        self.at = clock()

    def take(self) -> float:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class Authenticator:
    """Maps a call to a :class:`Caller`."""

    def __init__(self, settings: Settings) -> None:
        self.mode = settings.auth.mode
        self._by_token: dict[str, Caller] = {}
        self._by_cert: dict[str, Caller] = {}
        for pid, p in settings.partners.items():
            caller = Caller(pid, p.city, p.acl, p.operator, p.peer)
            if p.token:
                self._by_token[f"Bearer {p.token}"] = caller
            self._by_cert[p.cert_name or pid] = caller

    def identify(
        self,
        metadata: Sequence[tuple[str, Any]] | None,
        auth_context: dict[str, list[bytes]] | None = None,
    ) -> Caller | None:
        """The caller named by the token (token mode) or the client certificate (mtls mode)."""
        if self.mode == "token":
            for key, value in metadata or ():
                if key == "authorization":
                    return self._by_token.get(str(value))
            return None
        if self.mode == "mtls" and auth_context:
            names = [n.decode() for n in auth_context.get("x509_subject_alternative_name", [])]
            names += [n.decode() for n in auth_context.get("x509_common_name", [])]
            for name in names:
                if name in self._by_cert:
                    return self._by_cert[name]
        return None

    def identify_call(self, context: grpc.aio.ServicerContext) -> Caller | None:
        """The caller named by this call's token or client certificate, as the mode says
        (none in mode ``none``: neither metadata nor the auth context is read)."""
        if self.mode == "token":
            return self.identify(context.invocation_metadata())
        if self.mode == "mtls":
            return self.identify(None, context.auth_context())
        return None

    def optional(self, context: grpc.aio.ServicerContext) -> Caller | None:
        """The caller of this RPC, if there is one."""
        return _CURRENT.get() or self.identify_call(context)

    def caller(self, context: grpc.aio.ServicerContext) -> Caller:
        """The caller of this RPC (set by the guard); UNAUTHENTICATED when there is none."""
        found = self.optional(context)
        if found is None:
            raise Unauthenticated("a partner identity is required")
        return found


class AccessGuard:
    """Runs before every tongban.v1 handler: authenticate, rate-limit, operator and peer ACL."""

    def __init__(
        self, settings: Settings, auth: Authenticator, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.auth = auth
        self.buckets = {
            pid: TokenBucket(p.rate_limit.rate_per_second, p.rate_limit.burst, clock)
            for pid, p in settings.partners.items()
        }

    def __call__(self, service: str, method: str, context: grpc.aio.ServicerContext) -> None:
        if not service.startswith("tongban.v1."):
            return
        caller = self.auth.identify_call(context)
        if caller is None:
            if self.auth.mode == "none" and service == _OPEN_WITHOUT_AUTH:
                return
            raise Unauthenticated("a valid partner identity is required")
        wait = self.buckets[caller.partner].take()
        if wait > 0:
            raise RateLimited("rate limit exceeded for this partner", retry_after=wait)
        if service == "tongban.v1.OperationsService" and not caller.operator:
            raise PermissionDenied("this partner is not an operator")
        if service in _PEERS_ONLY and not caller.peer:
            raise PermissionDenied("this partner is not a peer gateway")
        _CURRENT.set(caller)
