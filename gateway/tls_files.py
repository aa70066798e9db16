"""The gateway's server certificate, key and client CA, read again from their files while it
serves, and the expiry times of every certificate it uses.

gRPC asks :meth:`ServerCertificates.fetch` before each new connection's handshake
(``grpc.dynamic_ssl_server_credentials``). It looks at the files' sizes and modification times,
and only when they changed reads and checks them: each certificate parses, the key is the
certificate's own, nothing has expired, the client CA holds at least one certificate. A set
that passes replaces the old one for the connections that follow (those open keep theirs); one
that does not (a rotation half-way through: the new certificate written, its key not yet) is
refused with a warning, and the old one keeps serving until the files change again.

The gateway's side of a partner's inbox is watched the same way by :class:`ClientCertificates`:
the trust anchors for the partner's certificate and the gateway's own client certificate and key.
A transport asks :meth:`ClientCertificates.poll` before each call (the files are looked at no
more than once a second) and opens a new channel with a set that passes; calls in flight finish
on the old one.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .timestamps import utc_text

__all__ = [
    "CertificateError",
    "ClientCertificates",
    "ClientMaterial",
    "FileWatch",
    "ServerCertificates",
    "certificate_expiry",
    "file_signature",
]

log = logging.getLogger("tongban.tls")


class CertificateError(ValueError):
    """A certificate, key or CA file that cannot be used; the message says which and why."""


def _certificates(path: Path, data: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateError(f"{path}: not a PEM certificate ({exc})") from None
    return certs


def _earliest(certs: list[x509.Certificate]) -> float:
    return min(c.not_valid_after_utc.timestamp() for c in certs)


def certificate_expiry(path: Path) -> float:
    """When the earliest-expiring certificate in ``path`` (PEM, one or a bundle) expires."""
    return _earliest(_certificates(path, path.read_bytes()))


def file_signature(paths: list[Path]) -> tuple[tuple[int, int, int], ...]:
    """What tells that files changed: their modification times, sizes and inodes."""
    out = []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            out.append((-1, -1, -1))  # gone: a change, refused once by the load
            continue
        out.append((st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(out)


class FileWatch:
    """Tells whether files changed since it last looked (:func:`file_signature`); made when
    they were read."""

    def __init__(self, paths: list[Path]) -> None:
        self._paths = paths
        self._seen = file_signature(paths)

    def changed(self) -> bool:
        """Whether they changed since the last call (or since it was made)."""
        signature = file_signature(self._paths)
        if signature == self._seen:
            return False
        self._seen = signature
        return True


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertificateError(f"{exc.filename}: {exc.strerror}") from None


def _key_pair(cert: Path, cert_pem: bytes, key: Path, key_pem: bytes) -> list[x509.Certificate]:
    """The chain in ``cert``, checked to parse and to be the certificate of the key in ``key``."""
    chain = _certificates(cert, cert_pem)
    try:
        private = serialization.load_pem_private_key(key_pem, None)
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"{key}: not an unencrypted PEM private key ({exc})") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        raise CertificateError(f"{key}: not the key of the certificate in {cert}")
    return chain


def _unexpired(expiry: dict[str, float], paths: dict[str, Path], now: float) -> None:
    for which, until in expiry.items():
        if until <= now:
            raise CertificateError(f"{paths[which]}: expired at {utc_text(until)}")


@dataclass(frozen=True)
class _Loaded:
    config: grpc.ServerCertificateConfiguration
    expiry: dict[str, float]  # "server", "client_ca" -> UNIX seconds
    subject: str


class ServerCertificates:
    """The server's certificate files, and what gRPC was last given of them."""

    def __init__(
        self,
        cert: Path,
        key: Path,
        client_ca: Path | None,
        *,
        on_reload: Callable[[str], None] | None = None,
        on_expiry: Callable[[str, float], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cert, self.key, self.client_ca = cert, key, client_ca
        self.on_reload = on_reload
        self.on_expiry = on_expiry
        self.clock = clock
        self._lock = threading.Lock()
        self._seen: tuple[tuple[int, int, int], ...] | None = None

    @property
    def _paths(self) -> list[Path]:
        return [p for p in (self.cert, self.key, self.client_ca) if p is not None]

    def _signature(self) -> tuple[tuple[int, int, int], ...]:
        return file_signature(self._paths)

    def load(self) -> _Loaded:
        """Read and check the files; raise :class:`CertificateError` naming what is wrong."""
        cert_pem, key_pem = _read(self.cert), _read(self.key)
        chain = _key_pair(self.cert, cert_pem, self.key, key_pem)
        expiry = {"server": _earliest(chain)}
        paths = {"server": self.cert}
        ca_pem = None
        if self.client_ca is not None:
            ca_pem = _read(self.client_ca)
            expiry["client_ca"] = _earliest(_certificates(self.client_ca, ca_pem))
            paths["client_ca"] = self.client_ca
        _unexpired(expiry, paths, self.clock())
        config = grpc.ssl_server_certificate_configuration(
            [(key_pem, cert_pem)], root_certificates=ca_pem
        )
        return _Loaded(config, expiry, chain[0].subject.rfc4514_string())

    def _adopt(self, loaded: _Loaded) -> grpc.ServerCertificateConfiguration:
        if self.on_expiry is not None:
            for which, until in loaded.expiry.items():
                self.on_expiry(which, until)
        return loaded.config

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that take the files' new contents for new connections."""
        with self._lock:
            self._seen = self._signature()
            initial = self._adopt(self.load())
        return grpc.dynamic_ssl_server_credentials(
            initial, self.fetch, require_client_authentication=self.client_ca is not None
        )

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        """The new configuration if the files changed and pass the checks; else None (gRPC
        keeps the one it has). Called by gRPC before each handshake, from its own threads."""
        try:
            with self._lock:
                signature = self._signature()
                if signature == self._seen:
                    return None
                self._seen = signature
                try:
                    loaded = self.load()
                except CertificateError as exc:
                    log.warning(
                        "new server certificate files refused; the old ones still serve",
                        extra={"error": str(exc)},
                    )
                    self._count("rejected")
                    return None
                log.info(
                    "server certificate reloaded",
                    extra={
                        "subject": loaded.subject,
                        "not_after": utc_text(loaded.expiry["server"]),
                    },
                )
                self._count("ok")
                return self._adopt(loaded)
        except Exception:
            log.warning("cannot look at the server certificate files", exc_info=True)
            return None

    def _count(self, outcome: str) -> None:
        if self.on_reload is not None:
            self.on_reload(outcome)


@dataclass(frozen=True)
class ClientMaterial:
    """A checked set of a partner inbox's TLS files, as read."""

    ca: bytes | None  # trust anchors for the partner's certificate; None: the system's
    cert: bytes | None  # the gateway's client certificate chain (mutual TLS), or None
    key: bytes | None
    expiry: float | None  # when the client certificate expires (UNIX seconds)
    generation: int  # 1 for the set read at start, +1 for each set adopted since
    cert_path: Path | None = None
    key_path: Path | None = None

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials holding this set."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context (for an HTTPS inbox) holding this set's trust anchors and client
        certificate (:mod:`ssl` reads the certificate from its files, checked just before)."""
        ctx = ssl.create_default_context(
            cadata=self.ca.decode("ascii", "replace") if self.ca is not None else None
        )
        if self.cert_path is not None:
            try:
                ctx.load_cert_chain(self.cert_path, self.key_path)
            except ssl.SSLError as exc:  # changed again since the check
                raise CertificateError(f"{self.cert_path}: {exc}") from None
        return ctx


class ClientCertificates:
    """The TLS files of a partner's inbox: ``ca`` (the partner's trust anchors) and the
    gateway's ``cert`` and ``key``, read at start and again when they change."""

    #: The files are looked at no more often than this (seconds), however many calls are made.
    POLL_SECONDS = 1.0

    def __init__(
        self,
        partner: str,
        ca: Path | None,
        cert: Path | None,
        key: Path | None,
        *,
        on_reload: Callable[[str], None] | None = None,
        on_expiry: Callable[[float], None] | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        if (cert is None) != (key is None):
            raise CertificateError(f"partner {partner}: a client certificate needs its key")
        self.partner = partner
        self.ca, self.cert, self.key = ca, cert, key
        self.on_reload, self.on_expiry = on_reload, on_expiry
        self.clock, self.monotonic, self.poll_seconds = clock, monotonic, poll_seconds
        self._paths = [p for p in (ca, cert, key) if p is not None]
        self._seen = file_signature(self._paths)
        self._next_look = monotonic() + poll_seconds
        self.current = self._adopt(self.load(generation=1))

    def load(self, *, generation: int) -> ClientMaterial:
        """Read and check the files; raise :class:`CertificateError` naming what is wrong."""
        ca_pem = cert_pem = key_pem = None
        expiry = None
        if self.ca is not None:
            ca_pem = _read(self.ca)
            _certificates(self.ca, ca_pem)  # parses (an expired anchor may still be in a bundle)
        if self.cert is not None and self.key is not None:
            cert_pem, key_pem = _read(self.cert), _read(self.key)
            expiry = _earliest(_key_pair(self.cert, cert_pem, self.key, key_pem))
            _unexpired({"client": expiry}, {"client": self.cert}, self.clock())
        return ClientMaterial(ca_pem, cert_pem, key_pem, expiry, generation, self.cert, self.key)

    def _adopt(self, material: ClientMaterial) -> ClientMaterial:
        if self.on_expiry is not None and material.expiry is not None:
            self.on_expiry(material.expiry)
        return material

    def poll(self) -> ClientMaterial | None:
        """A new set if the files changed since last looked at and pass the checks, else None
        (the transport keeps the set it has). Cheap: one clock reading between looks."""
        now = self.monotonic()
        if now < self._next_look:
            return None
        self._next_look = now + self.poll_seconds
        try:
            signature = file_signature(self._paths)
            if signature == self._seen:
                return None
            self._seen = signature
            try:
                material = self.load(generation=self.current.generation + 1)
            except CertificateError as exc:
                log.warning(
                    "new inbox certificate files refused; the old ones are still used",
                    extra={"partner": self.partner, "error": str(exc)},
                )
                self._count("rejected")
                return None
        except Exception:
            log.warning(
                "cannot look at the inbox certificate files",
                extra={"partner": self.partner},
                exc_info=True,
            )
            return None
        log.info(
            "inbox certificate files reloaded",
            extra={
                "partner": self.partner,
                "not_after": utc_text(material.expiry) if material.expiry is not None else "",
            },
        )
        self._count("ok")
        self.current = self._adopt(material)
        return material

    def _count(self, outcome: str) -> None:
        if self.on_reload is not None:
            self.on_reload(outcome)
