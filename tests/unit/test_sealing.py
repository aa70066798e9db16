"""Sealing personal data at rest: both ciphers round-trip, a value opens only where it was
stored and only with its key, and a keys file is refused, naming the fault, when it is unsafe
or malformed."""

from __future__ import annotations

import base64
import pickle
from pathlib import Path

import pytest

from gateway.settings import ConfigError, load_settings
from gateway.store.sealing import (
    CANONICAL,
    NOTE,
    Keyring,
    KeyringError,
    SealError,
    generate_key,
    key_id_of,
    open_value,
    write_keyring,
)

RECORD = '{"applicant":{"name":"张三","certificate_number":"360426199101010071"}}'.encode()


def keys_file(tmp_path: Path, active: str = "k2", **keys: str) -> Path:
    """A keys file with ``keys`` (id -> algorithm), each with a new secret."""
    path = tmp_path / "keys.toml"
    write_keyring(path, active, {kid: (alg, generate_key(alg)) for kid, alg in keys.items()})
    return path


@pytest.mark.parametrize("algorithm", ["aes-256-gcm", "sm4-gcm"])
def test_each_cipher_seals_and_opens_bound_to_its_place(tmp_path: Path, algorithm: str) -> None:
    ring = Keyring.load(keys_file(tmp_path, "k1", k1=algorithm))
    sealed = ring.seal(RECORD, CANONICAL, "x-1")
    assert sealed.startswith("enc1:k1:")
    assert "张三".encode() not in sealed.encode()
    assert "360426199101010071" not in sealed
    assert key_id_of(sealed) == "k1"
    assert open_value(ring, sealed, CANONICAL, "x-1") == RECORD.decode()
    assert ring.seal(RECORD, CANONICAL, "x-1") != sealed  # a fresh nonce each time
    # Moved to another case's row, or into a note: does not open.
    for where, xid in ((CANONICAL, "x-2"), (NOTE, "x-1")):
        with pytest.raises(SealError, match="altered, or moved"):
            open_value(ring, sealed, where, xid)
    # One bit changed anywhere in the sealed bytes: does not open.
    blob = bytearray(base64.b64decode(sealed.split(":")[2]))
    blob[len(blob) // 2] ^= 1
    altered = "enc1:k1:" + base64.b64encode(bytes(blob)).decode()
    with pytest.raises(SealError):
        open_value(ring, altered, CANONICAL, "x-1")


def test_old_keys_open_and_the_active_one_seals(tmp_path: Path) -> None:
    path = tmp_path / "keys.toml"
    write_keyring(path, "old", {"old": ("sm4-gcm", generate_key("sm4-gcm"))})
    old = Keyring.load(path)
    by_old = old.seal(b"note", NOTE, "x")
    both = dict(old.keys)
    secrets = {kid: (k.algorithm, base64.b64encode(k.secret).decode()) for kid, k in both.items()}
    write_keyring(path, "new", {**secrets, "new": ("aes-256-gcm", generate_key("aes-256-gcm"))})
    ring = Keyring.load(path)
    assert open_value(ring, by_old, NOTE, "x") == "note"
    assert key_id_of(ring.seal(b"note", NOTE, "x")) == "new"
    # A keyring without the old key names the key it lacks; no keyring asks for one.
    newest = Keyring.parse(
        {
            "active": "new",
            "keys": {"new": {"algorithm": "aes-256-gcm", "secret": generate_key("aes-256-gcm")}},
        }
    )
    with pytest.raises(SealError, match=r"'old', which store\.keys_file lacks"):
        open_value(newest, by_old, NOTE, "x")
    with pytest.raises(SealError, match=r"set store\.keys_file"):
        open_value(None, by_old, NOTE, "x")
    # The keyring crosses to the writer process by pickle.
    assert open_value(pickle.loads(pickle.dumps(ring)), by_old, NOTE, "x") == "note"


def test_values_in_the_clear_pass_through(tmp_path: Path) -> None:
    ring = Keyring.load(keys_file(tmp_path, "k", k="aes-256-gcm"))
    for text in ('{"case_number":"1"}', "", "enc1: a note that only looks sealed"):
        assert open_value(ring, text, NOTE, "x") == text
        assert open_value(None, text, NOTE, "x") == text
        assert key_id_of(text) is None


def test_a_keys_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = keys_file(tmp_path, "k", k="aes-256-gcm")
    assert path.stat().st_mode & 0o777 == 0o600
    path.chmod(0o640)
    with pytest.raises(KeyringError, match=r"readable by others .*chmod 600"):
        Keyring.load(path)


@pytest.mark.parametrize(
    ("content", "fault"),
    [
        ('active = "a"\n', r"\[keys\] holds no key"),
        ('active = "b"\n[keys.a]\nalgorithm = "aes-256-gcm"\nsecret = "{aes}"\n', "active must"),
        ('active = "a"\n[keys.a]\nalgorithm = "des"\nsecret = "{aes}"\n', "keys.a.algorithm"),
        ('active = "a"\n[keys.a]\nalgorithm = "sm4-gcm"\nsecret = "{aes}"\n', "16 bytes, not 32"),
        ('active = "a"\n[keys.a]\nalgorithm = "aes-256-gcm"\nsecret = "@@"\n', "not base64"),
        ('active = "a"\n[keys.a]\nalgorithm = "aes-256-gcm"\n', "exactly algorithm and secret"),
        ('active = "a b"\n[keys."a b"]\nalgorithm = "aes-256-gcm"\nsecret = "{aes}"\n', "key id"),
        (
            'active = "a"\nextra = 1\n[keys.a]\nalgorithm = "aes-256-gcm"\nsecret = "{aes}"\n',
            "unknown",
        ),
        ("active = [", "not TOML"),
    ],
)
def test_a_malformed_keys_file_is_refused_naming_the_fault(
    tmp_path: Path, content: str, fault: str
) -> None:
    path = tmp_path / "keys.toml"
    path.write_text(content.replace("{aes}", generate_key("aes-256-gcm")))
    path.chmod(0o600)
    with pytest.raises(KeyringError, match=fault):
        Keyring.load(path)


def test_settings_read_the_keys_once_and_refuse_bad_ones(tmp_path: Path) -> None:
    path = keys_file(tmp_path, "k", k="sm4-gcm")
    config = tmp_path / "tongban.toml"
    config.write_text('[store]\nkeys_file = "keys.toml"\n')  # relative to the config file
    settings = load_settings(config, env={})
    assert settings.store.keys_file == path
    assert settings.store.keyring is not None
    assert settings.store.keyring.active == "k"
    assert load_settings(None, env={}).store.keyring is None
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"store: .*keys_file: .*readable by others"):
        load_settings(config, env={})
