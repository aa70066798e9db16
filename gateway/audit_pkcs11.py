"""The audit signing key held in a hardware security module, through PKCS#11.

``audit.signing_key`` is a file path or a PKCS#11 URI (RFC 7512), for instance::

    pkcs11:token=tongban;object=audit-signing?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=/etc/tongban/hsm.pin

The private key never leaves the token: the gateway asks the token to sign each checkpoint
(``CKM_EDDSA``) and reads only the public half (``CKA_EC_POINT``), whose id is worked out as for
a key in a file, so checkpoints, ``trusted_keys``, the peers' ``audit_public_keys`` and
``tongban audit verify`` do not tell the two apart. ``tongban audit keys new --pkcs11 URI``
generates the key pair in the token: sensitive, not extractable.

``tongban audit keys rotate --pkcs11 URI`` gives the URI's label to a new key pair and keeps
the old one under ``LABEL.retired-KEYID``: serving gateways look, before each checkpoint, which
key the label names (one search), and sign with the new one from then on, as they do when a
key file is replaced. Every signature is checked with the signer's public key before it is
used, so a key that changed under a signer is never taken for it.

The URI is read by :mod:`gateway.hsm` (its attributes, the library, the login); its
``type``, when given, must be ``private``. A failed signature is tried once more on a new
login session (a network HSM restarted, a token re-inserted), then reported as
:class:`SigningKeyError`.
"""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from .audit_signing import Signer, SigningKeyError, key_id
from .hsm import (
    Pkcs11Uri,
    TokenError,
    errors_as,
    forget_login,
    lock,
    logged_in,
    one_object,
    token_session,
)

__all__ = ["Pkcs11Signer", "generate_pkcs11_key", "rotate_pkcs11_key", "signing_uri"]

#: DER of the object identifier id-Ed25519 (1.3.101.112, RFC 8410): the curve's CKA_EC_PARAMS.
_ED25519_PARAMS = bytes.fromhex("06032b6570")
#: The text the token signs when a key is loaded, checked with the key's public half.
_PROBE = b"tongban-audit-signing-key-check\n"


def signing_uri(text: str) -> Pkcs11Uri:
    """``text`` read as the URI of a signing key; SigningKeyError naming what is wrong."""
    with errors_as(SigningKeyError):
        uri = Pkcs11Uri.parse(text)
        uri.require_type("private", "the key that signs")
    return uri


def _one_key(session: Any, uri: Pkcs11Uri, cls: Any) -> Any:
    import pkcs11
    from pkcs11 import KeyType

    kind = "private" if cls == pkcs11.ObjectClass.PRIVATE_KEY else "public"
    with errors_as(SigningKeyError):
        key = one_object(session, uri, cls, kind)
    if key.key_type != KeyType.EC_EDWARDS:
        raise SigningKeyError(f"pkcs11: the {kind} key {uri.describe()} is not an EdDSA key")
    return key


def _public_of(session: Any, uri: Pkcs11Uri) -> Ed25519PublicKey:
    from pkcs11 import ObjectClass

    return _ed25519_public(_one_key(session, uri, ObjectClass.PUBLIC_KEY), uri)


def _ed25519_public(obj: Any, uri: Pkcs11Uri) -> Ed25519PublicKey:
    """The Ed25519 public key of the token's public key object ``obj``."""
    from pkcs11 import Attribute

    point = bytes(obj[Attribute.EC_POINT])
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
        # only in a new session (one search per session, not one per signature).
        self._key: Any = None
        self._key_session: Any = None

    @classmethod
    def open(cls, uri: Pkcs11Uri) -> Pkcs11Signer:
        """The key ``uri`` names, once the token has signed with it and its public key
        checked the signature (the PIN, the pair and the mechanism proven before serving);
        SigningKeyError saying what is wrong otherwise."""
        import pkcs11

        with errors_as(SigningKeyError), lock(uri.module):
            uri.pin()  # its file readable, even when this process is logged in already
            session = logged_in(uri)
            try:
                private = _one_key(session, uri, pkcs11.ObjectClass.PRIVATE_KEY)
                public = _public_of(session, uri)
            except pkcs11.PKCS11Error as exc:
                forget_login(uri)
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
        public = self.public_key
        assert isinstance(public, Ed25519PublicKey)  # a token's key is Ed25519 (_public_of)
        return _pkcs11_signer, (self.uri.text, public.public_bytes_raw())

    def signature(self, data: bytes) -> bytes:
        """The token's Ed25519 signature of ``data``; tried once more on a new login session
        if it fails (a network HSM restarted, a session dropped); SigningKeyError if the token
        cannot sign."""
        import pkcs11

        uri = self.uri
        with lock(uri.module):
            for _ in range(2):
                try:
                    session = logged_in(uri)
                    if self._key_session is not session:
                        self._key = _one_key(session, uri, pkcs11.ObjectClass.PRIVATE_KEY)
                        self._key_session = session
                    signature = bytes(self._key.sign(data, mechanism=pkcs11.Mechanism.EDDSA))
                    return self._checked(signature, data)
                except (SigningKeyError, TokenError) as exc:
                    problem = SigningKeyError(str(exc))
                except pkcs11.PKCS11Error as exc:
                    problem = SigningKeyError(
                        f"pkcs11: the token could not sign with the key {uri.describe()}: {exc!r}"
                    )
                forget_login(uri)
        raise problem

    def _checked(self, signature: bytes, data: bytes) -> bytes:
        """``signature``, once it verifies with this signer's public key: the key the label
        names may have been rotated since this signer was opened (``current_key_id``)."""
        try:
            self.public_key.verify(signature, data)
        except InvalidSignature:
            self._key = self._key_session = None
            raise SigningKeyError(
                f"pkcs11: the key {self.uri.describe()} is no longer key {self.key_id} "
                "(rotated?): nothing signed with it"
            ) from None
        return signature

    def current_key_id(self) -> str:
        """The id of the key the URI's label names in the token now (another than
        ``key_id`` once the key was rotated); SigningKeyError if the token cannot tell."""
        import pkcs11

        uri = self.uri
        with errors_as(SigningKeyError), lock(uri.module):
            try:
                return key_id(_public_of(logged_in(uri), uri))
            except pkcs11.PKCS11Error as exc:
                forget_login(uri)
                raise SigningKeyError(
                    f"pkcs11: cannot read the key {uri.describe()}: {exc!r}"
                ) from None

    def describe(self) -> str:
        """Where the key is: the URI, without a PIN."""
        return self.uri.redacted()


def _pkcs11_signer(text: str, raw_public: bytes) -> Pkcs11Signer:
    return Pkcs11Signer(Pkcs11Uri.parse(text), Ed25519PublicKey.from_public_bytes(raw_public))


def generate_pkcs11_key(uri: Pkcs11Uri) -> Pkcs11Signer:
    """Generate an Ed25519 key pair in the token ``uri`` names, under its ``object`` label
    (and ``id``, when given): the private key sensitive, never extractable, for signing only.
    Refused if a key of that label or id is there already."""
    from pkcs11 import Attribute, ObjectClass

    if uri.label is None:
        raise SigningKeyError("pkcs11 URI: object=LABEL names the new key")
    with errors_as(SigningKeyError), token_session(uri, rw=True) as session:
        for cls in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
            if list(session.get_objects({Attribute.CLASS: cls, **uri.key_attrs()})):
                raise SigningKeyError(
                    f"pkcs11: a key {uri.describe()} exists already; choose another label"
                )
        _generate(session, uri, uri.label)
    return Pkcs11Signer.open(uri)


def _generate(session: Any, uri: Pkcs11Uri, label: str) -> None:
    """A new Ed25519 key pair labelled ``label`` (with ``uri``'s ``id``, if any)."""
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism

    common = {Attribute.TOKEN: True, Attribute.LABEL: label}
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


def retired_label(label: str, kid: str) -> str:
    """The label a rotated key keeps in the token: ``LABEL.retired-KEYID``."""
    return f"{label}.retired-{kid}"


def rotate_pkcs11_key(uri: Pkcs11Uri) -> tuple[Ed25519PublicKey, Pkcs11Signer]:
    """Rotate the key pair ``uri`` names: the old pair is relabelled
    :func:`retired_label` (kept: it signed the checkpoints so far, and a backup of the store
    may need them verified), and a new pair is generated under the URI's label. Returns the
    old public key and the new signer. If the token cannot generate the new pair, the old
    one gets its label back; SigningKeyError saying what failed."""
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    if uri.label is None:
        raise SigningKeyError("pkcs11 URI: object=LABEL names the key to rotate")
    with errors_as(SigningKeyError), token_session(uri, rw=True) as session:
        private = _one_key(session, uri, ObjectClass.PRIVATE_KEY)
        public_obj = _one_key(session, uri, ObjectClass.PUBLIC_KEY)
        old = _ed25519_public(public_obj, uri)
        kid = key_id(old)
        moved = retired_label(uri.label, kid)
        if list(session.get_objects({Attribute.LABEL: moved})):
            raise SigningKeyError(f"pkcs11: the token holds objects labelled {moved!r} already")
        relabelled = []
        try:
            for obj in (private, public_obj):
                obj[Attribute.LABEL] = moved
                relabelled.append(obj)
            _generate(session, uri, uri.label)
        except (pkcs11.PKCS11Error, SigningKeyError) as exc:
            for obj in relabelled:
                obj[Attribute.LABEL] = uri.label
            if isinstance(exc, SigningKeyError):
                raise
            raise SigningKeyError(
                f"pkcs11: the token would not relabel the key {uri.describe()}: {exc!r} "
                "(its label may be read-only: CKA_MODIFIABLE false)"
            ) from None
    return old, Pkcs11Signer.open(uri)
