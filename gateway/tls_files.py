"""The gateway's server certificate, key and client CA, read again from their files while it
serves, and the expiry times of every certificate it uses.

gRPC asks :meth:`ServerCertificates.fetch` before each new connection's handshake
(``grpc.dynamic_ssl_server_credentials``). It looks at the files' sizes and modification times,
and only when they changed reads and checks them: each certificate parses, the key is the
certificate's own, nothing has expired, the client CA holds at least one certificate. A set
that passes replaces the old one for the connections that follow (those open keep theirs); one
that does not (a rotation half-way through: the new certificate written, its key not yet) is
refused with a warning, and the old one keeps serving until the files change again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .timestamps import utc_text

__all__ = ["CertificateError", "ServerCertificates", "certificate_expiry"]

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
        out = []
        for p in self._paths:
            try:
                st = p.stat()
            except OSError:
                out.append((-1, -1, -1))  # gone: a change, refused once by load()
                continue
            out.append((st.st_mtime_ns, st.st_size, st.st_ino))
        return tuple(out)

    def load(self) -> _Loaded:
        """Read and check the files; raise :class:`CertificateError` naming what is wrong."""
        try:
            cert_pem, key_pem = self.cert.read_bytes(), self.key.read_bytes()
            ca_pem = self.client_ca.read_bytes() if self.client_ca is not None else None
        except OSError as exc:
            raise CertificateError(f"{exc.filename}: {exc.strerror}") from None
        chain = _certificates(self.cert, cert_pem)
        try:
            key = serialization.load_pem_private_key(key_pem, None)
        except (ValueError, TypeError) as exc:
            raise CertificateError(
                f"{self.key}: not an unencrypted PEM private key ({exc})"
            ) from None
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
            raise CertificateError(f"{self.key}: not the key of the certificate in {self.cert}")
        now = self.clock()
        expiry = {"server": _earliest(chain)}
        if ca_pem is not None:
            assert self.client_ca is not None
            expiry["client_ca"] = _earliest(_certificates(self.client_ca, ca_pem))
        for which, until in expiry.items():
            if until <= now:
                when = utc_text(until)
                path = self.cert if which == "server" else self.client_ca
                raise CertificateError(f"{path}: expired at {when}")
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
