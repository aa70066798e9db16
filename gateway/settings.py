"""Gateway settings: one frozen, typed object read once from a TOML file plus the environment.

Every key may be overridden by an environment variable ``TONGBAN_<SECTION>__<KEY>`` (e.g.
``TONGBAN_SERVER__PORT=50052``). Unknown keys and bad values are errors naming the key. Relative
paths in a file are relative to that file's folder. See docs/configuration.md.

>>> s = load_settings(None, env={"TONGBAN_SERVER__PORT": "0"})
>>> s.server.port
0
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from cryptography.hazmat.primitives.serialization import Encoding
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from .audit_signing import (
    PKCS11_SCHEME,
    PublicKey,
    Signer,
    SigningKeyError,
    load_public_keys,
    public_key_from_spki,
    public_spki,
)
from .store.chain_hash import hash_available
from .store.sealing import Keyring, KeyringError

__all__ = [
    "AclSettings",
    "AuditSettings",
    "ConfigError",
    "DeliverySettings",
    "PartnerSettings",
    "PurposeSettings",
    "RetentionSettings",
    "RetryPolicy",
    "Settings",
    "load_settings",
]

Port = Annotated[int, Field(ge=0, le=65535)]


class ConfigError(Exception):
    """The configuration is invalid; the message names every bad key."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Model):
    """The gRPC listener."""

    host: str = "127.0.0.1"
    port: Port = 50051
    grace_seconds: Annotated[float, Field(ge=0, le=300)] = 10.0
    max_message_bytes: Annotated[int, Field(ge=1024, le=64 * 1024 * 1024)] = 4 * 1024 * 1024
    max_record_bytes: Annotated[int, Field(ge=256, le=16 * 1024 * 1024)] = 256 * 1024
    max_deadline_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    # Under many concurrent Translate calls, they wait up to this long to run together
    # (gateway/rpc/batching.py; 0: never); see docs/configuration.md.
    translate_batch_window_ms: Annotated[float, Field(ge=0, le=50)] = 2.0
    translate_batch_max: Annotated[int, Field(ge=1, le=1024)] = 64
    # The event loop: asyncio's own, or uvloop (gateway/loops.py; docs/configuration.md).
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"


class StoreSettings(_Model):
    """Where cases, the outbox and the audit log live."""

    url: str = ""  # empty: SQLite file <data_dir>/tongban.db
    data_dir: Path = Path("data")
    pool_size: Annotated[int, Field(ge=1, le=100)] = 5
    group_commit_max: Annotated[int, Field(ge=1, le=10000)] = 256
    # "process": the group-commit writer's SQL runs in a child process with its own GIL;
    # "thread": in a worker thread of the gateway process (an in-memory SQLite store always).
    writer: Literal["process", "thread"] = "process"
    # Under concurrent load (the previous commit served several callers), a commit waits for
    # more writes to join it, until as many callers are queued as the previous commit served:
    # at most commit_delay_per_caller_ms for each of them, and never more than commit_delay_ms
    # (0: never wait).
    commit_delay_ms: Annotated[float, Field(ge=0, le=100)] = 15.0
    commit_delay_per_caller_ms: Annotated[float, Field(ge=0, le=100)] = 0.5
    # A TOML file of keys (readable by its owner only): with it, each case's canonical record
    # and its status notes are sealed in the store (AES-256-GCM or SM4-GCM); without it, they
    # are stored in the clear. docs/security.md#personal-data-at-rest.
    keys_file: Path | None = None
    # With keys_file: serving gateways move every sealed value to the active key themselves,
    # at the start and after a new active key (gateway.services.reencrypt), this many rows a
    # transaction, reencrypt_settle_seconds after they read the new key.
    reencrypt_in_background: bool = True
    reencrypt_batch_rows: Annotated[int, Field(ge=1, le=10000)] = 200
    reencrypt_settle_seconds: Annotated[float, Field(ge=0, le=3600)] = 10.0
    _keyring: Keyring | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _load_keys(self) -> StoreSettings:
        if self.keys_file is not None:
            try:
                self._keyring = Keyring.load(self.keys_file)
            except KeyringError as exc:
                raise ValueError(f"keys_file: {exc}") from None
        return self

    @property
    def keyring(self) -> Keyring | None:
        """The keys of ``keys_file``, read once when the settings were (None without it)."""
        return self._keyring

    @property
    def effective_url(self) -> str:
        """The SQLAlchemy URL to connect to."""
        return self.url or f"sqlite:///{self.data_dir / 'tongban.db'}"

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite store."""
        return self.effective_url.startswith("sqlite")


class MappingSettings(_Model):
    """The mapping set served."""

    path: Path = Path("mappings")
    watch: bool = True  # reload when files change (SIGHUP always reloads)
    run_golden_on_reload: bool = True


class MetricsSettings(_Model):
    """The Prometheus /metrics endpoint."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 9464


class RetryPolicy(_Model):
    """Delivery retry policy (tenacity): exponential backoff with full jitter."""

    max_attempts: Annotated[int, Field(ge=1, le=1000)] = 8
    initial_backoff_seconds: Annotated[float, Field(gt=0, le=3600)] = 0.2
    max_backoff_seconds: Annotated[float, Field(gt=0, le=86400)] = 30.0
    multiplier: Annotated[float, Field(ge=1, le=10)] = 2.0
    attempt_timeout_seconds: Annotated[float, Field(gt=0, le=600)] = 5.0
    # The longest backoff a delivery worker waits out itself; a longer one puts the row back in
    # the outbox with its next attempt time, and the worker takes other rows (other cities').
    hold_max_seconds: Annotated[float, Field(ge=0, le=3600)] = 1.0


class CircuitPolicy(_Model):
    """Per-partner circuit breaker."""

    failure_threshold: Annotated[int, Field(ge=1, le=1000)] = 5
    reset_seconds: Annotated[float, Field(gt=0, le=3600)] = 5.0


def _raw_public_keys(paths: list[Path], setting: str) -> dict[str, bytes]:
    """The public keys in ``paths`` by id, as DER (settings cross to the store's writer
    process pickled; key objects do not); ValueError naming ``setting`` if one is not."""
    try:
        keys = load_public_keys(paths)
    except SigningKeyError as exc:
        raise ValueError(f"{setting}: {exc}") from None
    return {kid: public_spki(key, Encoding.DER) for kid, key in keys.items()}


def _key_source(value: Any) -> Path | str | None:
    """``audit.signing_key``: a PKCS#11 URI kept as its text (a path would fold its ``//``),
    anything else a path."""
    if value is None or isinstance(value, Path):
        return value
    if not isinstance(value, str) or not value:
        raise ValueError("a file path or a pkcs11: URI is required")
    return value if value.startswith(PKCS11_SCHEME) else Path(value)


def _public_keys(der: dict[str, bytes]) -> dict[str, PublicKey]:
    return {kid: public_key_from_spki(b, Encoding.DER) for kid, b in der.items()}


class InboxSettings(_Model):
    """How the gateway reaches a partner system, and how the two authenticate each other."""

    transport: Literal["grpc", "http", "none"] = "none"
    target: str = ""  # host:port for grpc, base URL for http
    # TLS to the partner (gRPC: a TLS channel; HTTP: implied by an https:// target).
    tls: bool = False
    ca: Path | None = None  # trust anchors for the partner's certificate; default: system roots
    client_cert: Path | None = None  # the gateway's certificate, presented to the partner (mTLS)
    client_key: Path | None = None
    server_name: str = ""  # name expected in the partner's certificate, if not the target's host
    # The partner system reads DeliverStatusRequest.late: a peer gateway's status change that
    # was overtaken on its way (recorded late here) is sent to it too, marked late, to add to
    # the case's history without moving its status. Off: such a change is not sent.
    late_statuses: bool = False

    @property
    def uses_tls(self) -> bool:
        """True when calls to the partner go over TLS."""
        return self.tls or self.target.startswith("https://")

    @model_validator(mode="after")
    def _target_given(self) -> InboxSettings:
        if self.transport != "none" and not self.target:
            raise ValueError(f"'target' is required for transport {self.transport!r}")
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("'client_cert' and 'client_key' go together")
        uses_tls_options = self.ca or self.client_cert or self.server_name
        if self.transport == "http":
            https = self.target.startswith("https://")
            if self.tls and not https:
                raise ValueError("'tls' needs an https:// target")
            if uses_tls_options and not https:
                raise ValueError("'ca', 'client_cert' and 'server_name' need an https:// target")
        elif uses_tls_options and not self.tls:
            raise ValueError("'ca', 'client_cert' and 'server_name' need 'tls = true'")
        for key in ("ca", "client_cert", "client_key"):
            path = getattr(self, key)
            if path is not None and not path.is_file():
                raise ValueError(f"'{key}': no such file: {path}")
        return self


class AclSettings(_Model):
    """What a partner may do."""

    target_cities: list[str] | None = None  # cities it may submit cases for; None: any served
    kinds: list[Literal["case", "person", "enterprise"]] = ["case", "person", "enterprise"]
    purposes: list[str] = []  # identity purposes it holds (see [purposes])


class RateLimit(_Model):
    """Token bucket: ``rate_per_second`` sustained, ``burst`` at once."""

    rate_per_second: Annotated[float, Field(gt=0, le=1_000_000)] = 500.0
    burst: Annotated[int, Field(ge=1, le=1_000_000)] = 1000


class PurposeSettings(_Model):
    """An identity purpose: the canonical fields it discloses, and its cache time."""

    person_fields: list[str] = []
    enterprise_fields: list[str] = []
    cache_ttl_seconds: Annotated[float, Field(ge=0, le=86400)] = 60.0


class TlsSettings(_Model):
    """Server TLS; with ``client_ca`` clients must present a certificate it signed (mTLS)."""

    cert: Path | None = None
    key: Path | None = None
    client_ca: Path | None = None

    @property
    def enabled(self) -> bool:
        """True when a certificate is configured."""
        return self.cert is not None

    @model_validator(mode="after")
    def _complete(self) -> TlsSettings:
        if (self.cert is None) != (self.key is None):
            raise ValueError("'cert' and 'key' go together")
        if self.client_ca is not None and self.cert is None:
            raise ValueError("'client_ca' needs 'cert' and 'key'")
        return self


class PartnerSettings(_Model):
    """A partner city system allowed to call the gateway."""

    city: str  # GB/T 2260 region code of the city it speaks for
    cert_name: str = ""  # name in its client certificate (SAN DNS or CN); default: the partner id
    acl: AclSettings = AclSettings()
    rate_limit: RateLimit = RateLimit()
    token: str = ""  # development-only bearer token (refused when TLS is on)
    operator: bool = False  # may call OperationsService (dead letters)
    # Another Tongban gateway (federated mode): it may deliver cases and statuses to this
    # gateway's PartnerInboxService, and cases to it travel as canonical records.
    peer: bool = False
    inbox: InboxSettings = InboxSettings()
    retry: RetryPolicy | None = None  # overrides delivery.retry for deliveries to this partner
    circuit: CircuitPolicy | None = None
    # Calls to this partner's inbox in progress at once, per process (default: every delivery
    # worker but one when other partners have inboxes too, else every worker).
    max_in_flight: Annotated[int, Field(ge=1, le=256)] | None = None
    # Calls to its inbox in progress at once across every gateway process delivering from the
    # store: each of the N seen lately makes at most total // N of them (at least one), and
    # never more than its max_in_flight.
    max_in_flight_total: Annotated[int, Field(ge=1, le=4096)] | None = None
    # A peer gateway's audit public keys (PEM; its audit.signing_key's .pub file, and the keys
    # it signed with before a rotation): with them this gateway witnesses the peer's signed
    # checkpoints (AuditWitnessService), keeping copies the peer's store cannot take back.
    audit_public_keys: list[Path] = []
    # As DER: settings cross to the store's writer process pickled, key objects do not.
    _audit_keys: dict[str, bytes] = PrivateAttr(default_factory=dict)

    @field_validator("city")
    @classmethod
    def _city_code(cls, v: str) -> str:
        if len(v) != 6 or not (v.isascii() and v.isdigit()):
            raise ValueError("must be a six-digit GB/T 2260 region code, e.g. '442000'")
        return v

    @model_validator(mode="after")
    def _peer_over_mutual_tls(self) -> PartnerSettings:
        if not self.peer:
            return self
        if self.inbox.late_statuses:
            raise ValueError(
                "inbox.late_statuses is for a city's system: a peer gateway decides itself "
                "which status changes arrive late"
            )
        if self.inbox.transport != "grpc":
            raise ValueError("a peer gateway is reached over gRPC: set inbox.transport = 'grpc'")
        if not self.inbox.tls or self.inbox.client_cert is None:
            raise ValueError(
                "a peer gateway is reached over mutual TLS (it knows this gateway by its "
                "certificate): set inbox.tls, inbox.client_cert and inbox.client_key"
            )
        return self

    @model_validator(mode="after")
    def _load_audit_keys(self) -> PartnerSettings:
        self._audit_keys = _raw_public_keys(self.audit_public_keys, "audit_public_keys")
        if self.audit_public_keys and not self.peer:
            raise ValueError(
                "audit_public_keys: only a peer gateway (peer = true) signs checkpoints"
            )
        return self

    @property
    def audit_keys(self) -> dict[str, PublicKey]:
        """The keys of ``audit_public_keys`` by id (none: this gateway witnesses nothing of it)."""
        return _public_keys(self._audit_keys)


class DeliverySettings(_Model):
    """Delivery workers."""

    enabled: bool = True
    workers: Annotated[int, Field(ge=1, le=256)] = 4
    batch_size: Annotated[int, Field(ge=1, le=1000)] = 32
    poll_interval_seconds: Annotated[float, Field(gt=0, le=60)] = 0.2
    lease_seconds: Annotated[float, Field(gt=0, le=3600)] = 30.0
    retry: RetryPolicy = RetryPolicy()
    circuit: CircuitPolicy = CircuitPolicy()


class RetentionSettings(_Model):
    """How long the store keeps what it no longer needs; 0 days keeps it for ever.

    Nothing pending or dead-lettered is ever purged. docs/operations.md#retention.
    """

    # Idempotency records: a retry of a request older than this is taken as a new request.
    request_days: Annotated[float, Field(ge=0, le=36500)] = 30.0
    # Delivered outbox rows (when each delivery was made, its attempts).
    delivered_days: Annotated[float, Field(ge=0, le=36500)] = 30.0
    # Closed cases (a final status) with their status history, once nothing of theirs waits
    # for delivery or sits in the dead-letter queue, counted from their last change.
    closed_case_days: Annotated[float, Field(ge=0, le=36500)] = 0.0
    # A serving gateway purges a minute after it starts, then every interval (0: never; the
    # `tongban db purge` command still does).
    interval_seconds: Annotated[float, Field(ge=0, le=7 * 86400)] = 3600.0
    batch_rows: Annotated[int, Field(ge=1, le=100_000)] = 1000  # rows per transaction
    # Audit entries older than this move from the store into archive files in
    # audit_archive_dir (`tongban audit archive`, by a serving gateway with each purge); the
    # chain stays verifiable with `tongban audit verify --archives DIR`. 0: the store keeps them.
    audit_days: Annotated[float, Field(ge=0, le=36500)] = 0.0
    audit_archive_dir: Path | None = None
    audit_entries_per_file: Annotated[int, Field(ge=1, le=1_000_000)] = 10_000
    # Signed audit checkpoints (this chain's, and the peers' witnessed here) signed longer ago
    # than this are thinned to the last of each UTC day; each chain's last checkpoint, and
    # witnessed ones held with two hashes (evidence), are kept. 0: every one is kept.
    checkpoint_days: Annotated[float, Field(ge=0, le=36500)] = 0.0

    @model_validator(mode="after")
    def _archive_needs_a_directory(self) -> RetentionSettings:
        if self.audit_days > 0 and self.audit_archive_dir is None:
            raise ValueError("'audit_days' needs 'audit_archive_dir': where the archive files go")
        return self


class AuthSettings(_Model):
    """How partners authenticate."""

    mode: Literal["none", "token", "mtls"] = "token"


class AuditSettings(_Model):
    """What the audit log records beyond every change (docs/security.md)."""

    # An entry for each read of a case's personal data (GetCase; ListCases with records; a
    # WatchCases event with a note; an operator's TraceCase): who read which case and how,
    # committed before the data is answered.
    case_reads: bool = False
    # An Ed25519 or SM2 private key (PEM, readable by its owner only; `tongban audit keys new
    # [--algorithm sm2]`), or a PKCS#11 URI naming an Ed25519 key held in a hardware security
    # module (RFC 7512; `tongban audit keys new --pkcs11`): with it, a serving gateway signs
    # the chain's head every checkpoint_seconds while the chain grows, so that a chain
    # rewritten or cut short is found by `tongban audit verify`
    # (docs/security.md#signed-audit-checkpoints).
    signing_key: Annotated[Path | str | None, PlainValidator(_key_source)] = None
    checkpoint_seconds: Annotated[float, Field(gt=0, le=86400)] = 60.0
    # Public keys (PEM) whose checkpoints `tongban audit verify` trusts besides signing_key's:
    # the keys signing_key held before a rotation.
    trusted_keys: list[Path] = []
    # Peer gateways (partner ids) this gateway hands its checkpoints to, to witness: each keeps
    # copies, and this gateway checks its chain against them (AuditWitnessService). Default:
    # every peer gateway; [] for none.
    witnesses: list[str] | None = None
    # The hash function of the chain's entries: "sha256", or "sm3" (GB/T 32905, China's
    # commercial cryptography standard). A serving gateway finding the chain on another one
    # switches it with an `audit.hash` entry (docs/security.md#sm3-for-the-chains-hashes); every replica
    # sharing a store sets the same.
    hash_algorithm: Literal["sha256", "sm3"] = "sha256"
    _signer: Signer | None = PrivateAttr(default=None)
    # As DER: settings cross to the store's writer process pickled, key objects do not.
    _trusted: dict[str, bytes] = PrivateAttr(default_factory=dict)

    @field_validator("hash_algorithm")
    @classmethod
    def _hash_available(cls, value: str) -> str:
        if not hash_available(value):
            raise ValueError(f"this Python's hashlib (its OpenSSL) has no {value}")
        return value

    @model_validator(mode="after")
    def _load_signing_keys(self) -> AuditSettings:
        self._trusted = _raw_public_keys(self.trusted_keys, "trusted_keys")
        if self.signing_key is not None:
            try:
                self._signer = Signer.load(self.signing_key)
            except SigningKeyError as exc:
                raise ValueError(f"signing_key: {exc}") from None
        return self

    @property
    def signer(self) -> Signer | None:
        """The key of ``signing_key``, read once when the settings were (None without it)."""
        return self._signer

    @property
    def trusted_public_keys(self) -> dict[str, PublicKey]:
        """The keys of ``trusted_keys`` by id, and the public half of ``signing_key``."""
        keys = _public_keys(self._trusted)
        if self._signer is not None:
            keys[self._signer.key_id] = self._signer.public_key
        return keys


class LogSettings(_Model):
    """Logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["auto", "json", "text"] = "auto"


class Settings(_Model):
    """Everything the gateway reads at start."""

    server: ServerSettings = ServerSettings()
    store: StoreSettings = StoreSettings()
    mappings: MappingSettings = MappingSettings()
    metrics: MetricsSettings = MetricsSettings()
    delivery: DeliverySettings = DeliverySettings()
    retention: RetentionSettings = RetentionSettings()
    auth: AuthSettings = AuthSettings()
    audit: AuditSettings = AuditSettings()
    log: LogSettings = LogSettings()
    tls: TlsSettings = TlsSettings()
    partners: dict[str, PartnerSettings] = {}
    purposes: dict[str, PurposeSettings] = {}

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        tokens = [p.token for p in self.partners.values() if p.token]
        if len(tokens) != len(set(tokens)):
            raise ValueError("two partners share a token")
        if self.tls.enabled and self.auth.mode == "token":
            raise ValueError(
                "auth.mode 'token' is for development only and is refused when TLS "
                "is on: use 'mtls'"
            )
        if self.auth.mode == "mtls" and self.tls.client_ca is None:
            raise ValueError("auth.mode 'mtls' needs tls.cert, tls.key and tls.client_ca")
        if self.peers and self.auth.mode != "mtls":
            raise ValueError(
                f"peer gateways ({', '.join(sorted(self.peers))}) are known by their certificates: "
                "auth.mode must be 'mtls'"
            )
        strangers = sorted(set(self.audit.witnesses or ()) - self.peers)
        if strangers:
            raise ValueError(
                f"audit.witnesses: {', '.join(strangers)} not peer gateways (partners with "
                "peer = true)"
            )
        for pid, p in self.partners.items():
            unknown = [x for x in p.acl.purposes if x not in self.purposes]
            if unknown:
                raise ValueError(f"partners.{pid}.acl.purposes: unknown purpose(s) {unknown}")
        return self

    @property
    def peers(self) -> frozenset[str]:
        """Ids of the partners that are other Tongban gateways (federated mode)."""
        return frozenset(pid for pid, p in self.partners.items() if p.peer)

    @property
    def witnesses(self) -> list[str]:
        """The peer gateways this gateway's checkpoints are handed to (``audit.witnesses``;
        every peer by default), when it signs them."""
        if self.audit.signing_key is None:
            return []
        chosen = self.audit.witnesses
        return sorted(self.peers if chosen is None else chosen)

    def partner_for_city(self, city: str) -> tuple[str, PartnerSettings] | None:
        """The partner that speaks for a city region code."""
        for pid, p in self.partners.items():
            if p.city == city:
                return pid, p
        return None


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(path)}: cannot set below a non-table value")
    node[path[-1]] = value


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    for section, key in (
        ("store", "data_dir"),
        ("store", "keys_file"),
        ("mappings", "path"),
        ("tls", "cert"),
        ("tls", "key"),
        ("tls", "client_ca"),
        ("audit", "signing_key"),
        ("audit", "trusted_keys"),
    ):
        node = raw.get(section)
        if not isinstance(node, dict):
            continue
        if key in node and not str(node[key]).startswith(PKCS11_SCHEME):
            node[key] = _resolved(base, node[key])
    partners = raw.get("partners")
    for partner in partners.values() if isinstance(partners, dict) else ():
        if isinstance(partner, dict) and "audit_public_keys" in partner:
            partner["audit_public_keys"] = _resolved(base, partner["audit_public_keys"])


def _resolved(base: Path, value: Any) -> Any:
    """A path, or each path of a list, relative to ``base``; anything else as it is (the
    settings' own checks name it)."""
    if isinstance(value, str):
        return str(_under(base, value))
    if isinstance(value, list):
        return [str(_under(base, v)) if isinstance(v, str) else v for v in value]
    return value


def _under(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


def load_settings(path: Path | None, env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from ``path`` (TOML, optional) and ``TONGBAN_*`` environment variables."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from None
        _resolve_paths(raw, path.resolve().parent)
    environ = os.environ if env is None else env
    for name, value in sorted(environ.items()):
        if name.startswith("TONGBAN_") and "__" in name:
            keys = [k.lower() for k in name[len("TONGBAN_") :].split("__")]
            parsed: Any = value
            if value[:1] in "[{":  # lists and tables as JSON, e.g. '["case_handling"]'
                try:
                    parsed = json.loads(value)
                except json.JSONDecodeError:
                    raise ConfigError(f"{name}: not valid JSON") from None
            _set_path(raw, keys, parsed)
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            lines.append(f"{loc or '(top)'}: {msg}")
        where = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{where}:\n  " + "\n  ".join(lines)) from None
