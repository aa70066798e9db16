"""One place wires everything: :func:`bootstrap` builds the object graph, :func:`create_server`
the gRPC server on it, :class:`Gateway` runs both with their background tasks.

Nothing here connects at import time; every dependency is built from the settings and passed
down explicitly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection, reflection_pb2

from adapters.mapping.compiler import native_enabled
from adapters.transports import GrpcInboxTransport, HttpInboxTransport, PartnerTransport
from tongban.v1 import (
    case_exchange_pb2,
    identity_pb2,
    operations_pb2,
    partner_inbox_pb2,
    translation_pb2,
    witness_pb2,
)

from .audit_signing import PublicKey, Signer, SigningKeyError
from .auth import AccessGuard, Authenticator
from .logs import observe_drops
from .loops import loop_name
from .mappings import MappingRegistry
from .metrics import (
    GatewayMetrics,
    MetricsDeliveryObserver,
    call_observer,
    serve_metrics,
)
from .rpc.case_exchange import CaseExchangeServicer
from .rpc.identity import IdentityServicer
from .rpc.operations import OperationsServicer
from .rpc.peering import PeerInboxServicer
from .rpc.registration import CallObserver, DeadlineWatchdog, register_service
from .rpc.translation import TranslationServicer
from .rpc.witness import AuditWitnessServicer
from .services.cases import CaseService
from .services.dead_letters import DeadLetterService
from .services.delivery import DeliveryObserver, DeliveryService
from .services.identity import IdentityService
from .services.peering import PeerInbox
from .services.reencrypt import ReencryptService
from .services.retention import RetentionService
from .services.witness import AuditWitness, WitnessClient
from .settings import Settings
from .store.checkpoints import sign_head
from .store.intents import ChainHashIntent
from .store.sealing import Keyring, KeyringError
from .store.store import Store
from .tls_files import ClientCertificates, FileWatch, ServerCertificates

__all__ = ["Gateway", "Services", "bootstrap", "create_server"]

log = logging.getLogger("tongban.server")

#: Every tongban.v1 service the gateway serves or speaks (reflection lists them all).
SERVICE_DESCRIPTORS = {
    "TranslationService": translation_pb2.DESCRIPTOR.services_by_name["TranslationService"],
    "CaseExchangeService": case_exchange_pb2.DESCRIPTOR.services_by_name["CaseExchangeService"],
    "IdentityService": identity_pb2.DESCRIPTOR.services_by_name["IdentityService"],
    "PartnerInboxService": partner_inbox_pb2.DESCRIPTOR.services_by_name["PartnerInboxService"],
    "OperationsService": operations_pb2.DESCRIPTOR.services_by_name["OperationsService"],
    "AuditWitnessService": witness_pb2.DESCRIPTOR.services_by_name["AuditWitnessService"],
}


#: At most one part in this many of the time goes to refreshing the store's gauges.
GAUGE_COST_SHARE = 100


def next_gauge_refresh(started: float, finished: float, interval: float) -> float:
    """When the store's gauges are refreshed next, after a refresh from ``started`` to
    ``finished`` (monotonic seconds): ``interval`` later, or later still when the refresh was
    slow, so that refreshing takes at most 1/``GAUGE_COST_SHARE`` of the time (a refresh of
    50 ms, ~500k pending rows, waits 5 s)."""
    return started + max(interval, GAUGE_COST_SHARE * (finished - started))


@dataclass
class Services:
    """The object graph of one gateway process."""

    settings: Settings
    mappings: MappingRegistry
    store: Store
    auth: Authenticator
    cases: CaseService
    delivery: DeliveryService
    metrics: GatewayMetrics
    guard: AccessGuard
    watchdog: DeadlineWatchdog
    retention: RetentionService
    servicers: dict[str, Any] = field(default_factory=dict)
    observer: CallObserver | None = None
    # Hands the audit chain's checkpoints to peer gateways to witness (audit.witnesses).
    witnesses: WitnessClient | None = None
    # Moves sealed values to the active key (store.keys_file, store.reencrypt_in_background).
    reencrypt: ReencryptService | None = None


def make_transports(
    settings: Settings, metrics: GatewayMetrics | None = None
) -> dict[str, PartnerTransport]:
    """One transport per partner that has an inbox (over TLS, with the gateway's client
    certificate, when its settings say so). The TLS files are checked now (a
    :class:`CertificateError` names what is wrong) and watched while the gateway runs."""
    out: dict[str, PartnerTransport] = {}
    for pid, p in settings.partners.items():
        ib = p.inbox
        if ib.transport == "none":
            continue
        certificates = None
        if ib.uses_tls:
            certificates = ClientCertificates(
                pid,
                ib.ca,
                ib.client_cert,
                ib.client_key,
                on_reload=_count_reload(metrics, f"client:{pid}"),
                on_expiry=_set_expiry(metrics, f"client:{pid}"),
            )
        if ib.transport == "grpc":
            out[pid] = GrpcInboxTransport(
                ib.target, server_name=ib.server_name, certificates=certificates
            )
        elif ib.transport == "http":
            out[pid] = HttpInboxTransport(
                ib.target, server_name=ib.server_name, certificates=certificates
            )
    return out


def _count_reload(metrics: GatewayMetrics | None, which: str) -> Callable[[str], None] | None:
    if metrics is None:
        return None
    for outcome in ("ok", "rejected"):
        metrics.tls_reloads.labels(which, outcome)
    return lambda outcome: metrics.tls_reloads.labels(which, outcome).inc()


def _set_expiry(metrics: GatewayMetrics | None, which: str) -> Callable[[float], None] | None:
    if metrics is None:
        return None
    return metrics.certificate_expiry.labels(which).set


def bootstrap(
    settings: Settings,
    *,
    clock: Any = time.time,
    transports: dict[str, PartnerTransport] | None = None,
    delivery_observer: DeliveryObserver | None = None,
) -> Services:
    """Build every service from the settings: mappings (checked), store (migrated for SQLite)."""
    metrics = GatewayMetrics()
    mappings = MappingRegistry(
        settings.mappings.path,
        run_golden_on_reload=settings.mappings.run_golden_on_reload,
        on_translation=metrics.translation,
        on_reload=lambda ok: metrics.reloads.labels("ok" if ok else "rejected").inc(),
    )
    store = Store(
        settings.store.effective_url,
        clock=clock,
        pool_size=settings.store.pool_size,
        group_commit_max=settings.store.group_commit_max,
        writer=settings.store.writer,
        log_level=settings.log.level,
        commit_delay=settings.store.commit_delay_ms / 1000,
        commit_delay_per_caller=settings.store.commit_delay_per_caller_ms / 1000,
        keyring=settings.store.keyring,
    )
    if store.is_sqlite:
        store.migrate()
    auth = Authenticator(settings)
    cases = CaseService(settings, mappings, store, clock)
    delivery = DeliveryService(
        settings,
        mappings,
        store,
        transports if transports is not None else make_transports(settings, metrics),
        clock=clock,
        observer=delivery_observer or MetricsDeliveryObserver(metrics),
    )
    services = Services(
        settings,
        mappings,
        store,
        auth,
        cases,
        delivery,
        metrics,
        AccessGuard(settings, auth),
        DeadlineWatchdog(settings.server.max_deadline_seconds),
        RetentionService(
            settings.retention,
            store,
            on_purged=metrics.purged_rows,
            on_done=metrics.last_purge.set,
            on_archive_failed=metrics.audit_archive_failures.inc,
        ),
    )
    services.observer = call_observer(metrics)
    if settings.store.keys_file is not None and settings.store.reencrypt_in_background:
        services.reencrypt = ReencryptService(
            store,
            batch_rows=settings.store.reencrypt_batch_rows,
            settle_seconds=settings.store.reencrypt_settle_seconds,
            on_sealed=lambda column, n: metrics.reencrypted.labels(column).inc(n),
            on_stopped=lambda stopped: metrics.reencrypt_stopped.set(1 if stopped else 0),
        )
    services.servicers["TranslationService"] = TranslationServicer(
        mappings,
        settings.server.max_record_bytes,
        auth,
        batch_window=settings.server.translate_batch_window_ms / 1000,
        batch_max=settings.server.translate_batch_max,
        on_batch=metrics.translate_batch_calls.observe,
    )
    services.servicers["CaseExchangeService"] = CaseExchangeServicer(cases, auth)
    identity = IdentityService(settings, mappings, store, delivery.transports, metrics)
    services.servicers["IdentityService"] = IdentityServicer(identity, auth)
    peers = settings.peers
    if peers:  # federated mode: peer gateways deliver here
        counter = metrics.peer_status_changes
        for peer in peers:
            for outcome in ("applied", "out_of_order", "overtaken"):
                counter.labels(peer, outcome)
        services.servicers["PartnerInboxService"] = PeerInboxServicer(
            PeerInbox(
                cases,
                identity,
                store,
                peers,
                on_status=lambda peer, outcome: counter.labels(peer, outcome).inc(),
            ),
            auth,
        )
    if peers:  # witness the peers' audit checkpoints, those whose keys are held here
        witnessed = metrics.audit_witnessed
        for peer in peers:
            for outcome in ("kept", "known", "conflict", "refused"):
                witnessed.labels(peer, outcome)
        services.servicers["AuditWitnessService"] = AuditWitnessServicer(
            AuditWitness(
                store,
                {peer: settings.partners[peer].audit_keys for peer in peers},
                clock,
                on_witnessed=lambda peer, outcome: witnessed.labels(peer, outcome).inc(),
            ),
            auth,
        )
    calls = {
        peer: transport.witness_checkpoint
        for peer in settings.witnesses
        if isinstance(transport := delivery.transports.get(peer), GrpcInboxTransport)
    }
    if calls:
        handovers, acknowledged = metrics.audit_witness_handovers, metrics.audit_witnessed_length
        for peer in calls:
            for outcome in ("witnessed", "known", "contradicted", "refused", "failed"):
                handovers.labels(peer, outcome)
        services.witnesses = WitnessClient(
            store,
            calls,
            on_outcome=lambda peer, outcome: handovers.labels(peer, outcome).inc(),
            on_length=lambda peer, length: acknowledged.labels(peer).set(length),
        )
    services.servicers["OperationsService"] = OperationsServicer(
        DeadLetterService(store), auth, settings
    )
    return services


def create_server(
    settings: Settings, services: Services | None = None
) -> tuple[grpc.aio.Server, int, health_aio.HealthServicer]:
    """Build the grpc.aio server: services, health, reflection, bound to the configured port.

    Returns the server (not started), the bound port (useful with port 0) and the health
    servicer, which reports NOT_SERVING until :meth:`Gateway.start` marks it SERVING.
    """
    services = services or bootstrap(settings)
    cfg = settings.server
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", cfg.max_message_bytes),
        ("grpc.max_send_message_length", cfg.max_message_bytes),
        ("grpc.so_reuseport", 1 if cfg.workers > 1 else 0),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ]
    # No interceptors: every method is wrapped once at registration (see rpc/registration.py).
    server = grpc.aio.server(options=options)
    served = []
    for name, servicer in services.servicers.items():
        desc = SERVICE_DESCRIPTORS[name]
        register_service(
            server, desc, servicer, services.observer, services.guard, services.watchdog
        )
        served.append(desc.full_name)
    health = health_aio.HealthServicer()
    health_desc = health_pb2.DESCRIPTOR.services_by_name["Health"]
    register_service(server, health_desc, health, services.observer)
    names = [d.full_name for d in SERVICE_DESCRIPTORS.values()]
    names += [health_desc.full_name, reflection.SERVICE_NAME]
    register_service(
        server,
        reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
        reflection.aio.ReflectionServicer(names),
        services.observer,
    )
    services.metrics.initialise(
        [
            *SERVICE_DESCRIPTORS.values(),
            health_desc,
            reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
        ]
    )
    tls = settings.tls
    if tls.enabled:
        assert tls.cert is not None
        assert tls.key is not None
        metrics = services.metrics
        certificates = ServerCertificates(
            tls.cert,
            tls.key,
            tls.client_ca,
            on_reload=lambda outcome: metrics.tls_reloads.labels("server", outcome).inc(),
            on_expiry=lambda which, until: metrics.certificate_expiry.labels(which).set(until),
        )
        creds = certificates.credentials()
        port = server.add_secure_port(f"{cfg.host}:{cfg.port}", creds)
    else:
        port = server.add_insecure_port(f"{cfg.host}:{cfg.port}")
    if port == 0:
        raise OSError(f"cannot bind {cfg.host}:{cfg.port}")
    return server, port, health


class Gateway:
    """A running gateway: the server plus background tasks, started and stopped together."""

    def __init__(self, settings: Settings, services: Services | None = None) -> None:
        self.settings = settings
        self.services = services or bootstrap(settings)
        self.server, self.port, self.health = create_server(settings, self.services)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._metrics_server: Any = None
        self.store_healthy = True
        # store.keys_file and audit.signing_key as read with the settings: a change is read
        # again (_reload_keys, _signing_key).
        keys, signing = settings.store.keys_file, settings.audit.signing_key
        self._keys_file = FileWatch([keys]) if keys is not None else None
        # A key in a PKCS#11 token is looked up before each checkpoint instead (its label may
        # name a new key: _follow_token_key).
        self._signing_file = FileWatch([signing]) if isinstance(signing, Path) else None
        self._signer = settings.audit.signer
        # Keys signing_key held before it changed while serving: their checkpoints still hold.
        self._retired_keys: dict[str, PublicKey] = {}

    @property
    def address(self) -> str:
        """``host:port`` the server listens on."""
        return f"{self.settings.server.host}:{self.port}"

    async def start(self) -> None:
        """Start the store writer and the server, background tasks, then report SERVING."""
        self.services.store.start()
        await self._follow_hash_setting()
        await self.server.start()
        if self.settings.delivery.enabled:
            self._tasks.append(asyncio.create_task(self.services.delivery.run(self._stop)))
        else:  # its heartbeat alone: replicas compare the settings they must share with its
            self._tasks.append(asyncio.create_task(self.services.delivery.announce(self._stop)))
        if self.settings.mappings.watch:
            self._tasks.append(asyncio.create_task(self.services.mappings.watch(self._stop)))
        if self.settings.metrics.enabled:
            m = self.settings.metrics
            self._metrics_server = serve_metrics(self.services.metrics, m.host, m.port)
        observe_drops(self.services.metrics.log_records_dropped.inc)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._tasks.append(asyncio.create_task(self._probe_store()))
        self._tasks.append(asyncio.create_task(self.services.watchdog.run(self._stop)))
        self._tasks.append(asyncio.create_task(self.services.retention.run(self._stop)))
        if self.services.reencrypt is not None:
            self._tasks.append(asyncio.create_task(self.services.reencrypt.run(self._stop)))
        if self._signer is not None:
            self._tasks.append(asyncio.create_task(self._sign_checkpoints()))
        keyring = self.settings.store.keyring
        log.info(
            "gateway serving",
            extra={
                "address": self.address,
                "mapping_fast_path": native_enabled(),
                "event_loop": loop_name(asyncio.get_running_loop()),
                "sealing_key": keyring.active if keyring else None,
                # A PKCS#11 URI without its PIN, or None: the keys file holds them in the clear.
                "sealing_keys_wrapped_by": keyring.wrapping_described() if keyring else None,
                "audit_signing_key": self._signer.key_id if self._signer else None,
            },
        )
        if keyring is None and self.settings.auth.mode == "mtls":
            log.warning(
                "personal data is stored in the clear: set store.keys_file to seal it "
                "(docs/security.md#personal-data-at-rest)"
            )

    async def _follow_hash_setting(self) -> None:
        """Switch the audit chain to ``audit.hash_algorithm`` if it uses another function: an
        ``audit.hash`` entry, before this gateway serves a call (replicas of one store: the
        first to start switches, the others find it done)."""
        algorithm = self.settings.audit.hash_algorithm
        was = await self.services.store.write(ChainHashIntent("gateway", algorithm))
        if was is not None:
            log.info(
                "audit chain switched to another hash function",
                extra={"from": was, "to": algorithm},
            )

    async def _probe_store(self, interval: float = 1.0) -> None:
        """Ping the store; health follows it (NOT_SERVING while unreachable); refresh gauges.

        The store's gauges count the outbox's pending rows, which costs O(pending): ~20 ms at
        200k on SQLite, growing with a backlog (a partner down for a day). They are refreshed
        every ``interval`` while that is cheap, and otherwise every ``GAUGE_COST_SHARE`` times
        what their last refresh took (see :func:`next_gauge_refresh`).
        """
        store, metrics = self.services.store, self.services.metrics
        refresh_at = 0.0
        while not self._stop.is_set():
            await self._reload_keys()
            try:
                await asyncio.wait_for(store.read(store.reader.ping), timeout=interval * 3)
                started = time.monotonic()
                if started >= refresh_at:
                    stats = await store.read(store.reader.outbox_stats, store.clock())
                    length = await store.read(store.reader.audit_length)
                    refresh_at = next_gauge_refresh(started, time.monotonic(), interval)
                    metrics.outbox(stats, length)
                healthy = True
            except Exception:  # noqa: BLE001 - any failure means the store is not usable
                healthy = False
            metrics.store_up.set(1 if healthy else 0)
            if healthy != self.store_healthy and not self._stop.is_set():
                self.store_healthy = healthy
                log.warning("store %s", "reachable again" if healthy else "unreachable")
                await self._set_health(
                    health_pb2.HealthCheckResponse.SERVING
                    if healthy
                    else health_pb2.HealthCheckResponse.NOT_SERVING
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)

    async def _reload_keys(self) -> None:
        """Read ``store.keys_file`` again if it changed (a key added or made active): checked
        like at start; a file that fails is refused and the old keys go on. Read in a thread:
        wrapped keys are unwrapped by their token, a round trip to a network HSM."""
        path = self.settings.store.keys_file
        if path is None or self._keys_file is None or not self._keys_file.changed():
            return
        reloads = self.services.metrics.keys_reloads
        try:
            keyring = await asyncio.to_thread(Keyring.load, path)
        except KeyringError as exc:
            log.warning(
                "new store keys file refused; the old keys still seal and open",
                extra={"error": str(exc)},
            )
            reloads.labels("rejected").inc()
            return
        self.services.store.set_keyring(keyring)
        reloads.labels("ok").inc()
        log.info(
            "store keys reloaded",
            extra={"sealing_key": keyring.active, "keys": sorted(keyring.keys)},
        )

    async def _sign_checkpoints(self) -> None:
        """Sign the audit chain's head every ``audit.checkpoint_seconds`` while it grows (and
        once more when the gateway stops: :meth:`stop`)."""
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.settings.audit.checkpoint_seconds)
            if not self._stop.is_set():
                await self.checkpoint()

    async def checkpoint(self, timeout: float | None = None, *, stopping: bool = False) -> str:
        """Sign the audit chain's head now if it grew since the last checkpoint, once that
        checkpoint is checked to hold still (:func:`~gateway.store.checkpoints.sign_head`) and
        the chain to have what peer gateways witnessed of it (handing them the last checkpoint
        before, and the new one after: :class:`~gateway.services.witness.WitnessClient`, each
        peer given ``timeout`` seconds to answer); the outcome (``"unchanged"``, or as
        ``tongban_audit_checkpoints_total`` counts it). ``stopping``: the last checkpoint is
        not handed again to the peers that answered for it already (they may be stopping
        too); a new one is."""
        await self._follow_token_key()
        signer = self._signing_key()
        if signer is None:
            return "unchanged"
        metrics = self.services.metrics
        keys = {
            **self.settings.audit.trusted_public_keys,
            **self._retired_keys,
            signer.key_id: signer.public_key,
        }
        witnesses = self.services.witnesses
        try:
            # What the peers witnessed of this chain is checked first: a chain rewritten below
            # it is not signed (and, checked again once signed, not whatever signed it first).
            problem = (
                await witnesses.hand_over(keys, timeout, again=not stopping) if witnesses else ""
            )
            if problem:
                outcome, length = "broken", 0
            else:
                outcome, length, problem = await sign_head(self.services.store, signer, keys)
            if outcome == "signed" and witnesses is not None:
                problem = await witnesses.hand_over(keys, timeout)
                if problem:
                    outcome = "broken"
        except Exception as exc:  # noqa: BLE001 - the store down: tried again next time
            metrics.audit_checkpoints.labels("failed").inc()
            extra = {"error": type(exc).__name__}
            if isinstance(exc, SigningKeyError):  # a token that could not sign says why
                extra["problem"] = str(exc)
            log.warning("audit checkpoint failed", extra=extra)
            return "failed"
        if outcome == "broken":
            metrics.audit_checkpoints.labels(outcome).inc()
            log.error(
                "audit chain broken: nothing more is signed; run tongban audit verify",
                extra={"problem": problem},
            )
            return outcome
        if outcome != "unchanged":
            metrics.audit_checkpoints.labels(outcome).inc()
        if outcome != "gone":
            metrics.audit_signed_length.set(length)
        return outcome

    async def _follow_token_key(self) -> None:
        """A signing key in a PKCS#11 token: if its label names another key now (``tongban
        audit keys rotate``), sign with that one from now on, the old one trusted still (as
        when a key file is replaced). One search in the token, in a thread; a token that
        cannot tell, or a new key that does not sign, leaves the old signer in place."""
        from .audit_pkcs11 import Pkcs11Signer

        old = self._signer
        if not isinstance(old, Pkcs11Signer):
            return
        try:
            kid = await asyncio.to_thread(old.current_key_id)
            if kid == old.key_id:
                return
            new = await asyncio.to_thread(Pkcs11Signer.open, old.uri)
        except SigningKeyError as exc:
            log.warning(
                "cannot tell which key the token's label names; the old key still signs",
                extra={"error": str(exc)},
            )
            return
        self._retired_keys[old.key_id] = old.public_key
        self._signer = new
        log.info(
            "audit signing key reloaded",
            extra={"key_id": new.key_id, "retired_key_id": old.key_id, "key": new.describe()},
        )

    def _signing_key(self) -> Signer | None:
        """The signing key, read again if ``audit.signing_key`` changed (a file that fails is
        refused and the old key goes on signing)."""
        path = self.settings.audit.signing_key
        if path is None or self._signing_file is None:  # no key, or one in a PKCS#11 token
            return self._signer
        if self._signing_file.changed():
            try:
                signer = Signer.load(path)
            except SigningKeyError as exc:
                log.warning(
                    "new audit signing key refused; the old key still signs",
                    extra={"error": str(exc)},
                )
            else:
                if self._signer is not None and self._signer.key_id != signer.key_id:
                    self._retired_keys[self._signer.key_id] = self._signer.public_key
                self._signer = signer
                log.info("audit signing key reloaded", extra={"key_id": signer.key_id})
        return self._signer

    async def _set_health(self, status: int) -> None:
        await self.health.set("", status)
        for desc in SERVICE_DESCRIPTORS.values():
            if desc.name in self.services.servicers:
                await self.health.set(desc.full_name, status)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, drain in-flight calls within the grace period, stop tasks."""
        grace = self.settings.server.grace_seconds if grace is None else grace
        await self.health.enter_graceful_shutdown()
        self._stop.set()
        await self.server.stop(grace)
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, timeout=max(grace, 1.0))
        if self._signer is not None:
            # What the gateway wrote to its last entry is signed, and handed to the witnesses.
            await self.checkpoint(timeout=min(max(grace, 1.0), 5.0), stopping=True)
        for transport in self.services.delivery.transports.values():
            with contextlib.suppress(Exception):
                await transport.close()
        await self.services.store.stop()
        observe_drops(None)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        log.info("gateway stopped")
