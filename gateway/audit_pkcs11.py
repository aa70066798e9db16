"""The audit signing key held in a hardware security module, through PKCS#11.

``audit.signing_key`` is a file path or a PKCS#11 URI (RFC 7512), for instance::

    pkcs11:token=tongban;object=audit-signing?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/tongban/hsm.pin

The private key never leaves the token: the gateway asks the token to sign each checkpoint
(``CKM_EDDSA``) and reads only the public half (``CKA_EC_POINT``), whose id is worked out as for
a key in a file, so checkpoints, ``trusted_keys``, the peers' ``audit_public_keys`` and
``tongban audit verify`` do not tell the two apart. ``tongban audit keys new --pkcs11 URI``
generates the key pair in the token: sensitive, not extractable.

The URI's attributes understood (values percent-encoded as RFC 7512 says): ``token``
(its label; required), ``serial``, ``manufacturer``, ``model`` (narrowing the token),
``object`` (the key's label) and/or ``id`` (its CKA_ID bytes), ``type`` (``private``, when
given); in the query ``module-path`` (the PKCS#11 library; required) and the user PIN, from
``pin-source`` (a file only its owner may read, or a ``file:`` URI) or ``pin-value``. Any
other attribute is refused rather than ignored: a URI meant to narrow the choice of key must
not silently match a wider one.

PKCS#11 libraries are loaded once per process (a second ``C_Initialize`` is an error) and
initialized again in a process forked after it (``tongban serve --workers``: the standard says
a child must not use its parent's state). Calls into one library are serialized by a lock,
since it is initialized without the locking callbacks. A login belongs to the process, so
each token has one logged-in session, kept open; a failed signature is tried once more on a
new one (a network HSM restarted, a token re-inserted), then reported as
:class:`SigningKeyError`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote_to_bytes

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .audit_signing import PKCS11_SCHEME, Signer, SigningKeyError
from .store.sealing import PrivateFileError, read_private_file

__all__ = ["Pkcs11Signer", "Pkcs11Uri", "generate_pkcs11_key", "token_session"]

_PATH_ATTRS = {"token", "serial", "manufacturer", "model", "object", "id", "type"}
_QUERY_ATTRS = {"module-path", "pin-source", "pin-value"}
#: DER of the object identifier id-Ed25519 (1.3.101.112, RFC 8410): the curve's CKA_EC_PARAMS.
_ED25519_PARAMS = bytes.fromhex("06032b6570")
#: The text the token signs when a key is loaded, checked with the key's public half.
_PROBE = b"tongban-audit-signing-key-check\n"


@dataclass(frozen=True, slots=True)
class Pkcs11Uri:
    """A PKCS#11 URI (RFC 7512) naming an Ed25519 private key: its ``text`` and its
    attributes, decoded (:meth:`parse`)."""

    text: str
    module: str
    token: str
    serial: str | None
    manufacturer: str | None
    model: str | None
    label: str | None
    key_id: bytes | None
    pin_source: str | None
    pin_value: str | None

    @classmethod
    def parse(cls, text: str) -> Pkcs11Uri:
        """``text`` read, or SigningKeyError naming the attribute that is wrong."""
        if not text.startswith(PKCS11_SCHEME):
            raise SigningKeyError(f"not a PKCS#11 URI (it begins {PKCS11_SCHEME}): {text!r}")
        path, _, query = text[len(PKCS11_SCHEME) :].partition("?")
        attrs = _attributes(path, ";", _PATH_ATTRS, "path")
        attrs.update(_attributes(query, "&", _QUERY_ATTRS, "query"))
        given = {k: _text(k, v) for k, v in attrs.items() if k != "id"}
        if "token" not in given:
            raise SigningKeyError("pkcs11 URI: token=LABEL is required")
        if "object" not in given and "id" not in attrs:
            raise SigningKeyError("pkcs11 URI: object=LABEL or id=BYTES names the key")
        if given.get("type", "private") != "private":
            raise SigningKeyError("pkcs11 URI: type must be private (the key that signs)")
        if "module-path" not in given:
            raise SigningKeyError(
                "pkcs11 URI: module-path=/path/to/the/PKCS#11/library.so is required"
            )
        if "pin-source" in given and "pin-value" in given:
            raise SigningKeyError("pkcs11 URI: give pin-source or pin-value, not both")
        return cls(
            text=text,
            module=given["module-path"],
            token=given["token"],
            serial=given.get("serial"),
            manufacturer=given.get("manufacturer"),
            model=given.get("model"),
            label=given.get("object"),
            key_id=attrs.get("id"),
            pin_source=given.get("pin-source"),
            pin_value=given.get("pin-value"),
        )

    def redacted(self) -> str:
        """The URI without its ``pin-value`` (for messages and logs)."""
        head, sep, query = self.text.partition("?")
        kept = [a for a in query.split("&") if not a.startswith("pin-value=")]
        return head + (sep + "&".join(kept) if kept and sep else "")

    def pin(self) -> str | None:
        """The user PIN (None: the token is used without logging in)."""
        if self.pin_value is not None:
            return self.pin_value
        if self.pin_source is None:
            return None
        source = self.pin_source.removeprefix("file://").removeprefix("file:")
        try:
            data = read_private_file(Path(source))
        except PrivateFileError as exc:
            raise SigningKeyError(f"pkcs11 URI: pin-source {exc}") from None
        except OSError as exc:
            raise SigningKeyError(
                f"pkcs11 URI: pin-source {source}: cannot read: {exc.strerror or exc}"
            ) from None
        return data.decode("utf-8").rstrip("\r\n")

    def key_attrs(self) -> dict[Any, Any]:
        """The key's label and id, as a search template."""
        from pkcs11 import Attribute

        attrs: dict[Any, Any] = {}
        if self.label is not None:
            attrs[Attribute.LABEL] = self.label
        if self.key_id is not None:
            attrs[Attribute.ID] = self.key_id
        return attrs

    def describe(self) -> str:
        """The key, as messages name it."""
        named = [f"labelled {self.label!r}"] if self.label is not None else []
        named += [f"with id {self.key_id.hex()}"] if self.key_id is not None else []
        return f"{' and '.join(named)} on token {self.token!r}"


def _attributes(text: str, sep: str, known: set[str], where: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for item in text.split(sep) if text else ():
        name, eq, value = item.partition("=")
        if not eq:
            raise SigningKeyError(f"pkcs11 URI: {item!r} in the {where} is not NAME=VALUE")
        if name not in known:
            raise SigningKeyError(
                f"pkcs11 URI: attribute {name!r} is not understood here "
                f"(the {where} takes {', '.join(sorted(known))})"
            )
        if name in found:
            raise SigningKeyError(f"pkcs11 URI: attribute {name!r} is given twice")
        found[name] = unquote_to_bytes(value)
    return found


def _text(name: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise SigningKeyError(f"pkcs11 URI: {name} is not UTF-8 once decoded") from None


# -- the libraries and the logged-in sessions: one each per process ---------------------------

_LIBS: dict[str, tuple[Any, int]] = {}
# A PKCS#11 login belongs to the process, not to a session: a second C_Login is refused, and
# closing any logged-in session logs every session out. So one session per token logs in and
# stays open; the others (a key generated) are opened without the PIN and share its login.
_LOGINS: dict[tuple[str, str, str | None], tuple[Any, int]] = {}
_LOCKS: dict[str, threading.RLock] = {}
_LIBS_LOCK = threading.Lock()


def _lock(module: str) -> threading.RLock:
    with _LIBS_LOCK:
        return _LOCKS.setdefault(module, threading.RLock())


def _library(module: str) -> Any:
    """The PKCS#11 library at ``module``, initialized in this process (call with its lock)."""
    import pkcs11

    found = _LIBS.get(module)
    pid = os.getpid()
    if found is not None:
        lib, loaded_in = found
        if loaded_in != pid:  # forked since: the parent's state must not be used
            try:
                lib.reinitialize()
            except pkcs11.PKCS11Error:
                lib.initialize()
            _LIBS[module] = (lib, pid)
        return lib
    if not Path(module).is_file():
        raise SigningKeyError(f"pkcs11 URI: module-path {module}: no such file")
    try:
        lib = pkcs11.lib(module)
    except pkcs11.PKCS11Error as exc:
        raise SigningKeyError(f"pkcs11 URI: cannot load {module}: {exc}") from None
    _LIBS[module] = (lib, pid)
    return lib


def _token(uri: Pkcs11Uri) -> Any:
    """The one token the URI names (call with the library's lock)."""
    import pkcs11

    lib = _library(uri.module)
    serial = None if uri.serial is None else uri.serial.encode("utf-8")
    try:
        tokens = [
            t
            for t in lib.get_tokens(token_label=uri.token, token_serial=serial)
            if uri.manufacturer in (None, t.manufacturer_id) and uri.model in (None, t.model)
        ]
    except pkcs11.PKCS11Error as exc:
        raise SigningKeyError(f"pkcs11: cannot list the tokens of {uri.module}: {exc!r}") from None
    if not tokens:
        raise SigningKeyError(f"pkcs11: no token labelled {uri.token!r} in {uri.module}")
    if len(tokens) > 1:
        raise SigningKeyError(
            f"pkcs11: {len(tokens)} tokens are labelled {uri.token!r}; add serial= to the URI"
        )
    return tokens[0]


def _login_key(uri: Pkcs11Uri) -> tuple[str, str, str | None]:
    return (uri.module, uri.token, uri.serial)


def _logged_in(uri: Pkcs11Uri) -> Any:
    """This process's logged-in session on the URI's token, opened with its PIN the first
    time (call with the library's lock)."""
    import pkcs11

    found = _LOGINS.get(_login_key(uri))
    if found is not None and found[1] == os.getpid():
        return found[0]
    token = _token(uri)
    try:
        session = token.open(user_pin=uri.pin())
    except pkcs11.UserAlreadyLoggedIn:  # logged in by a session opened outside this module
        session = token.open()
    except pkcs11.PinIncorrect:
        raise SigningKeyError(f"pkcs11: token {uri.token!r} refused the PIN") from None
    except pkcs11.PinLocked:
        raise SigningKeyError(f"pkcs11: token {uri.token!r}: the PIN is locked") from None
    except pkcs11.PKCS11Error as exc:
        raise SigningKeyError(f"pkcs11: cannot open token {uri.token!r}: {exc!r}") from None
    _LOGINS[_login_key(uri)] = (session, os.getpid())
    return session


def _forget_login(uri: Pkcs11Uri) -> None:
    """Close this process's logged-in session on the URI's token (after an error: the next
    use opens and logs in again)."""
    found = _LOGINS.pop(_login_key(uri), None)
    if found is not None and found[1] == os.getpid():
        with contextlib.suppress(Exception):  # a session the token dropped already
            found[0].close()


@contextlib.contextmanager
def token_session(uri: Pkcs11Uri, rw: bool = False) -> Iterator[Any]:
    """A session on ``uri``'s token, sharing this process's login (a ``pkcs11.Session``;
    closed afterwards, which does not log the process out)."""
    with _lock(uri.module):
        session = _logged_in(uri).token.open(rw=rw)
        try:
            yield session
        finally:
            session.close()


def _one_key(session: Any, uri: Pkcs11Uri, cls: Any) -> Any:
    import pkcs11
    from pkcs11 import Attribute, KeyType

    found = list(session.get_objects({Attribute.CLASS: cls, **uri.key_attrs()}))
    kind = "private" if cls == pkcs11.ObjectClass.PRIVATE_KEY else "public"
    if not found:
        raise SigningKeyError(f"pkcs11: no {kind} key {uri.describe()}")
    if len(found) > 1:
        raise SigningKeyError(
            f"pkcs11: {len(found)} {kind} keys {uri.describe()}; add id= to the URI"
        )
    key = found[0]
    if key.key_type != KeyType.EC_EDWARDS:
        raise SigningKeyError(f"pkcs11: the {kind} key {uri.describe()} is not an EdDSA key")
    return key


def _public_of(session: Any, uri: Pkcs11Uri) -> Ed25519PublicKey:
    from pkcs11 import Attribute, ObjectClass

    point = bytes(_one_key(session, uri, ObjectClass.PUBLIC_KEY)[Attribute.EC_POINT])
    # PKCS#11 3.0 gives the point as a DER OCTET STRING; some tokens give the 32 bytes bare.
    raw = point[2:] if len(point) == 34 and point[:2] == b"\x04\x20" else point
    if len(raw) != 32:
        raise SigningKeyError(f"pkcs11: the key {uri.describe()} is not an Ed25519 key")
    return Ed25519PublicKey.from_public_bytes(raw)


class Pkcs11Signer(Signer):
    """An Ed25519 private key in a PKCS#11 token (``uri``), which signs checkpoints there."""

    def __init__(self, uri: Pkcs11Uri, public: Ed25519PublicKey) -> None:
        super().__init__(public)
        self.uri = uri
        # The private key's handle, and the login session it was found in: looked up again
        # only in a new session (a search on a session the token dropped fails noisily inside
        # python-pkcs11; a signature fails cleanly).
        self._key: Any = None
        self._key_session: Any = None

    @classmethod
    def open(cls, uri: Pkcs11Uri) -> Pkcs11Signer:
        """The key ``uri`` names, once the token has signed with it and its public key
        checked the signature (the PIN, the pair and the mechanism proven before serving);
        SigningKeyError saying what is wrong otherwise."""
        import pkcs11

        uri.pin()  # its file readable, even when this process is logged in already
        with _lock(uri.module):
            session = _logged_in(uri)
            try:
                private = _one_key(session, uri, pkcs11.ObjectClass.PRIVATE_KEY)
                public = _public_of(session, uri)
            except pkcs11.PKCS11Error as exc:
                _forget_login(uri)
                raise SigningKeyError(f"pkcs11: cannot read the key: {exc!r}") from None
        signer = cls(uri, public)
        signer._key, signer._key_session = private, session
        signature = signer.signature(_PROBE)
        try:
            public.verify(signature, _PROBE)
        except InvalidSignature:
            raise SigningKeyError(
                f"pkcs11: the private and public keys {uri.describe()} are not one pair"
            ) from None
        return signer

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # Settings cross to the writer process pickled: the token is opened there only if the
        # key signs there (it does not), never through a session of this process.
        return _pkcs11_signer, (self.uri.text, self.public_key.public_bytes_raw())

    def signature(self, data: bytes) -> bytes:
        """The token's Ed25519 signature of ``data``; tried once more on a new login session
        if it fails (a network HSM restarted, a session dropped); SigningKeyError if the token
        cannot sign."""
        import pkcs11

        uri = self.uri
        with _lock(uri.module):
            for _ in range(2):
                try:
                    session = _logged_in(uri)
                    if self._key_session is not session:
                        self._key = _one_key(session, uri, pkcs11.ObjectClass.PRIVATE_KEY)
                        self._key_session = session
                    return bytes(self._key.sign(data, mechanism=pkcs11.Mechanism.EDDSA))
                except SigningKeyError as exc:
                    problem = exc
                except pkcs11.PKCS11Error as exc:
                    problem = SigningKeyError(
                        f"pkcs11: the token could not sign with the key {uri.describe()}: {exc!r}"
                    )
                _forget_login(uri)
        raise problem

    def describe(self) -> str:
        """Where the key is: the URI, without a PIN."""
        return self.uri.redacted()


def _pkcs11_signer(text: str, raw_public: bytes) -> Pkcs11Signer:
    return Pkcs11Signer(Pkcs11Uri.parse(text), Ed25519PublicKey.from_public_bytes(raw_public))


def generate_pkcs11_key(uri: Pkcs11Uri) -> Pkcs11Signer:
    """Generate an Ed25519 key pair in the token ``uri`` names, under its ``object`` label
    (and ``id``, when given): the private key sensitive, never extractable, for signing only.
    Refused if a key of that label or id is there already."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass

    if uri.label is None:
        raise SigningKeyError("pkcs11 URI: object=LABEL names the new key")
    with token_session(uri, rw=True) as session:
        for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            if list(session.get_objects({Attribute.CLASS: cls, **uri.key_attrs()})):
                raise SigningKeyError(
                    f"pkcs11: a key {uri.describe()} exists already; choose another label"
                )
        common = {Attribute.TOKEN: True, Attribute.LABEL: uri.label}
        if uri.key_id is not None:
            common[Attribute.ID] = uri.key_id
        try:
            params = session.create_domain_parameters(
                KeyType.EC_EDWARDS, {Attribute.EC_PARAMS: _ED25519_PARAMS}, local=True
            )
            params.generate_keypair(
                mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN,
                store=True,
                public_template={**common, Attribute.VERIFY: True},
                private_template={
                    **common,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                    Attribute.SIGN: True,
                    Attribute.DECRYPT: False,
                    Attribute.UNWRAP: False,
                    Attribute.DERIVE: False,
                },
            )
        except pkcs11.PKCS11Error as exc:
            raise SigningKeyError(
                f"pkcs11: token {uri.token!r} could not generate an Ed25519 key: {exc!r}"
            ) from None
    return Pkcs11Signer.open(uri)
