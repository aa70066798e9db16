"""Personal data sealed at rest: a case's canonical record and its status notes, encrypted with
an authenticated cipher under keys the operator holds (``store.keys_file``).

A sealed value is text, so that it fits the columns it replaces::

    enc1:<key id>:<base64 of nonce (12 bytes) | ciphertext | tag (16 bytes)>

The cipher is AES-256-GCM or SM4-GCM (GB/T 32907, for deployments held to China's commercial
cryptography rules), chosen per key, both from ``cryptography``. Each value is bound to where it
is stored: the associated data names the column and the case's exchange id, so a sealed record
copied into another case's row, or into a note, does not open. Every value gets a fresh random
nonce; a key should be rotated well before 2^32 values (the bound NIST SP 800-38D sets for
random nonces), which at a million cases a day is thousands of years.

The keys file is TOML, readable by its owner only (like an SSH key), and names the key new
values are sealed with::

    active = "2026-11"

    [keys."2026-11"]
    algorithm = "aes-256-gcm"
    secret = "<base64 of 32 random bytes>"

    [keys."2026-01"]            # an older key: still opens what it sealed
    algorithm = "sm4-gcm"
    secret = "<base64 of 16 random bytes>"

With ``wrapping_key`` (a PKCS#11 URI), the file holds each key ``wrapped`` by an AES key in a
hardware security module instead of its ``secret``: see :mod:`gateway.store.key_wrapping`.

Values stored before sealing was turned on stay readable as they are (a canonical record is
JSON, which never starts like a sealed value); ``tongban db reencrypt`` seals them, and moves
values sealed with older keys to the active one, after which an old key can be dropped.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

# pkcs11 itself is imported by these only when a keys file names a wrapping key.
from ..hsm import Pkcs11Uri
from .key_wrapping import WrappedKeyError, WrappingError, unwrap_key, wrap_key, wrapping_uri

__all__ = [
    "ALGORITHMS",
    "CANONICAL",
    "NOTE",
    "Keyring",
    "KeyringError",
    "PrivateFileError",
    "SealError",
    "generate_key",
    "key_id_in_head",
    "key_id_of",
    "open_value",
    "read_private_file",
    "write_keyring",
    "write_private_file",
]

#: Each algorithm and the length of its key in bytes.
ALGORITHMS: dict[str, int] = {"aes-256-gcm": 32, "sm4-gcm": 16}

PREFIX = "enc1:"
_NONCE, _TAG = 12, 16
_KEY_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")

#: What a sealed value is bound to, besides its case's exchange id.
CANONICAL = b"cases.canonical"
NOTE = b"events.note"


class KeyringError(ValueError):
    """The keys file cannot be used (its message names the file and what is wrong)."""


class SealError(Exception):
    """A stored value does not open: its key is not in the keyring, or it was altered or
    moved. An operator's problem, never a caller's: the message names no personal data."""


class _Key:
    """One key: its algorithm and secret, with the cipher object made once (AES-GCM's key
    schedule cost more than sealing a record)."""

    __slots__ = ("_aead", "algorithm", "secret")

    def __init__(self, algorithm: str, secret: bytes) -> None:
        self.algorithm, self.secret = algorithm, secret
        self._aead = AESGCM(secret) if algorithm == "aes-256-gcm" else None

    def __reduce__(self) -> tuple[type[_Key], tuple[str, bytes]]:
        return (_Key, (self.algorithm, self.secret))  # the cipher object does not pickle

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = os.urandom(_NONCE)
        if self._aead is not None:
            return nonce + self._aead.encrypt(nonce, plaintext, aad)
        enc = Cipher(algorithms.SM4(self.secret), modes.GCM(nonce)).encryptor()
        enc.authenticate_additional_data(aad)
        body = enc.update(plaintext) + enc.finalize()
        return nonce + body + enc.tag

    def open(self, blob: bytes, aad: bytes) -> bytes:
        nonce, body = blob[:_NONCE], blob[_NONCE:]
        if self._aead is not None:
            return self._aead.decrypt(nonce, body, aad)
        dec = Cipher(algorithms.SM4(self.secret), modes.GCM(nonce, body[-_TAG:])).decryptor()
        dec.authenticate_additional_data(aad)
        return dec.update(body[:-_TAG]) + dec.finalize()


#: How many characters of a stored value tell its key (:func:`key_id_in_head`).
HEAD = len(PREFIX) + 32 + 1


def _split(stored: str) -> tuple[str, str] | None:
    """(key id, what follows it) of a value shaped like a sealed one; None otherwise."""
    if not stored.startswith(PREFIX):
        return None
    kid, sep, rest = stored[len(PREFIX) :].partition(":")
    return (kid, rest) if sep and _KEY_ID.fullmatch(kid) else None


def key_id_in_head(head: str) -> str | None:
    """The key id named by the first :data:`HEAD` characters of a stored value (a count of
    values per key reads no more of them); :func:`key_id_of` checks the whole value."""
    split = _split(head)
    return split[0] if split else None


def _parse(stored: str) -> tuple[str, bytes] | None:
    """(key id, nonce | ciphertext | tag) of a sealed value; None for text in the clear
    (including a note that only starts like a sealed value)."""
    split = _split(stored)
    if split is None:
        return None
    kid, encoded = split
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    return (kid, blob) if len(blob) >= _NONCE + _TAG else None


def key_id_of(stored: str) -> str | None:
    """The id of the key a stored value is sealed with; None for a value stored in the clear."""
    parsed = _parse(stored)
    return parsed[0] if parsed else None


@dataclass(frozen=True)
class Keyring:
    """The keys that open sealed values, and the one (``active``) that seals new ones."""

    active: str
    keys: dict[str, _Key]
    # The PKCS#11 URI of the key in a token that wraps them in the file (None: in the clear).
    wrapping: str | None = None

    @classmethod
    def load(cls, path: Path) -> Keyring:
        """Read a keys file; refuse one that others may read, or that is malformed."""
        try:
            data = tomllib.loads(read_private_file(path).decode("utf-8"))
        except PrivateFileError as exc:
            raise KeyringError(str(exc)) from None
        except OSError as exc:
            raise KeyringError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise KeyringError(f"{path}: not TOML: {exc}") from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: dict[str, object], where: str = "keys file") -> Keyring:
        """A keyring from a keys file's content (see the module docstring)."""
        unknown = set(data) - {"active", "keys", "wrapping_key"}
        if unknown:
            raise KeyringError(f"{where}: unknown entries {sorted(unknown)}")
        table = data.get("keys")
        if not isinstance(table, dict) or not table:
            raise KeyringError(f"{where}: [keys] holds no key")
        wrapping = data.get("wrapping_key")
        uri = None
        if wrapping is not None:
            try:
                uri = wrapping_uri(str(wrapping))
            except WrappingError as exc:
                raise KeyringError(f"{where}: wrapping_key: {exc}") from None
        # Each key's secret, or with a wrapping key, the secret wrapped by it.
        field = "secret" if uri is None else "wrapped"
        keys: dict[str, _Key] = {}
        for kid, entry in table.items():
            at = f"{where}: keys.{kid}"
            if not _KEY_ID.fullmatch(kid):
                raise KeyringError(f"{at}: a key id is 1-32 of A-Z a-z 0-9 _ . -")
            if not isinstance(entry, dict) or set(entry) != {"algorithm", field}:
                also = "" if uri is None else " (wrapping_key is set: no secret in the file)"
                raise KeyringError(f"{at}: needs exactly algorithm and {field}{also}")
            algorithm, value = entry["algorithm"], entry[field]
            if algorithm not in ALGORITHMS:
                raise KeyringError(f"{at}.algorithm: one of {', '.join(ALGORITHMS)}")
            try:
                raw = base64.b64decode(str(value), validate=True)
            except (binascii.Error, ValueError):
                raise KeyringError(f"{at}.{field}: not base64") from None
            if uri is not None:
                try:
                    raw = unwrap_key(uri, kid, algorithm, raw)
                except WrappedKeyError as exc:
                    raise KeyringError(f"{at}.wrapped: {exc}") from None
                except WrappingError as exc:  # the token, or its key: not this wrapped key
                    raise KeyringError(f"{where}: wrapping_key: {exc}") from None
            if len(raw) != ALGORITHMS[algorithm]:
                raise KeyringError(
                    f"{at}.{field}: {algorithm} takes {ALGORITHMS[algorithm]} bytes, not {len(raw)}"
                )
            keys[kid] = _Key(algorithm, raw)
        active = data.get("active")
        if not isinstance(active, str) or active not in keys:
            raise KeyringError(f"{where}: active must name one of the keys ({', '.join(keys)})")
        return cls(active, keys, None if uri is None else uri.text)

    def wrapping_described(self) -> str | None:
        """The wrapping key's URI without a PIN (None: the file holds the keys in the clear)."""
        if self.wrapping is None:
            return None
        return Pkcs11Uri.parse(self.wrapping).redacted()

    def entries(self) -> dict[str, tuple[str, str]]:
        """Each key's id -> (algorithm, base64 secret), as :func:`write_keyring` takes them."""
        return {
            kid: (k.algorithm, base64.b64encode(k.secret).decode("ascii"))
            for kid, k in self.keys.items()
        }

    def seal(self, plaintext: bytes, where: bytes, exchange_id: str) -> str:
        """``plaintext`` sealed with the active key, bound to ``where`` and the case."""
        blob = self.keys[self.active].seal(plaintext, _aad(where, exchange_id))
        return f"{PREFIX}{self.active}:{base64.b64encode(blob).decode('ascii')}"


def open_value(keyring: Keyring | None, stored: str, where: bytes, exchange_id: str) -> str:
    """What ``stored`` holds. A sealed value needs ``keyring`` and its key; a value stored in
    the clear is returned as it is, with or without a keyring."""
    parsed = _parse(stored)
    if parsed is None:
        return stored
    kid, blob = parsed
    if keyring is None:
        raise SealError(
            f"the store holds values sealed with key {kid!r} and this gateway has no keys: "
            "set store.keys_file"
        )
    key = keyring.keys.get(kid)
    if key is None:
        raise SealError(f"a stored value is sealed with key {kid!r}, which store.keys_file lacks")
    try:
        return key.open(blob, _aad(where, exchange_id)).decode("utf-8")
    except (InvalidTag, ValueError):
        raise SealError(
            f"a value of {where.decode()} for exchange {exchange_id} does not open with key "
            f"{kid!r}: altered, or moved from another row"
        ) from None


def _aad(where: bytes, exchange_id: str) -> bytes:
    return where + b"\x00" + exchange_id.encode("utf-8")


def generate_key(algorithm: str) -> str:
    """A new random secret for ``algorithm``, base64."""
    if algorithm not in ALGORITHMS:
        raise KeyringError(f"algorithm: one of {', '.join(ALGORITHMS)}")
    return base64.b64encode(secrets.token_bytes(ALGORITHMS[algorithm])).decode("ascii")


def write_keyring(
    path: Path, active: str, keys: dict[str, tuple[str, str]], wrapping: str | None = None
) -> Keyring:
    """Write a keys file (``keys``: id -> (algorithm, base64 secret)) readable by its owner
    only: beside its final name, fsynced, then renamed over it. With ``wrapping`` (a PKCS#11
    URI), each key is written wrapped by that key in its token, not in the clear. Returns the
    keyring read back from what was written."""
    if wrapping is None:
        lines = [
            "# Tongban store keys (docs/security.md#personal-data-at-rest). Keep secret; back up.",
            f'active = "{active}"',
        ]
    else:
        lines = [
            "# Tongban store keys, wrapped by a key in a hardware security module",
            "# (docs/security.md#the-sealing-keys-wrapped-by-a-hardware-security-module).",
            f'active = "{active}"',
            f"wrapping_key = {json.dumps(wrapping, ensure_ascii=False)}",
        ]
    try:
        uri = None if wrapping is None else wrapping_uri(wrapping)
        for kid, (algorithm, secret) in keys.items():
            lines += ["", f'[keys."{kid}"]', f'algorithm = "{algorithm}"']
            if uri is None:
                lines.append(f'secret = "{secret}"')
            else:
                blob = wrap_key(uri, kid, algorithm, base64.b64decode(secret))
                lines.append(f'wrapped = "{base64.b64encode(blob).decode("ascii")}"')
    except WrappingError as exc:
        raise KeyringError(f"{path}: wrapping_key: {exc}") from None
    ring = Keyring.parse(tomllib.loads("\n".join(lines)), str(path))  # what it writes, it reads
    write_private_file(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return ring


class PrivateFileError(OSError):
    """A file of secrets that others than its owner may read."""


def read_private_file(path: Path) -> bytes:
    """The content of a file of secrets; PrivateFileError if its group or others may read it
    (OSError if it cannot be read)."""
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PrivateFileError(
            f"{path}: readable by others (mode {stat.S_IMODE(mode):o}); chmod 600 {path}"
        )
    return path.read_bytes()


def write_private_file(path: Path, data: bytes) -> None:
    """Write a file of secrets readable by its owner only: beside its final name, fsynced,
    then renamed over it."""
    partial = path.with_name(path.name + ".partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(partial, path)
