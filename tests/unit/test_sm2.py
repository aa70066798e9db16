"""SM2 with SM3 through OpenSSL 3 (gateway/sm2.py): signatures the ``openssl`` command and
gmssl (an SM2 written apart from OpenSSL) check, and check theirs; keys in the formats
``openssl genpkey -algorithm SM2`` reads and writes; anything else refused."""

from __future__ import annotations

import base64
import pickle
import subprocess
import threading
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from gmssl.sm2 import CryptSM2
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.sm2 import DEFAULT_ID, Sm2Error, Sm2PrivateKey, Sm2PublicKey, available

MESSAGE = "tongban-audit-checkpoint/1\n3\n{}\n1795808583160\n".format("ab" * 32).encode()


def openssl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["openssl", *args], capture_output=True, check=False)


def sm3_args(distid: bytes = DEFAULT_ID) -> list[str]:
    return ["-rawin", "-digest", "sm3", "-pkeyopt", f"distid:{distid.decode()}"]


def test_sm2_is_available_here() -> None:
    assert available() == ""


def test_a_signature_verifies_and_a_changed_message_or_signature_does_not() -> None:
    key = Sm2PrivateKey.generate()
    sig = key.sign(MESSAGE)
    assert 70 <= len(sig) <= 72
    assert sig[0] == 0x30  # DER SEQUENCE { r, s }
    public = key.public_key()
    public.verify(sig, MESSAGE)
    assert key.sign(MESSAGE) != sig  # a new nonce each time
    for data, signature in (
        (MESSAGE + b"x", sig),
        (MESSAGE, sig[:-1] + bytes([sig[-1] ^ 1])),
        (MESSAGE, b"\x30\x00"),
        (MESSAGE, b""),
        (MESSAGE, b"\x00" * 64),
    ):
        with pytest.raises(InvalidSignature):
            public.verify(signature, data)
    with pytest.raises(InvalidSignature):
        Sm2PrivateKey.generate().public_key().verify(sig, MESSAGE)  # another key


def test_openssl_checks_ours_and_we_check_openssls(tmp_path: Path) -> None:
    key = Sm2PrivateKey.generate()
    (tmp_path / "key.pem").write_bytes(key.pem())
    (tmp_path / "pub.pem").write_bytes(key.public_key().pem())
    (tmp_path / "msg").write_bytes(MESSAGE)
    (tmp_path / "sig").write_bytes(key.sign(MESSAGE))
    verify = [*("pkeyutl", "-verify", "-pubin", "-inkey", str(tmp_path / "pub.pem")), *sm3_args()]
    ok = openssl(*verify, "-in", str(tmp_path / "msg"), "-sigfile", str(tmp_path / "sig"))
    assert ok.returncode == 0, ok.stderr
    assert b"Signature Verified Successfully" in ok.stdout
    # Another distinguishing identifier is another Z: the signature does not hold under it.
    other = [*verify[:-1], "distid:ALICE123@YAHOO.COM"]
    bad = openssl(*other, "-in", str(tmp_path / "msg"), "-sigfile", str(tmp_path / "sig"))
    assert bad.returncode != 0
    signed = openssl(
        *("pkeyutl", "-sign", "-inkey", str(tmp_path / "key.pem"), *sm3_args()),
        *("-in", str(tmp_path / "msg"), "-out", str(tmp_path / "theirs")),
    )
    assert signed.returncode == 0, signed.stderr
    key.public_key().verify((tmp_path / "theirs").read_bytes(), MESSAGE)


def test_gmssl_checks_ours_and_we_check_gmssls() -> None:
    key = Sm2PrivateKey.generate()
    point = key.public_key().point()
    assert len(point) == 65
    assert point[0] == 4  # uncompressed
    gm = CryptSM2(private_key=None, public_key=point[1:].hex())
    r, s = decode_dss_signature(key.sign(MESSAGE))
    assert gm.verify_with_sm3(f"{r:064x}{s:064x}", MESSAGE)
    assert not gm.verify_with_sm3(f"{r:064x}{s:064x}", MESSAGE[:-1])
    # gmssl signing with a key made here: its private scalar from the PKCS#8 DER.
    scalar = _private_scalar(key)
    theirs = CryptSM2(private_key=scalar.hex(), public_key=point[1:].hex())
    sig = theirs.sign_with_sm3(MESSAGE)
    der = encode_dss_signature(int(sig[:64], 16), int(sig[64:], 16))
    key.public_key().verify(der, MESSAGE)


def _private_scalar(key: Sm2PrivateKey) -> bytes:
    """The 32-byte private key of the RFC 5915 ECPrivateKey inside the PKCS#8 PEM: after its
    version (INTEGER 1), an OCTET STRING of 32 bytes."""
    der = base64.b64decode(b"".join(key.pem().splitlines()[1:-1]))
    at = der.index(b"\x02\x01\x01\x04\x20") + 5
    return der[at : at + 32]


def test_keys_in_openssls_formats_are_read_and_written(tmp_path: Path) -> None:
    made = openssl("genpkey", "-algorithm", "SM2", "-out", str(tmp_path / "k.pem"))
    assert made.returncode == 0, made.stderr
    assert (
        openssl(
            "pkey", "-in", str(tmp_path / "k.pem"), "-pubout", "-out", str(tmp_path / "p.pem")
        ).returncode
        == 0
    )
    key = Sm2PrivateKey.from_pem((tmp_path / "k.pem").read_bytes())
    public = Sm2PublicKey.from_pem((tmp_path / "p.pem").read_bytes())
    assert public == key.public_key()
    assert public.pem() == (tmp_path / "p.pem").read_bytes()
    assert Sm2PublicKey.from_der(public.der()) == public
    # The point compressed in the file: the same key, the same point (and so the same key id).
    made = openssl("ec", "-in", str(tmp_path / "k.pem"), "-pubout", "-conv_form", "compressed")
    assert made.returncode == 0, made.stderr
    compressed = Sm2PublicKey.from_pem(made.stdout)
    assert len(compressed.der()) < len(public.der())
    assert compressed.point() == public.point()
    assert compressed == public
    # What we write, openssl reads as an SM2 key.
    (tmp_path / "ours.pem").write_bytes(Sm2PrivateKey.generate().pem())
    text = openssl("pkey", "-in", str(tmp_path / "ours.pem"), "-noout", "-text")
    assert text.returncode == 0, text.stderr
    assert b"ASN1 OID: SM2" in text.stdout


def test_keys_cross_to_another_process_pickled() -> None:
    key = Sm2PrivateKey.generate()
    copy = pickle.loads(pickle.dumps(key))
    key.public_key().verify(copy.sign(MESSAGE), MESSAGE)
    public = pickle.loads(pickle.dumps(key.public_key()))
    assert public == key.public_key()
    assert hash(public) == hash(key.public_key())


def test_other_keys_and_garbage_are_refused() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    pem = p256.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(Sm2Error, match="not an SM2 key"):
        Sm2PrivateKey.from_pem(pem)
    pub = p256.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(Sm2Error, match="not an SM2 key"):
        Sm2PublicKey.from_pem(pub)
    with pytest.raises(Sm2Error, match="not a PEM private key"):
        Sm2PrivateKey.from_pem(b"junk")
    with pytest.raises(Sm2Error, match="not a PEM public key"):
        Sm2PublicKey.from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(Sm2Error, match="not a DER public key"):
        Sm2PublicKey.from_der(b"\x30\x03\x02\x01\x00")
    # A refusal leaves nothing queued: the next good call is not reported as failed.
    key = Sm2PrivateKey.generate()
    key.public_key().verify(key.sign(MESSAGE), MESSAGE)


def test_threads_sign_and_verify_side_by_side() -> None:
    key = Sm2PrivateKey.generate()
    public = key.public_key()
    failures: list[BaseException] = []

    def work() -> None:
        try:
            for i in range(50):
                data = MESSAGE + str(i).encode()
                public.verify(key.sign(data), data)
                with pytest.raises(InvalidSignature):
                    public.verify(key.sign(data), data + b"!")
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


_KEY = Sm2PrivateKey.generate()


@settings(max_examples=300, deadline=None)
@given(signature=st.binary(max_size=80), data=st.binary(max_size=64))
def test_any_bytes_as_a_signature_are_refused_without_a_crash(
    signature: bytes, data: bytes
) -> None:
    with pytest.raises(InvalidSignature):
        _KEY.public_key().verify(signature, data)


@settings(max_examples=200, deadline=None)
@given(junk=st.binary(max_size=200), at=st.integers(min_value=0, max_value=90))
def test_damaged_keys_are_refused_as_sm2_errors(junk: bytes, at: int) -> None:
    der = _KEY.public_key().der()
    damaged = der[:at] + junk[:8] + der[at + len(junk[:8]) :]
    try:
        key = Sm2PublicKey.from_der(damaged)
    except Sm2Error:
        return
    # What still parses is an SM2 key that verifies nothing of ours unless it is ours.
    if key.point() != _KEY.public_key().point():
        with pytest.raises(InvalidSignature):
            key.verify(_KEY.sign(MESSAGE), MESSAGE)
    for text in (junk, b"-----BEGIN PUBLIC KEY-----\n" + junk + b"\n-----END PUBLIC KEY-----\n"):
        with pytest.raises(Sm2Error):
            Sm2PublicKey.from_pem(text)
