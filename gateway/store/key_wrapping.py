"""The store's sealing keys wrapped by a key in a hardware security module (envelope
encryption).

With ``wrapping_key`` in ``store.keys_file``, the file holds no secret: each sealing key is
kept encrypted (``wrapped``) by an AES-256 key in a PKCS#11 token, named by an RFC 7512 URI::

    active = "k20261128"
    wrapping_key = "pkcs11:token=tongban;object=store-kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/tongban/hsm.pin"

    [keys."k20261128"]
    algorithm = "aes-256-gcm"
    wrapped = "<base64 of nonce (12 bytes) | encrypted key | tag (16 bytes)>"

The token encrypts and decrypts with ``CKM_AES_GCM``; the associated data names the key's id
and algorithm, so a wrapped key copied under another id, or relabelled with another cipher,
does not open. A gateway asks the token to unwrap the keys when it reads the file (at start,
and when the file changes) and seals with them in memory, as with a plain keys file: a case
costs no round trip to the token. A copy of the file, or of a backup holding it, opens nothing
without the token and its PIN.

The wrapping key is generated in the token by ``tongban db keys wrapping-key new``: sensitive,
never extractable, for encrypting and decrypting only.
"""

from __future__ import annotations

import os
from typing import Any

from ..hsm import Pkcs11Uri, errors_as, forget_login, lock, logged_in, one_object, token_session

__all__ = [
    "WrappedKeyError",
    "WrappingError",
    "generate_wrapping_key",
    "unwrap_key",
    "wrap_key",
    "wrapping_uri",
]

_NONCE, _TAG_BITS = 12, 128
#: Where a wrapped key's associated data says it belongs, before its id and algorithm.
_AAD = b"tongban-store-key\x00"


class WrappingError(ValueError):
    """The wrapping key or a wrapped key cannot be used (the message says why)."""


class WrappedKeyError(WrappingError):
    """A wrapped key that does not open with the wrapping key (the token itself works)."""


class _TokenFailed(WrappingError):
    """The token refused an operation twice; ``cause`` is its last error."""

    def __init__(self, message: str, cause: Exception) -> None:
        super().__init__(message)
        self.cause = cause


def wrapping_uri(text: str) -> Pkcs11Uri:
    """``text`` read as the URI of a wrapping key; WrappingError naming what is wrong."""
    with errors_as(WrappingError):
        uri = Pkcs11Uri.parse(text)
        uri.require_type("secret-key", "the key that wraps the store's keys")
    return uri


def _data_errors() -> tuple[type[Exception], ...]:
    import pkcs11

    return (
        pkcs11.EncryptedDataInvalid,
        pkcs11.EncryptedDataLenRange,
        pkcs11.GeneralError,
        pkcs11.FunctionFailed,
    )


def _aad(kid: str, algorithm: str) -> bytes:
    return _AAD + kid.encode("utf-8") + b"\x00" + algorithm.encode("utf-8")


def _aes_key(session: Any, uri: Pkcs11Uri) -> Any:
    from pkcs11 import KeyType, ObjectClass

    key = one_object(session, uri, ObjectClass.SECRET_KEY, "secret")
    if key.key_type != KeyType.AES:
        raise WrappingError(f"pkcs11: the secret key {uri.describe()} is not an AES key")
    return key


def _in_token(uri: Pkcs11Uri, operation: str, work: Any) -> bytes:
    """``work(key)`` with the URI's AES key, on this process's login session; tried once more
    on a new login if the token fails it (a session dropped, a network HSM restarted)."""
    import pkcs11

    def attempt() -> bytes:
        return bytes(work(_aes_key(logged_in(uri), uri)))

    with errors_as(WrappingError), lock(uri.module):
        uri.pin()  # its file readable, even when this process is logged in already
        try:
            return attempt()
        except pkcs11.PKCS11Error:
            forget_login(uri)
        try:
            return attempt()
        except pkcs11.PKCS11Error as exc:
            forget_login(uri)
            message = f"pkcs11: the token could not {operation} with the key {uri.describe()}"
            raise _TokenFailed(f"{message}: {exc!r}", exc) from None


def wrap_key(uri: Pkcs11Uri, kid: str, algorithm: str, secret: bytes) -> bytes:
    """``secret`` (key ``kid``'s) encrypted by the token's key: nonce | ciphertext | tag."""
    from pkcs11 import Mechanism
    from pkcs11.mechanisms import GCMParams

    nonce = os.urandom(_NONCE)
    params = GCMParams(nonce, _aad(kid, algorithm), _TAG_BITS)
    return nonce + _in_token(
        uri,
        "wrap a key",
        lambda key: key.encrypt(secret, mechanism=Mechanism.AES_GCM, mechanism_param=params),
    )


def unwrap_key(uri: Pkcs11Uri, kid: str, algorithm: str, blob: bytes) -> bytes:
    """The secret :func:`wrap_key` wrapped as ``blob`` for key ``kid`` of ``algorithm``;
    WrappedKeyError if it does not open (altered, moved to another id or algorithm, or wrapped
    by another key), WrappingError if the token or its key cannot be used."""
    from pkcs11 import Mechanism
    from pkcs11.mechanisms import GCMParams

    if len(blob) < _NONCE + _TAG_BITS // 8:
        raise WrappedKeyError("too short to be a wrapped key")
    params = GCMParams(blob[:_NONCE], _aad(kid, algorithm), _TAG_BITS)
    try:
        return _in_token(
            uri,
            "unwrap the key",
            lambda key: key.decrypt(
                blob[_NONCE:], mechanism=Mechanism.AES_GCM, mechanism_param=params
            ),
        )
    except _TokenFailed as exc:
        # A tag that does not match: CKR_ENCRYPTED_DATA_INVALID as PKCS#11 3.0 says, or a
        # general error or failed function as SoftHSM2 and others answer. Anything else is
        # the token's trouble, not this key's.
        if not isinstance(exc.cause, _data_errors()):
            raise
        raise WrappedKeyError(
            f"does not open with the secret key {uri.describe()}: altered, moved from another "
            "key, or wrapped by another wrapping key"
        ) from None


def generate_wrapping_key(uri: Pkcs11Uri) -> None:
    """Generate an AES-256 key in the token ``uri`` names, under its ``object`` label (and
    ``id``, when given): sensitive, never extractable, for encrypting and decrypting only.
    Refused if a key of that label or id is there already; checked by wrapping and unwrapping
    a test key."""
    import pkcs11
    from pkcs11 import Attribute, KeyType

    if uri.label is None:
        raise WrappingError("pkcs11 URI: object=LABEL names the new key")
    with errors_as(WrappingError), token_session(uri, rw=True) as session:
        if list(session.get_objects(uri.key_attrs())):
            raise WrappingError(
                f"pkcs11: a key {uri.describe()} exists already; choose another label"
            )
        template: dict[Any, Any] = {
            Attribute.TOKEN: True,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.ENCRYPT: True,
            Attribute.DECRYPT: True,
            Attribute.WRAP: False,
            Attribute.UNWRAP: False,
            Attribute.SIGN: False,
            Attribute.VERIFY: False,
            Attribute.DERIVE: False,
        }
        if uri.key_id is not None:
            template[Attribute.ID] = uri.key_id
        try:
            session.generate_key(KeyType.AES, 256, label=uri.label, store=True, template=template)
        except pkcs11.PKCS11Error as exc:
            raise WrappingError(
                f"pkcs11: token {uri.token!r} could not generate an AES key: {exc!r}"
            ) from None
    probe = os.urandom(32)
    if (
        unwrap_key(uri, "probe", "aes-256-gcm", wrap_key(uri, "probe", "aes-256-gcm", probe))
        != probe
    ):
        raise WrappingError(f"pkcs11: the key {uri.describe()} does not give back what it wrapped")
