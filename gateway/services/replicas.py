"""What gateway replicas sharing one store must run alike, and how each notices when not.

Replicas (``tongban serve --workers N`` on one machine, processes on several machines sharing
PostgreSQL) share one audit chain, one set of sealed values and one flow of cases. So these
settings must be the same in every one of them:

audit.hash_algorithm  the audit chain's hash function. A gateway switches the chain to its
                      own setting when it starts: replicas set differently switch it back and
                      forth at each restart.
store.keys            the sealing keys: the active one, and each key's id with its check value
                      (:func:`key_check_value`). A value sealed by one replica's active key does
                      not open in a replica that lacks that key or holds another under its id.
mappings              the mapping files (their digest, and the mapping versions): a case
                      translated by one replica and its status changes by another must go
                      through the same mappings.
partners              the partners and what each may do and receives (:func:`partners_value`):
                      a replica missing a partner, or its inbox, cannot deliver to it (it
                      leaves that partner's rows to the replicas that know it: :data:`INBOXES`),
                      and access rules that differ make a call's answer depend on the replica
                      that took it.
retention             how long the store keeps what it no longer needs: the replica with the
                      shortest setting purges for all of them.

Every gateway writes its own with its heartbeat (``gateways.settings``, migration 0011), one
that serves without delivering too (0012), and compares them with every other live gateway's.
During a rolling change they differ for a while; a difference that lasts is a
misconfiguration. It is shown by ``tongban_replica_settings_differ{setting}``, the
``TongbanReplicaSettingsDiffer`` alert, a WARNING when it starts (INFO when it ends),
``tongban outbox status``'s gateway lines and ``tongban gateways``. A gateway of an earlier
version records fewer of these settings; only those both record are compared.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from adapters.mapping import MappingSet

from ..settings import Settings
from ..store.reads import GatewaySeen
from ..store.sealing import Keyring

__all__ = [
    "AGREED",
    "INBOXES",
    "Replica",
    "agreed_settings",
    "differences",
    "disagreements",
    "inboxes_of",
    "key_check_value",
    "parse_settings",
    "partners_value",
    "retention_value",
]

#: The settings replicas must share, in the order they are reported.
AGREED = ("audit.hash_algorithm", "store.keys", "mappings", "partners", "retention")

#: The heartbeat's record of the partners whose inboxes a gateway knows (not compared: read
#: so that no gateway dead-letters the rows of a partner another one knows, see
#: gateway.services.delivery).
INBOXES = "inboxes"

# What a check value is keyed on: never used for anything else.
_KCV_LABEL = b"tongban store key check value"


def key_check_value(secret: bytes) -> str:
    """A sealing key's check value: 6 hex digits of HMAC-SHA256 keyed by the key (as an HSM's
    KCV, it tells two keys apart without saying anything usable about either)."""
    return hmac.new(secret, _KCV_LABEL, hashlib.sha256).hexdigest()[:6]


def partners_value(settings: Settings) -> str:
    """The partners as replicas must share them: a digest of what routes cases and decides
    calls (each partner's city, certificate name, access rules, operator and peer flags,
    inbox transport, target and late statuses, ``max_in_flight_total``; the identity
    purposes; the authentication mode), then each partner's id, city, inbox and peer flag to
    read. Tokens, file paths (each machine has its own) and per-process tuning (retries,
    circuits, ``max_in_flight``, rate limits) are not in it."""
    shared = {
        "auth": settings.auth.mode,
        "purposes": {k: v.model_dump(mode="json") for k, v in settings.purposes.items()},
        "partners": {
            pid: {
                "city": p.city,
                "cert_name": p.cert_name,
                "acl": p.acl.model_dump(mode="json"),
                "operator": p.operator,
                "peer": p.peer,
                "inbox": [p.inbox.transport, p.inbox.target, p.inbox.late_statuses],
                "max_in_flight_total": p.max_in_flight_total,
            }
            for pid, p in settings.partners.items()
        },
    }
    digest = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()[:12]
    named = ", ".join(
        " ".join(
            [pid, p.city]
            + ([p.inbox.transport] if p.inbox.transport != "none" else [])
            + (["peer"] if p.peer else [])
        )
        for pid, p in sorted(settings.partners.items())
    )
    return f"digest {digest}: {named or 'none'}"


def retention_value(settings: Settings) -> str:
    """The retention periods, in days (0: kept for ever)."""
    r = settings.retention
    return (
        f"requests {r.request_days:g}, delivered {r.delivered_days:g}, closed cases "
        f"{r.closed_case_days:g}, audit {r.audit_days:g} (days; 0: kept)"
    )


def agreed_settings(
    settings: Settings, keyring: Keyring | None, mappings: MappingSet
) -> dict[str, str]:
    """This process's values of :data:`AGREED`, as words an operator can compare: its
    ``settings``, the sealing keys it holds now (``keyring``, read again when the keys file
    changes) and the mapping set it serves now."""
    if keyring is None:
        keys = "none (personal data in the clear)"
    else:
        held = ", ".join(
            f"{kid} {key_check_value(key.secret)}" for kid, key in sorted(keyring.keys.items())
        )
        keys = f"{keyring.active} active; {held}"
    return {
        "audit.hash_algorithm": settings.audit.hash_algorithm,
        "store.keys": keys,
        "mappings": f"files {mappings.digest[:12]}: {', '.join(mappings.versions())}",
        "partners": partners_value(settings),
        "retention": retention_value(settings),
    }


def _loaded(text: str) -> dict[str, Any]:
    """A ``gateways.settings`` value as JSON; empty if it is empty or unreadable."""
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _agreed_in(data: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in data.items() if k in AGREED and isinstance(v, str)}


def _inboxes_in(data: dict[str, Any]) -> frozenset[str]:
    found = data.get(INBOXES)
    return (
        frozenset(p for p in found if isinstance(p, str))
        if isinstance(found, list)
        else frozenset()
    )


def parse_settings(text: str) -> dict[str, str]:
    """A ``gateways.settings`` value read back; empty for a gateway that wrote none (before
    0011) or something unreadable, which is then left out of comparisons."""
    return _agreed_in(_loaded(text))


def inboxes_of(text: str) -> frozenset[str]:
    """The partners with an inbox a ``gateways.settings`` value names (none for a gateway
    before session 32's, or something unreadable)."""
    return _inboxes_in(_loaded(text))


@dataclass(frozen=True, slots=True)
class Replica:
    """A live gateway process on the store: its settings (of :data:`AGREED`), and the
    partners whose inboxes it knows."""

    host: str
    pid: int
    settings: dict[str, str]
    inboxes: frozenset[str] = frozenset()

    @classmethod
    def of(cls, gateway: GatewaySeen) -> Replica:
        """As its heartbeat row says (its settings read once)."""
        data = _loaded(gateway.settings)
        return cls(gateway.host, gateway.pid, _agreed_in(data), _inboxes_in(data))

    def where(self) -> str:
        """``host pid N``."""
        return f"{self.host} pid {self.pid}"


def differences(mine: dict[str, str], others: Iterable[Replica]) -> dict[str, list[str]]:
    """Setting -> how the others that run it otherwise do (``"sha256 at host pid 12"``), for
    each setting of :data:`AGREED` where one does. Others that recorded none are skipped."""
    out: dict[str, list[str]] = {}
    for other in others:
        for key in AGREED:
            theirs = other.settings.get(key)
            if theirs is not None and theirs != mine.get(key):
                out.setdefault(key, []).append(f"{theirs} at {other.where()}")
    return out


def disagreements(replicas: Sequence[Replica]) -> dict[str, list[str]]:
    """Setting -> each value held among ``replicas`` with where (``"sm3 at host pid 1"``),
    for the settings of :data:`AGREED` on which they do not all agree (``tongban outbox``)."""
    out: dict[str, list[str]] = {}
    for key in AGREED:
        held: dict[str, list[str]] = {}
        for r in replicas:
            value = r.settings.get(key)
            if value is not None:
                held.setdefault(value, []).append(r.where())
        if len(held) > 1:
            out[key] = [f"{value} at {', '.join(where)}" for value, where in held.items()]
    return out
