"""Signed checkpoints of the audit chain (``audit.signing_key``).

The audit chain's hashes show an entry edited, removed or reordered, but nothing stops someone
who can write to the store (a database administrator, a stolen backup restored) from editing an
entry and computing every hash after it again: the chain then verifies. A *checkpoint* closes
that gap, as a transparency log's signed tree head does: a serving gateway signs the chain's
head every ``audit.checkpoint_seconds`` while it grows (its length, its last hash, the time)
with a key kept outside the store (a file, or a PKCS#11 token: gateway.audit_pkcs11), and
stores the signature. A chain rewritten below a checkpoint no longer has the signed hash
at the signed length, and a chain cut short is shorter than a signed length; ``tongban audit
verify`` finds both. New checkpoints for the rewritten chain need the private key, which the
store never holds. Checkpoints copied out of the store (``tongban audit checkpoints --json``)
are evidence even once the store's rows are deleted: ``tongban audit verify --checkpoints
FILE``.

What is signed is the UTF-8 text ``tongban-audit-checkpoint/1\\n<length>\\n<hash>\\n<ms>\\n``
(``ms``: the time in whole milliseconds since the Unix epoch, in decimal), so any
implementation of the key's algorithm checks it, from any representation of the time to the
millisecond (a protobuf Timestamp, the JSON number of seconds). A key is Ed25519 (RFC 8032) or
SM2 with SM3 (GB/T 32918.2, for deployments held to China's commercial cryptography rules; a
file key only: gateway.sm2), named by the first 16 hex digits of the SHA-256 of its raw public
key (Ed25519: its 32 bytes; SM2: the uncompressed point, 65 bytes). Which algorithm a
checkpoint was signed with follows from its key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import string
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .sm2 import Sm2Error, Sm2PrivateKey, Sm2PublicKey
from .store.sealing import PrivateFileError, read_private_file, write_private_file

__all__ = [
    "ALGORITHMS",
    "FORMAT",
    "MAX_SIGNATURE_BYTES",
    "PKCS11_SCHEME",
    "Checkpoint",
    "CheckpointError",
    "FileSigner",
    "PublicKey",
    "Signer",
    "SigningKeyError",
    "algorithm_of",
    "generate_signing_key",
    "key_id",
    "load_public_keys",
    "public_key_from_spki",
    "public_spki",
    "read_checkpoints",
    "signature_problem",
]

FORMAT = "tongban-audit-checkpoint/1"
#: How a PKCS#11 URI begins (RFC 7512): ``audit.signing_key`` names a key in a token.
PKCS11_SCHEME = "pkcs11:"
_YEAR_10000 = 253_402_300_800  # Unix seconds: the times a checkpoint may carry end before
# The fields of a ListAuditCheckpointsResponse in protobuf's JSON (grpcurl prints {} for none).
_RESPONSE_FIELDS = {"checkpoints", "nextPageToken", "next_page_token"}

#: The algorithms a checkpoint key may have, as ``tongban audit keys new --algorithm`` names them.
ALGORITHMS = ("ed25519", "sm2")

#: The longest signature a checkpoint may carry (SM2's DER: 72 bytes; Ed25519's is 64).
MAX_SIGNATURE_BYTES = 72

#: A public key that verifies checkpoints: both raise InvalidSignature from ``verify``.
PublicKey = Ed25519PublicKey | Sm2PublicKey


class SigningKeyError(ValueError):
    """A signing or public key file that cannot be used (the message says why)."""


class CheckpointError(ValueError):
    """A checkpoint that is not well formed (the message says where)."""


def key_id(public: PublicKey) -> str:
    """A public key's id: the first 16 hex digits of the SHA-256 of its raw public key
    (Ed25519: 32 bytes; SM2: the uncompressed point)."""
    if isinstance(public, Sm2PublicKey):
        raw = public.point()
    else:
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def algorithm_of(public: PublicKey) -> str:
    """``ed25519`` or ``sm2``."""
    return "sm2" if isinstance(public, Sm2PublicKey) else "ed25519"


def public_spki(public: PublicKey, encoding: serialization.Encoding) -> bytes:
    """The key's SubjectPublicKeyInfo, PEM (what verifiers are given) or DER (how settings
    carry keys to the writer process)."""
    if isinstance(public, Sm2PublicKey):
        return public.pem() if encoding is serialization.Encoding.PEM else public.der()
    return public.public_bytes(encoding, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_from_spki(data: bytes, encoding: serialization.Encoding) -> PublicKey:
    """The Ed25519 or SM2 key of a SubjectPublicKeyInfo, PEM or DER; SigningKeyError
    otherwise."""
    pem = encoding is serialization.Encoding.PEM
    load = serialization.load_pem_public_key if pem else serialization.load_der_public_key
    try:
        key = load(data)
    except UnsupportedAlgorithm:
        try:  # the curve SM2, which the cryptography library does not know
            return Sm2PublicKey.from_pem(data) if pem else Sm2PublicKey.from_der(data)
        except Sm2Error as exc:
            raise SigningKeyError(str(exc)) from None
    except ValueError as exc:
        raise SigningKeyError(f"not a {'PEM' if pem else 'DER'} public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError("not an Ed25519 or SM2 key")
    return key


def _signed_bytes(length: int, head: str, ts: float) -> bytes:
    return f"{FORMAT}\n{length}\n{head}\n{round(ts * 1000)}\n".encode()


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """The audit chain's first ``length`` entries end with ``hash``, as the key ``key_id``
    signed at ``ts`` (``signature``: base64)."""

    length: int
    hash: str
    ts: float
    key_id: str
    signature: str

    def to_json(self) -> dict[str, Any]:
        """As one line of ``tongban audit checkpoints --json``."""
        return {
            "format": FORMAT,
            "length": self.length,
            "hash": self.hash,
            "ts": self.ts,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_json(cls, data: Any, where: str) -> Checkpoint:
        """Read one checkpoint line back; CheckpointError naming ``where`` if malformed."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointError(f"{where}: not a {FORMAT} object")
        length, head, ts = data.get("length"), data.get("hash"), data.get("ts")
        kid, sig = data.get("key_id"), data.get("signature")
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise CheckpointError(f"{where}: length must be a positive integer")
        if not isinstance(head, str) or len(head) != 64 or head.strip(string.hexdigits):
            raise CheckpointError(f"{where}: hash must be 64 hex digits")
        if not isinstance(ts, float | int) or isinstance(ts, bool) or not 0 <= ts < _YEAR_10000:
            raise CheckpointError(f"{where}: ts must be Unix seconds (a number from 0)")
        if not isinstance(kid, str) or not isinstance(sig, str):
            raise CheckpointError(f"{where}: key_id and signature must be strings")
        return cls(length, head, float(ts), kid, sig)


def signature_problem(cp: Checkpoint, keys: Mapping[str, PublicKey]) -> str:
    """Why ``cp``'s signature does not hold under the trusted ``keys`` ("" when it does)."""
    public = keys.get(cp.key_id)
    if public is None:
        return f"signed by key {cp.key_id}, which is not a trusted key"
    try:
        signature = base64.b64decode(cp.signature, validate=True)
        public.verify(signature, _signed_bytes(cp.length, cp.hash, cp.ts))
    except (InvalidSignature, binascii.Error, ValueError):
        return f"its signature does not verify with key {cp.key_id}"
    return ""


class Signer(ABC):
    """A key that signs checkpoints: its id, its public half, and the signing
    (:class:`FileSigner`: a PEM file, Ed25519 or SM2;
    :class:`~gateway.audit_pkcs11.Pkcs11Signer`: an Ed25519 key held in a hardware security
    module). Where it is makes no difference to what it signs."""

    def __init__(self, public: PublicKey) -> None:
        self.public_key: PublicKey = public
        self.key_id = key_id(public)
        self.algorithm = algorithm_of(public)

    @staticmethod
    def load(source: Path | str) -> Signer:
        """The key of ``audit.signing_key``: a PKCS#11 URI (``pkcs11:...``, RFC 7512) or a
        PEM file; SigningKeyError saying what is wrong."""
        if isinstance(source, str) and source.startswith(PKCS11_SCHEME):
            from .audit_pkcs11 import Pkcs11Signer, signing_uri

            return Pkcs11Signer.open(signing_uri(source))
        return FileSigner.load(Path(source))

    @abstractmethod
    def signature(self, data: bytes) -> bytes:
        """The signature of ``data`` (Ed25519: 64 bytes; SM2: DER)."""

    @abstractmethod
    def describe(self) -> str:
        """Where the key is, for logs and messages."""

    def sign(self, length: int, head: str, ts: float) -> Checkpoint:
        """A checkpoint of the chain's first ``length`` entries, ending with ``head``, at
        ``ts`` (Unix seconds, kept to the millisecond)."""
        ts = round(ts, 3)
        sig = self.signature(_signed_bytes(length, head, ts))
        return Checkpoint(length, head, ts, self.key_id, base64.b64encode(sig).decode("ascii"))

    def public_pem(self) -> bytes:
        """The public key, PEM (SubjectPublicKeyInfo): what verifiers are given."""
        return public_spki(self.public_key, serialization.Encoding.PEM)


class FileSigner(Signer):
    """An Ed25519 or SM2 private key read from a PEM file."""

    def __init__(
        self, private: Ed25519PrivateKey | Sm2PrivateKey, path: Path | None = None
    ) -> None:
        super().__init__(private.public_key())
        self._private = private
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        # Settings cross to the store's writer process pickled; a key object does not pickle.
        return _signer_from_pem, (_private_pem(self._private),)

    @classmethod
    def load(cls, path: Path | str) -> FileSigner:
        """Read a PEM (PKCS#8, unencrypted) Ed25519 or SM2 private key from a file only its
        owner may read; SigningKeyError otherwise."""
        path = Path(path)
        try:
            data = read_private_file(path)
        except PrivateFileError as exc:
            raise SigningKeyError(str(exc)) from None
        except OSError as exc:
            raise SigningKeyError(f"{path}: cannot read: {exc.strerror or exc}") from None
        return cls(_private_key(data, path), path)

    def signature(self, data: bytes) -> bytes:
        """The signature of ``data`` (Ed25519: 64 bytes; SM2 with SM3: DER)."""
        return self._private.sign(data)

    def describe(self) -> str:
        """The key's file."""
        return str(self.path) if self.path is not None else "a key in memory"


def _private_key(data: bytes, path: Path | None) -> Ed25519PrivateKey | Sm2PrivateKey:
    """The Ed25519 or SM2 key of an unencrypted PEM; SigningKeyError naming ``path``."""
    where = path or "the key"
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except UnsupportedAlgorithm:
        try:  # the curve SM2, which the cryptography library does not know
            return Sm2PrivateKey.from_pem(data)
        except Sm2Error as exc:
            raise SigningKeyError(f"{where}: {exc}") from None
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(f"{where}: not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"{where}: not an Ed25519 or SM2 key")
    return key


def _private_pem(private: Ed25519PrivateKey | Sm2PrivateKey) -> bytes:
    if isinstance(private, Sm2PrivateKey):
        return private.pem()
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _signer_from_pem(pem: bytes) -> FileSigner:
    return FileSigner(_private_key(pem, None))


def generate_signing_key(path: Path, algorithm: str = "ed25519") -> tuple[FileSigner, Path]:
    """Write a new private key (``algorithm``: one of :data:`ALGORITHMS`) to ``path`` (mode
    600, never over an existing file) and its public key to ``path`` + ``.pub``; return the
    signer and the public key's path."""
    if algorithm not in ALGORITHMS:
        raise SigningKeyError(f"algorithm must be one of {', '.join(ALGORITHMS)}")
    if path.exists():
        raise SigningKeyError(f"{path}: already exists; choose another file")
    private: Ed25519PrivateKey | Sm2PrivateKey
    try:
        private = Sm2PrivateKey.generate() if algorithm == "sm2" else Ed25519PrivateKey.generate()
    except Sm2Error as exc:
        raise SigningKeyError(str(exc)) from None
    write_private_file(path, _private_pem(private))
    signer = FileSigner(private, path)
    public = path.with_name(path.name + ".pub")
    public.write_bytes(signer.public_pem())
    return signer, public


def load_public_keys(paths: Iterable[Path]) -> dict[str, PublicKey]:
    """Trusted public keys by id, from PEM files (a public key, or a private key whose public
    half is meant; Ed25519 or SM2); SigningKeyError naming the file that is not one."""
    keys: dict[str, PublicKey] = {}
    for path in paths:
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SigningKeyError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if b"PRIVATE KEY" in data:
            public = FileSigner.load(path).public_key
        else:
            try:
                public = public_key_from_spki(data, serialization.Encoding.PEM)
            except SigningKeyError as exc:
                raise SigningKeyError(f"{path}: {exc}") from None
        keys[key_id(public)] = public
    return keys


def read_checkpoints(
    path: Path, other: Callable[[dict[str, Any], str], list[Checkpoint]] | None = None
) -> list[Checkpoint]:
    """Checkpoints from a file of JSON objects, one after the other (``tongban audit
    checkpoints --json`` writes one per line); ``other`` reads the objects made of a
    ListAuditCheckpointsResponse's fields only (that RPC's answers, as protobuf's JSON)."""
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read: {exc}") from None
    decoder = json.JSONDecoder()
    found: list[Checkpoint] = []
    pos = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos == len(text):
            return found
        where = f"{path}, line {text.count(chr(10), 0, pos) + 1}"
        try:
            data, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            raise CheckpointError(f"{where}: not JSON") from None
        if isinstance(data, dict) and other is not None and set(data) <= _RESPONSE_FIELDS:
            found.extend(other(data, where))
        else:
            found.append(Checkpoint.from_json(data, where))
