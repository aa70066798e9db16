"""SM2 signatures (GB/T 32918.2, with SM3: GB/T 32905) by the system's OpenSSL 3.

China's commercial cryptography rules (GM/T 0054, the 密评 assessment) ask government systems
to sign with SM2. The ``cryptography`` library offers no SM2, and the pure-Python SM2 packages
on PyPI are unaudited (one draws its nonces from ``random``). OpenSSL 3's libcrypto has SM2,
SM3 and the PEM and DER formats for their keys, and is on every machine that has the
``openssl`` command; this module calls it through :mod:`ctypes`, the way SM2(7) of OpenSSL's
manual does it:

- a signature is SM2 with SM3 over ``Z || message``, where ``Z`` hashes the signer's
  distinguishing identifier, ``1234567812345678`` (GB/T 35276's default), the curve and the
  public key; it is DER (``SEQUENCE { r, s }``, 70-72 bytes), as the ``openssl`` command
  writes it: ``openssl pkeyutl -verify -rawin -digest sm3 -pkeyopt
  distid:1234567812345678`` checks one;
- private keys are PKCS#8 PEM and public keys SubjectPublicKeyInfo PEM (``id-ecPublicKey`` on
  the curve ``SM2``, 1.2.156.10197.1.301), as ``openssl genpkey -algorithm SM2`` writes them.

Key objects mirror ``cryptography``'s (``sign``, ``verify`` raising
:class:`~cryptography.exceptions.InvalidSignature`, ``public_key``), so code that verifies
does not care which algorithm a key is. OpenSSL is thread-safe; every object made here is
freed before the call returns, except the key itself, freed with its Python object.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from typing import Any

from cryptography.exceptions import InvalidSignature

__all__ = [
    "DEFAULT_ID",
    "Sm2Error",
    "Sm2PrivateKey",
    "Sm2PublicKey",
    "available",
]

#: The signer's distinguishing identifier when none is agreed (GB/T 35276-2017, 5.5).
DEFAULT_ID = b"1234567812345678"

_BIO_CTRL_INFO = 3  # BIO_get_mem_data() is BIO_ctrl(bio, BIO_CTRL_INFO, 0, &data)


class Sm2Error(ValueError):
    """SM2 is not available here, or a key or signature OpenSSL refused (the message says why)."""


class _Lib:
    """libcrypto's functions this module calls, with their C types."""

    def __init__(self) -> None:
        # OpenSSL 3's soname first: find_library may name an older one installed beside it.
        lib = None
        for name in filter(None, ("libcrypto.so.3", ctypes.util.find_library("crypto"))):
            with contextlib.suppress(OSError):
                lib = ctypes.CDLL(name)
                break
        if lib is None:
            raise Sm2Error("SM2 needs OpenSSL 3's libcrypto, which is not installed")
        lib.OpenSSL_version_num.restype = ctypes.c_ulong
        if lib.OpenSSL_version_num() < 0x30000000:
            raise Sm2Error(f"SM2 needs OpenSSL 3; {name} is older")
        p, c, i, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t
        for fn, res, args in (
            ("ERR_get_error", ctypes.c_ulong, []),
            ("ERR_error_string_n", None, [ctypes.c_ulong, c, sz]),
            ("ERR_clear_error", None, []),
            ("BIO_s_mem", p, []),
            ("BIO_new", p, [p]),
            ("BIO_new_mem_buf", p, [c, i]),
            ("BIO_ctrl", ctypes.c_long, [p, i, ctypes.c_long, p]),
            ("BIO_free", i, [p]),
            ("PEM_read_bio_PrivateKey", p, [p, p, p, p]),
            ("PEM_read_bio_PUBKEY", p, [p, p, p, p]),
            ("PEM_write_bio_PKCS8PrivateKey", i, [p, p, p, p, i, p, p]),
            ("PEM_write_bio_PUBKEY", i, [p, p]),
            ("d2i_PUBKEY", p, [p, ctypes.POINTER(c), ctypes.c_long]),
            ("i2d_PUBKEY", i, [p, ctypes.POINTER(ctypes.c_void_p)]),
            ("CRYPTO_free", None, [p, c, i]),
            ("EVP_PKEY_is_a", i, [p, c]),
            ("EVP_PKEY_free", None, [p]),
            ("EVP_PKEY_up_ref", i, [p]),
            ("EVP_PKEY_get_bn_param", i, [p, c, ctypes.POINTER(ctypes.c_void_p)]),
            ("BN_bn2binpad", i, [p, c, i]),
            ("BN_free", None, [p]),
            ("EVP_PKEY_CTX_new_from_name", p, [p, c, p]),
            ("EVP_PKEY_CTX_new_from_pkey", p, [p, p, p]),
            ("EVP_PKEY_CTX_free", None, [p]),
            ("EVP_PKEY_CTX_set1_id", i, [p, c, i]),
            ("EVP_PKEY_keygen_init", i, [p]),
            ("EVP_PKEY_generate", i, [p, ctypes.POINTER(ctypes.c_void_p)]),
            ("EVP_MD_CTX_new", p, []),
            ("EVP_MD_CTX_free", None, [p]),
            ("EVP_MD_CTX_set_pkey_ctx", None, [p, p]),
            ("EVP_sm3", p, []),
            ("EVP_DigestSignInit", i, [p, p, p, p, p]),
            ("EVP_DigestSign", i, [p, c, ctypes.POINTER(sz), c, sz]),
            ("EVP_DigestVerifyInit", i, [p, p, p, p, p]),
            ("EVP_DigestVerify", i, [p, c, sz, c, sz]),
        ):
            f = getattr(lib, fn)
            f.restype, f.argtypes = res, args
        self.c = lib

    def error(self, what: str) -> Sm2Error:
        """Sm2Error saying ``what`` failed, with OpenSSL's first queued reason (the queue is
        cleared: it is per thread, and the next call must not read this one's)."""
        code = self.c.ERR_get_error()
        self.c.ERR_clear_error()
        if not code:
            return Sm2Error(what)
        buf = ctypes.create_string_buffer(256)
        self.c.ERR_error_string_n(code, buf, len(buf))
        return Sm2Error(f"{what}: {buf.value.decode(errors='replace')}")

    def bio_bytes(self, write: Any) -> bytes:
        """What ``write(bio)`` writes to a memory BIO."""
        bio = self.c.BIO_new(self.c.BIO_s_mem())
        if not bio:
            raise self.error("out of memory")
        try:
            if write(bio) != 1:
                raise self.error("cannot encode the key")
            data = ctypes.c_void_p()
            n = self.c.BIO_ctrl(bio, _BIO_CTRL_INFO, 0, ctypes.byref(data))
            return ctypes.string_at(data, n)
        finally:
            self.c.BIO_free(bio)

    def read_pem(self, data: bytes, private: bool) -> int:
        """The EVP_PKEY of a PEM key (the caller owns it), which must be SM2."""
        bio = self.c.BIO_new_mem_buf(data, len(data))
        if not bio:
            raise self.error("out of memory")
        try:
            read = self.c.PEM_read_bio_PrivateKey if private else self.c.PEM_read_bio_PUBKEY
            pkey = read(bio, None, None, None)
        finally:
            self.c.BIO_free(bio)
        if not pkey:
            raise self.error(f"not a PEM {'private' if private else 'public'} key")
        return self.sm2_only(pkey)

    def sm2_only(self, pkey: int) -> int:
        if self.c.EVP_PKEY_is_a(pkey, b"SM2") != 1:
            self.c.EVP_PKEY_free(pkey)
            raise Sm2Error("not an SM2 key")
        return pkey

    def digest_ctx(self, pkey: int, sign: bool) -> tuple[int, int]:
        """An EVP_MD_CTX set up for SM2 with SM3 and :data:`DEFAULT_ID`, and its key context
        (the caller frees both, the MD context first)."""
        pctx = self.c.EVP_PKEY_CTX_new_from_pkey(None, pkey, None)
        mctx = self.c.EVP_MD_CTX_new()
        if not pctx or not mctx:
            self.c.EVP_MD_CTX_free(mctx)
            self.c.EVP_PKEY_CTX_free(pctx)
            raise self.error("out of memory")
        init = self.c.EVP_DigestSignInit if sign else self.c.EVP_DigestVerifyInit
        self.c.EVP_MD_CTX_set_pkey_ctx(mctx, pctx)
        if (
            self.c.EVP_PKEY_CTX_set1_id(pctx, DEFAULT_ID, len(DEFAULT_ID)) != 1
            or init(mctx, None, self.c.EVP_sm3(), None, pkey) != 1
        ):
            self.c.EVP_MD_CTX_free(mctx)
            self.c.EVP_PKEY_CTX_free(pctx)
            raise self.error("cannot set up SM2 with SM3")
        return mctx, pctx


@functools.cache
def _lib() -> _Lib:
    return _Lib()


def available() -> str:
    """ "" when SM2 can be used here, else why not."""
    try:
        _lib()
    except (Sm2Error, OSError) as exc:
        return str(exc)
    return ""


class _Key:
    """An EVP_PKEY owned by this object."""

    def __init__(self, pkey: int) -> None:
        self._pkey = pkey
        self._free = _lib().c.EVP_PKEY_free  # held: at exit the module may be gone first

    def __del__(self) -> None:
        pkey = getattr(self, "_pkey", 0)
        if pkey:
            self._pkey = 0
            self._free(pkey)


class Sm2PublicKey(_Key):
    """An SM2 public key: verifies signatures."""

    @classmethod
    def from_pem(cls, data: bytes) -> Sm2PublicKey:
        """A SubjectPublicKeyInfo PEM (``-----BEGIN PUBLIC KEY-----``); Sm2Error otherwise."""
        return cls(_lib().read_pem(data, private=False))

    @classmethod
    def from_der(cls, data: bytes) -> Sm2PublicKey:
        """A SubjectPublicKeyInfo in DER (:meth:`der`); Sm2Error otherwise."""
        lib = _lib()
        buf = ctypes.c_char_p(data)
        pkey = lib.c.d2i_PUBKEY(None, ctypes.byref(buf), len(data))
        if not pkey:
            raise lib.error("not a DER public key")
        return cls(lib.sm2_only(pkey))

    def der(self) -> bytes:
        """The SubjectPublicKeyInfo, DER."""
        lib = _lib()
        out = ctypes.c_void_p()
        n = lib.c.i2d_PUBKEY(self._pkey, ctypes.byref(out))
        if n <= 0:
            raise lib.error("cannot encode the key")
        try:
            return ctypes.string_at(out, n)
        finally:
            lib.c.CRYPTO_free(out, b"sm2.py", 0)

    def pem(self) -> bytes:
        """The SubjectPublicKeyInfo, PEM (what ``openssl pkey -pubout`` writes)."""
        lib = _lib()
        return lib.bio_bytes(lambda bio: lib.c.PEM_write_bio_PUBKEY(bio, self._pkey))

    def point(self) -> bytes:
        """The public point, uncompressed (65 bytes: ``04 || x || y``), however the key's file
        encoded it."""
        lib = _lib()
        out = b"\x04"
        for coordinate in (b"qx", b"qy"):
            bn = ctypes.c_void_p()
            if lib.c.EVP_PKEY_get_bn_param(self._pkey, coordinate, ctypes.byref(bn)) != 1:
                raise lib.error("cannot read the public point")
            try:
                buf = ctypes.create_string_buffer(32)
                if lib.c.BN_bn2binpad(bn, buf, 32) != 32:
                    raise lib.error("cannot read the public point")
                out += buf.raw
            finally:
                lib.c.BN_free(bn)
        return out

    def verify(self, signature: bytes, data: bytes) -> None:
        """Nothing when ``signature`` (DER) is this key's SM2 signature of ``data``; raises
        :class:`~cryptography.exceptions.InvalidSignature` otherwise."""
        lib = _lib()
        mctx, pctx = lib.digest_ctx(self._pkey, sign=False)
        try:
            ok = lib.c.EVP_DigestVerify(mctx, signature, len(signature), data, len(data))
        finally:
            lib.c.EVP_MD_CTX_free(mctx)
            lib.c.EVP_PKEY_CTX_free(pctx)
        if ok != 1:
            lib.c.ERR_clear_error()  # a malformed signature queues a reason; it is just invalid
            raise InvalidSignature()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sm2PublicKey) and other.point() == self.point()

    def __hash__(self) -> int:
        return hash(self.point())

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return Sm2PublicKey.from_der, (self.der(),)


class Sm2PrivateKey(_Key):
    """An SM2 private key: signs."""

    @classmethod
    def generate(cls) -> Sm2PrivateKey:
        """A new key, from OpenSSL's random generator."""
        lib = _lib()
        ctx = lib.c.EVP_PKEY_CTX_new_from_name(None, b"SM2", None)
        if not ctx:
            raise lib.error("this OpenSSL has no SM2")
        try:
            pkey = ctypes.c_void_p()
            if (
                lib.c.EVP_PKEY_keygen_init(ctx) != 1
                or lib.c.EVP_PKEY_generate(ctx, ctypes.byref(pkey)) != 1
            ):
                raise lib.error("cannot generate an SM2 key")
        finally:
            lib.c.EVP_PKEY_CTX_free(ctx)
        assert pkey.value is not None
        return cls(pkey.value)

    @classmethod
    def from_pem(cls, data: bytes) -> Sm2PrivateKey:
        """An unencrypted PEM private key (PKCS#8, or SEC 1 ``EC PRIVATE KEY``); Sm2Error
        otherwise."""
        return cls(_lib().read_pem(data, private=True))

    def pem(self) -> bytes:
        """The key as unencrypted PKCS#8 PEM (what ``openssl genpkey -algorithm SM2``
        writes)."""
        lib = _lib()
        return lib.bio_bytes(
            lambda bio: lib.c.PEM_write_bio_PKCS8PrivateKey(
                bio, self._pkey, None, None, 0, None, None
            )
        )

    def public_key(self) -> Sm2PublicKey:
        """The public half."""
        lib = _lib()
        if lib.c.EVP_PKEY_up_ref(self._pkey) != 1:
            raise lib.error("cannot share the key")
        return Sm2PublicKey(self._pkey)

    def sign(self, data: bytes) -> bytes:
        """The SM2 signature of ``data`` (with SM3 and :data:`DEFAULT_ID`), DER."""
        lib = _lib()
        mctx, pctx = lib.digest_ctx(self._pkey, sign=True)
        try:
            n = ctypes.c_size_t(0)
            if lib.c.EVP_DigestSign(mctx, None, ctypes.byref(n), data, len(data)) != 1:
                raise lib.error("cannot sign")
            out = ctypes.create_string_buffer(n.value)
            if lib.c.EVP_DigestSign(mctx, out, ctypes.byref(n), data, len(data)) != 1:
                raise lib.error("cannot sign")
            return out.raw[: n.value]
        finally:
            lib.c.EVP_MD_CTX_free(mctx)
            lib.c.EVP_PKEY_CTX_free(pctx)

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return Sm2PrivateKey.from_pem, (self.pem(),)
