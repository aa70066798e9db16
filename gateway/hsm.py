"""PKCS#11 tokens (hardware security modules): the URIs naming their keys, the libraries that
reach them and this process's login to each.

A key in a token is named by a PKCS#11 URI (RFC 7512), for instance::

    pkcs11:token=tongban;object=audit-signing?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/tongban/hsm.pin

Two kinds of key are used so: the audit signing key (an Ed25519 private key,
:mod:`gateway.audit_pkcs11`) and the key wrapping the store's sealing keys (an AES key,
:mod:`gateway.store.key_wrapping`).

The URI's attributes understood (values percent-encoded as RFC 7512 says): ``token``
(its label; required), ``serial``, ``manufacturer``, ``model`` (narrowing the token),
``object`` (the key's label) and/or ``id`` (its CKA_ID bytes), ``type`` (when given, the
kind of key its use needs: ``private`` or ``secret-key``); in the query ``module-path``
(the PKCS#11 library; required) and the user PIN, from ``pin-source`` (a file only its owner
may read, or a ``file:`` URI) or ``pin-value``. Any other attribute is refused rather than
ignored: a URI meant to narrow the choice of key must not silently match a wider one.

PKCS#11 libraries are loaded once per process (a second ``C_Initialize`` is an error) and
initialized again in a process forked after it (``tongban serve --workers``: the standard says
a child must not use its parent's state). Calls into one library are serialized by a lock
(:func:`lock`), since it is initialized without the locking callbacks. A login belongs to the
process, so each token has one logged-in session (:func:`logged_in`), kept open; after an
error, :func:`forget_login` closes it and the next use logs in again.
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

__all__ = [
    "SCHEME",
    "Pkcs11Uri",
    "TokenError",
    "errors_as",
    "forget_login",
    "lock",
    "logged_in",
    "one_object",
    "token_session",
]

#: How a PKCS#11 URI begins (RFC 7512).
SCHEME = "pkcs11:"


class TokenError(ValueError):
    """A token, or a key in it, that cannot be used (the message says why; never a PIN)."""


@contextlib.contextmanager
def errors_as(error: type[ValueError]) -> Iterator[None]:
    """A TokenError raised inside as ``error`` (with its message), the error its use's
    callers expect: SigningKeyError for the audit signing key, WrappingError for the key
    that wraps the store's keys."""
    try:
        yield
    except TokenError as exc:
        raise error(str(exc)) from None


_PATH_ATTRS = {"token", "serial", "manufacturer", "model", "object", "id", "type"}
_QUERY_ATTRS = {"module-path", "pin-source", "pin-value"}
#: The object types RFC 7512's ``type`` names (each use then requires its own).
_TYPES = ("public", "private", "cert", "secret-key", "data")


@dataclass(frozen=True, slots=True)
class Pkcs11Uri:
    """A PKCS#11 URI (RFC 7512) naming a key in a token: its ``text`` and its attributes,
    decoded (:meth:`parse`)."""

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
    type: str | None = None

    @classmethod
    def parse(cls, text: str) -> Pkcs11Uri:
        """``text`` read, or TokenError naming the attribute that is wrong."""
        if not text.startswith(SCHEME):
            raise TokenError(f"not a PKCS#11 URI (it begins {SCHEME}): {text!r}")
        path, _, query = text[len(SCHEME) :].partition("?")
        attrs = _attributes(path, ";", _PATH_ATTRS, "path")
        attrs.update(_attributes(query, "&", _QUERY_ATTRS, "query"))
        given = {k: _text(k, v) for k, v in attrs.items() if k != "id"}
        if "token" not in given:
            raise TokenError("pkcs11 URI: token=LABEL is required")
        if "object" not in given and "id" not in attrs:
            raise TokenError("pkcs11 URI: object=LABEL or id=BYTES names the key")
        if given.get("type", "private") not in _TYPES:  # an RFC 7512 type; each use checks its
            raise TokenError(f"pkcs11 URI: type is one of {', '.join(_TYPES)}")
        if "module-path" not in given:
            raise TokenError("pkcs11 URI: module-path=/path/to/the/PKCS#11/library.so is required")
        if "pin-source" in given and "pin-value" in given:
            raise TokenError("pkcs11 URI: give pin-source or pin-value, not both")
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
            type=given.get("type"),
        )

    def require_type(self, wanted: str, use: str) -> None:
        """TokenError unless the URI names no ``type`` or ``wanted`` (``use`` says what for)."""
        if self.type not in (None, wanted):
            raise TokenError(f"pkcs11 URI: type must be {wanted} ({use})")

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
        from .store.sealing import PrivateFileError, read_private_file  # sealing uses this module

        source = self.pin_source.removeprefix("file://").removeprefix("file:")
        try:
            data = read_private_file(Path(source))
        except PrivateFileError as exc:
            raise TokenError(f"pkcs11 URI: pin-source {exc}") from None
        except OSError as exc:
            raise TokenError(
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
            raise TokenError(f"pkcs11 URI: {item!r} in the {where} is not NAME=VALUE")
        if name not in known:
            raise TokenError(
                f"pkcs11 URI: attribute {name!r} is not understood here "
                f"(the {where} takes {', '.join(sorted(known))})"
            )
        if name in found:
            raise TokenError(f"pkcs11 URI: attribute {name!r} is given twice")
        found[name] = unquote_to_bytes(value)
    return found


def _text(name: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise TokenError(f"pkcs11 URI: {name} is not UTF-8 once decoded") from None


# -- the libraries and the logged-in sessions: one each per process ---------------------------

_LIBS: dict[str, tuple[Any, int]] = {}
# A PKCS#11 login belongs to the process, not to a session: a second C_Login is refused, and
# closing any logged-in session logs every session out. So one session per token logs in and
# stays open; the others (a key generated) are opened without the PIN and share its login.
_LOGINS: dict[tuple[str, str, str | None], tuple[Any, int]] = {}
_LOCKS: dict[str, threading.RLock] = {}
_LIBS_LOCK = threading.Lock()


def lock(module: str) -> threading.RLock:
    with _LIBS_LOCK:
        return _LOCKS.setdefault(module, threading.RLock())


def library(module: str) -> Any:
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
        raise TokenError(f"pkcs11 URI: module-path {module}: no such file")
    try:
        lib = pkcs11.lib(module)
    except pkcs11.PKCS11Error as exc:
        raise TokenError(f"pkcs11 URI: cannot load {module}: {exc}") from None
    _LIBS[module] = (lib, pid)
    return lib


def _token(uri: Pkcs11Uri) -> Any:
    """The one token the URI names (call with the library's lock)."""
    import pkcs11

    lib = library(uri.module)
    serial = None if uri.serial is None else uri.serial.encode("utf-8")
    try:
        tokens = [
            t
            for t in lib.get_tokens(token_label=uri.token, token_serial=serial)
            if uri.manufacturer in (None, t.manufacturer_id) and uri.model in (None, t.model)
        ]
    except pkcs11.PKCS11Error as exc:
        raise TokenError(f"pkcs11: cannot list the tokens of {uri.module}: {exc!r}") from None
    if not tokens:
        raise TokenError(f"pkcs11: no token labelled {uri.token!r} in {uri.module}")
    if len(tokens) > 1:
        raise TokenError(
            f"pkcs11: {len(tokens)} tokens are labelled {uri.token!r}; add serial= to the URI"
        )
    return tokens[0]


def _login_key(uri: Pkcs11Uri) -> tuple[str, str, str | None]:
    return (uri.module, uri.token, uri.serial)


def logged_in(uri: Pkcs11Uri) -> Any:
    """This process's logged-in session on the URI's token, opened with its PIN the first
    time (call with the library's lock)."""
    import pkcs11

    found = _LOGINS.get(_login_key(uri))
    if found is not None and found[1] == os.getpid():
        if _alive(found[0]):
            return found[0]
        forget_login(uri)
    token = _token(uri)
    try:
        session = token.open(user_pin=uri.pin())
    except pkcs11.UserAlreadyLoggedIn:  # logged in by a session opened outside this module
        session = token.open()
    except pkcs11.PinIncorrect:
        raise TokenError(f"pkcs11: token {uri.token!r} refused the PIN") from None
    except pkcs11.PinLocked:
        raise TokenError(f"pkcs11: token {uri.token!r}: the PIN is locked") from None
    except pkcs11.PKCS11Error as exc:
        raise TokenError(f"pkcs11: cannot open token {uri.token!r}: {exc!r}") from None
    _LOGINS[_login_key(uri)] = (session, os.getpid())
    return session


def _alive(session: Any) -> bool:
    """False if the token dropped ``session`` (a network HSM restarted, a session closed).

    Asked with a cheap call that fails cleanly (C_GenerateRandom): a search for objects on a
    dropped session raises, and python-pkcs11 then raises again from the search's
    ``__del__``, where nothing can catch it. A token without a random number generator
    answers that it has none: alive."""
    import pkcs11

    try:
        session.generate_random(64)
    except (pkcs11.RandomNoRNG, pkcs11.FunctionNotSupported):
        return True
    except pkcs11.PKCS11Error:
        return False
    return True


def forget_login(uri: Pkcs11Uri) -> None:
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
    with lock(uri.module):
        session = logged_in(uri).token.open(rw=rw)
        try:
            yield session
        finally:
            session.close()


def one_object(session: Any, uri: Pkcs11Uri, cls: Any, kind: str) -> Any:
    """The one object of class ``cls`` the URI names in ``session``'s token (``kind`` names it
    in messages); TokenError if there is none, or more than one."""
    from pkcs11 import Attribute

    found = list(session.get_objects({Attribute.CLASS: cls, **uri.key_attrs()}))
    if not found:
        raise TokenError(f"pkcs11: no {kind} key {uri.describe()}")
    if len(found) > 1:
        raise TokenError(f"pkcs11: {len(found)} {kind} keys {uri.describe()}; add id= to the URI")
    return found[0]
