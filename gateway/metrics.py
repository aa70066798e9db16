"""Prometheus metrics: the conventional gRPC server metrics and the gateway's own.

gRPC (names and labels as in go-grpc-prometheus, so standard dashboards work):
``grpc_server_started_total``, ``grpc_server_handled_total``, ``grpc_server_msg_received_total``,
``grpc_server_msg_sent_total``, ``grpc_server_handling_seconds`` with ``grpc_type``,
``grpc_service``, ``grpc_method`` (and ``grpc_code``), pre-initialised at zero for every method.

Gateway (``tongban_`` prefix, base units): translations and their failures, delivery attempts and
outcomes, retry delays, outbox depth and oldest age, dead letters, circuit state, audit chain
length, mapping reloads, build info. Labels are cities, schemas, directions and codes: never a
case, a name or an identity number.

With ``PROMETHEUS_MULTIPROC_DIR`` set (several worker processes), values are written to that
folder and the endpoint aggregates them (prometheus_client multiprocess mode).
"""

from __future__ import annotations

import os
import platform
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client import multiprocess as prom_mp

from . import __version__
from .rpc.registration import CallObserver, MethodObserver
from .services.delivery import DeliveryObserver
from .services.replicas import AGREED
from .store.rekey import SEALED_COLUMNS

__all__ = [
    "GatewayMetrics",
    "MetricsDeliveryObserver",
    "call_observer",
    "serve_metrics",
]

_CODES = [c.name for c in grpc.StatusCode]
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_CIRCUIT = {"closed": 0, "half_open": 1, "open": 2}


class GatewayMetrics:
    """Every metric of one gateway process, on its own registry (a fresh one per test)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        g = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter(
            "grpc_server_started_total", "RPCs started on the server.", g, registry=r
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, regardless of success or failure.",
            (*g, "grpc_code"),
            registry=r,
        )
        self.received = Counter(
            "grpc_server_msg_received_total",
            "RPC stream messages received on the server.",
            g,
            registry=r,
        )
        self.sent = Counter(
            "grpc_server_msg_sent_total", "gRPC stream messages sent on the server.", g, registry=r
        )
        self.latency = Histogram(
            "grpc_server_handling_seconds",
            "Response latency of gRPCs handled by the server.",
            g,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.translations = Counter(
            "tongban_translations_total",
            "Records translated, by schema and direction.",
            ("schema", "direction"),
            registry=r,
        )
        self.translation_failures = Counter(
            "tongban_translation_failures_total",
            "Records that failed translation, by schema, direction and first error code.",
            ("schema", "direction", "code"),
            registry=r,
        )
        self.delivery_attempts = Counter(
            "tongban_delivery_attempts_total",
            "Calls to partner systems, by target city and outcome (ok, retryable, permanent).",
            ("target_city", "outcome"),
            registry=r,
        )
        self.deliveries = Counter(
            "tongban_deliveries_total",
            "Deliveries settled, by target city and outcome (delivered, dead).",
            ("target_city", "outcome"),
            registry=r,
        )
        self.deferrals = Counter(
            "tongban_delivery_deferrals_total",
            "Deliveries put back in the outbox for a later attempt, by target city and reason "
            "(backoff: a retry's wait was longer than retry.hold_max_seconds; circuit_open: "
            "the partner's circuit refused calls; sealed: the case's sealed record does not open "
            "with this gateway's store.keys_file).",
            ("target_city", "reason"),
            registry=r,
        )
        self.retry_delay = Histogram(
            "tongban_delivery_retry_delay_seconds",
            "Delays before delivery retries.",
            ("target_city",),
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.outbox_pending = Gauge(
            "tongban_outbox_pending",
            "Deliveries waiting in the outbox.",
            registry=r,
            multiprocess_mode="max",
        )
        self.outbox_oldest = Gauge(
            "tongban_outbox_oldest_age_seconds",
            "Age of the oldest undelivered outbox row.",
            registry=r,
            multiprocess_mode="max",
        )
        self.dead_letters = Gauge(
            "tongban_dead_letters",
            "Deliveries parked in the dead-letter queue.",
            registry=r,
            multiprocess_mode="max",
        )
        self.audit_length = Gauge(
            "tongban_audit_chain_length",
            "Entries in the audit hash chain.",
            registry=r,
            multiprocess_mode="max",
        )
        self.circuit = Gauge(
            "tongban_circuit_state",
            "Circuit breaker per partner: 0 closed, 1 half-open, 2 open.",
            ("partner",),
            registry=r,
            multiprocess_mode="max",
        )
        self.calls_in_flight = Gauge(
            "tongban_delivery_calls_in_flight",
            "Calls to a partner's inbox in progress (at most partners.<id>.max_in_flight per "
            "process; summed over processes).",
            ("partner",),
            registry=r,
            multiprocess_mode="livesum",
        )
        self.circuit_changes = Counter(
            "tongban_circuit_transitions_total",
            "Circuit breaker state changes.",
            ("partner", "state"),
            registry=r,
        )
        self.identity_queries = Counter(
            "tongban_identity_queries_total",
            "Identity queries by purpose and outcome.",
            ("purpose", "outcome"),
            registry=r,
        )
        self.reloads = Counter(
            "tongban_mapping_reloads_total",
            "Mapping set reloads by outcome.",
            ("outcome",),
            registry=r,
        )
        self.translate_batch_calls = Histogram(
            "tongban_translate_batch_calls",
            "Translate calls run together per batch window (server.translate_batch_window_ms).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.purged = Counter(
            "tongban_store_purged_rows_total",
            "Rows purged from the store by retention (requests, outbox, cases, events; "
            "audit_checkpoints, witnessed_checkpoints thinned), and audit entries moved to "
            "archive files (audit).",
            ("table",),
            registry=r,
        )
        for table in (
            "requests",
            "outbox",
            "cases",
            "events",
            "audit",
            "audit_checkpoints",
            "witnessed_checkpoints",
        ):
            self.purged.labels(table)
        self.audit_archive_failures = Counter(
            "tongban_audit_archive_failures_total",
            "Audit archives (retention.audit_days) that failed: the store's chain broken, the "
            "directory not writable, the store down. The gateway's log says why.",
            registry=r,
        )
        self.last_purge = Gauge(
            "tongban_store_last_purge_timestamp_seconds",
            "When retention last purged the store, or found nothing to purge (UNIX seconds); "
            "the process's start until then. Absent when retention keeps everything.",
            registry=r,
            multiprocess_mode="max",
        )
        self.gateways_live = Gauge(
            "tongban_gateways_live",
            "Gateway processes delivering from the store, seen by their heartbeats in the last "
            "15 s (they share each partner's max_in_flight_total).",
            registry=r,
            multiprocess_mode="max",
        )
        self.replica_settings_differ = Gauge(
            "tongban_replica_settings_differ",
            "1 while another gateway process serving from the store runs this setting, one "
            "replicas must share (audit.hash_algorithm, store.keys, mappings, partners, "
            "retention), otherwise; "
            "compared at each heartbeat (docs/operations.md#replicas-run-alike).",
            ("setting",),
            registry=r,
            multiprocess_mode="max",
        )
        self.tls_reloads = Counter(
            "tongban_tls_reloads_total",
            "Certificate files read again after they changed, by certificate (server, "
            "client:<partner>) and outcome (ok, rejected).",
            ("certificate", "outcome"),
            registry=r,
        )
        for outcome in ("ok", "rejected"):
            self.tls_reloads.labels("server", outcome)
        self.keys_reloads = Counter(
            "tongban_store_keys_reloads_total",
            "store.keys_file read again after it changed, by outcome (ok; rejected: the old "
            "keys still seal and open).",
            ("outcome",),
            registry=r,
        )
        for outcome in ("ok", "rejected"):
            self.keys_reloads.labels(outcome)
        self.reencrypted = Counter(
            "tongban_store_reencrypted_values_total",
            "Sealed values moved to the active key by the background walk (cases.canonical, "
            "events.note), values in the clear included.",
            ("column",),
            registry=r,
        )
        for column in SEALED_COLUMNS:
            self.reencrypted.labels(column)
        self.reencrypt_stopped = Gauge(
            "tongban_store_reencrypt_stopped",
            "1 while the background re-encryption is stopped at a stored value that does not "
            "open (altered, or sealed with a key the keys file lacks; tongban db keys status "
            "names it), 0 otherwise.",
            registry=r,
            multiprocess_mode="max",
        )
        self.audit_checkpoints = Counter(
            "tongban_audit_checkpoints_total",
            "Attempts to sign the audit chain's head (audit.signing_key), by outcome: signed; "
            "exists (another gateway signed that length first); broken (the chain does not "
            "extend the last checkpoint, that checkpoint does not hold, or it no longer has what a "
            "peer gateway witnessed: nothing signed); gone "
            "(the entry was archived meanwhile); failed (the store failed).",
            ("outcome",),
            registry=r,
        )
        for outcome in ("signed", "exists", "broken", "gone", "failed"):
            self.audit_checkpoints.labels(outcome)
        self.audit_signed_length = Gauge(
            "tongban_audit_signed_length",
            "Entries of the audit chain covered by its last checkpoint, as this gateway last "
            "signed or found it (compare tongban_audit_chain_length).",
            multiprocess_mode="max",
            registry=r,
        )
        self.audit_witness_handovers = Counter(
            "tongban_audit_witness_handovers_total",
            "This gateway's audit checkpoints handed to a peer gateway to witness, by peer and "
            "outcome: witnessed (kept there); known (held there already); contradicted (the "
            "chain no longer has what the peer witnessed, or the peer holds another hash for "
            "that length: nothing more is signed); refused (the peer does not witness it: no "
            "key of it there, or a gateway without AuditWitnessService); failed (unreachable).",
            ("peer", "outcome"),
            registry=r,
        )
        self.audit_witnessed_length = Gauge(
            "tongban_audit_witnessed_length",
            "Entries of this gateway's audit chain covered by the last checkpoint each peer "
            "gateway acknowledged (compare tongban_audit_signed_length).",
            ("peer",),
            multiprocess_mode="max",
            registry=r,
        )
        self.audit_witnessed = Counter(
            "tongban_audit_witnessed_total",
            "Peer gateways' audit checkpoints handed to this gateway to witness, by peer and "
            "outcome: kept; known (held already); conflict (another hash for a length held: "
            "the peer signed two chains; both kept); refused (not signed by a key held for it).",
            ("peer", "outcome"),
            registry=r,
        )
        self.peer_status_changes = Counter(
            "tongban_peer_status_changes_total",
            "Status changes a peer gateway delivered, by peer and outcome: applied, repeated "
            "(applied before), own (RECEIVED, set here too), overtaken (older than one applied: "
            "recorded in the history as late, the status unchanged), out_of_order (ABORTED: an "
            "earlier one has not arrived), refused.",
            ("peer", "outcome"),
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "tongban_tls_certificate_expiry_timestamp_seconds",
            "When a certificate in use expires (UNIX seconds): server, client_ca (the earliest "
            "in the bundle), client:<partner> (the gateway's certificate for that inbox).",
            ("certificate",),
            registry=r,
            multiprocess_mode="min",
        )
        self.log_records_dropped = Counter(
            "tongban_log_records_dropped_total",
            "Log records dropped because stderr did not take them fast enough.",
            registry=r,
        )
        self.store_up = Gauge(
            "tongban_store_up",
            "1 when the store answers, 0 when it does not.",
            registry=r,
            multiprocess_mode="min",
        )
        self.build = Gauge(
            "tongban_build_info",
            "Build information.",
            ("version", "python"),
            registry=r,
            multiprocess_mode="max",
        )
        self.build.labels(__version__, platform.python_version()).set(1)
        self._translation_children: dict[tuple[str, str], Any] = {}

    # -- gRPC ------------------------------------------------------------------------------

    def initialise(self, services: list[ServiceDescriptor]) -> None:
        """Create every series at zero, so rates and alerts work before the first call."""
        for desc in services:
            for m in desc.methods:
                kind = _kind(m.client_streaming, m.server_streaming)
                labels = (kind, desc.full_name, m.name)
                self.started.labels(*labels)
                self.received.labels(*labels)
                self.sent.labels(*labels)
                self.latency.labels(*labels)
                for code in _CODES:
                    self.handled.labels(*labels, code)

    # -- translations, deliveries ------------------------------------------------------------

    def translation(self, schema: str, direction: str, code: str | None, n: int = 1) -> None:
        """``n`` records translated (``code`` is the first error code when they failed)."""
        if code is None:
            child = self._translation_children.get((schema, direction))
            if child is None:
                child = self._translation_children[(schema, direction)] = self.translations.labels(
                    schema, direction
                )
            child.inc(n)
        else:
            self.translation_failures.labels(schema, direction, code).inc(n)

    def attempt(self, city: str, outcome: str) -> None:
        """One call to a partner ended."""
        self.delivery_attempts.labels(city, outcome).inc()

    def retry_delay_observed(self, city: str, seconds: float) -> None:
        """A retry scheduled after ``seconds``."""
        self.retry_delay.labels(city).observe(seconds)

    def settled(self, city: str, outcome: str) -> None:
        """A delivery delivered or dead-lettered."""
        self.deliveries.labels(city, outcome).inc()

    def deferred(self, city: str, reason: str, n: int = 1) -> None:
        """``n`` deliveries put back in the outbox for a later attempt."""
        self.deferrals.labels(city, reason).inc(n)

    def circuit_changed(self, partner: str, state: str) -> None:
        """A partner's circuit changed state."""
        self.circuit.labels(partner).set(_CIRCUIT.get(state, 0))
        self.circuit_changes.labels(partner, state).inc()

    def calls(self, partner: str, n: int) -> None:
        """``n`` calls to ``partner`` in progress."""
        self.calls_in_flight.labels(partner).set(n)

    def purged_rows(self, table: str, n: int) -> None:
        """``n`` rows of ``table`` purged by retention."""
        self.purged.labels(table).inc(n)

    def outbox(self, stats: dict[str, float], audit_length: int) -> None:
        """Store-derived gauges (refreshed periodically)."""
        self.outbox_pending.set(stats["pending"])
        self.outbox_oldest.set(stats["oldest_age"])
        self.dead_letters.set(stats["dead"])
        self.audit_length.set(audit_length)


def _kind(client_streaming: bool, server_streaming: bool) -> str:
    return {
        (False, False): "unary",
        (True, False): "client_stream",
        (False, True): "server_stream",
        (True, True): "bidi_stream",
    }[(client_streaming, server_streaming)]


class _Bound:
    """The metric children of one method, resolved once."""

    __slots__ = ("_handled", "_labels", "_latency", "_m", "_received", "_sent", "_started")

    def __init__(self, m: GatewayMetrics, kind: str, service: str, method: str) -> None:
        self._m = m
        self._labels = (kind, service, method)
        self._started = m.started.labels(kind, service, method)
        self._received = m.received.labels(kind, service, method)
        self._sent = m.sent.labels(kind, service, method)
        self._latency = m.latency.labels(kind, service, method)
        self._handled = {code: m.handled.labels(kind, service, method, code) for code in _CODES}

    def started(self) -> None:
        self._started.inc()

    def received(self, n: int = 1) -> None:
        self._received.inc(n)

    def sent(self) -> None:
        self._sent.inc()

    def handled(self, code: str, seconds: float) -> None:
        child = self._handled.get(code)
        if child is None:
            child = self._m.handled.labels(*self._labels, code)
        child.inc()
        self._latency.observe(seconds)


class _Observer(CallObserver):
    """Adapts GatewayMetrics to the CallObserver protocol used by the method wrappers."""

    def __init__(self, m: GatewayMetrics) -> None:
        self.m = m

    def bind(self, service: str, method: str, kind: str) -> MethodObserver:
        return _Bound(self.m, kind, service, method)


def call_observer(m: GatewayMetrics) -> CallObserver:
    """The CallObserver feeding ``m``."""
    return _Observer(m)


def serve_metrics(m: GatewayMetrics | None, host: str, port: int) -> Any:
    """Serve /metrics on host:port in a thread; returns the server.

    With ``PROMETHEUS_MULTIPROC_DIR`` set (``--workers``), it serves the values every worker
    process wrote there, aggregated; ``m`` may then be None (the parent process has no metrics).
    """
    if m is not None and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = m.registry
    else:
        registry = CollectorRegistry()
        prom_mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server


class MetricsDeliveryObserver(DeliveryObserver):
    """A DeliveryObserver that also feeds Prometheus."""

    def __init__(self, m: GatewayMetrics) -> None:
        super().__init__()
        self.m = m

    def attempt(self, city: str, outcome: str) -> None:
        """One call to a partner ended."""
        super().attempt(city, outcome)
        self.m.attempt(city, outcome)

    def retry_delay(self, city: str, seconds: float) -> None:
        """A retry is scheduled."""
        super().retry_delay(city, seconds)
        self.m.retry_delay_observed(city, seconds)

    def settled(self, city: str, outcome: str) -> None:
        """A delivery settled."""
        self.m.settled(city, outcome)

    def calls(self, partner: str, n: int) -> None:
        """Calls to a partner in progress."""
        self.m.calls(partner, n)

    def deferred(self, city: str, reason: str, n: int = 1) -> None:
        """Deliveries put back in the outbox."""
        super().deferred(city, reason, n)
        self.m.deferred(city, reason, n)

    def circuit(self, partner: str, state: str) -> None:
        """A circuit changed."""
        self.m.circuit_changed(partner, state)

    def gateways(self, n: int) -> None:
        """Gateway processes delivering from the store."""
        self.m.gateways_live.set(n)

    def replicas(self, differ: set[str]) -> None:
        """Settings other live gateways run otherwise."""
        for setting in AGREED:
            self.m.replica_settings_differ.labels(setting).set(1 if setting in differ else 0)
