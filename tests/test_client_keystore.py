"""Encrypted keystores: round trip, secrecy on disk, tamper and misuse refusals."""

from __future__ import annotations

import base64
import json
import os
import stat
import unicodedata
from pathlib import Path
from typing import Any

import nacl.pwhash.argon2id as argon2id
import pytest

from client.keys import Keypair
from client.keystore import (
    DEFAULT_MEMLIMIT,
    DEFAULT_OPSLIMIT,
    KeystoreError,
    KeystoreExistsError,
    load_keystore,
    read_keystore_info,
    save_keystore,
)

# The cheapest Argon2id settings libsodium allows: the format and checks are
# the same at any cost, and the suite stays fast.
FAST: dict[str, int] = {
    "opslimit": argon2id.OPSLIMIT_MIN,
    "memlimit": argon2id.MEMLIMIT_MIN,
}
PASSWORD = "correct horse battery staple"


@pytest.fixture
def key() -> Keypair:
    return Keypair.from_seed(bytes(range(100, 132)))


@pytest.fixture
def path(tmp_path: Path, key: Keypair) -> Path:
    target = tmp_path / "wallet.json"
    save_keystore(target, key, PASSWORD, "till 3", **FAST)
    return target


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document))


# --- round trip ------------------------------------------------------------------


def test_round_trip_restores_the_same_key(path: Path, key: Keypair) -> None:
    loaded = load_keystore(path, PASSWORD)
    assert loaded.seed == key.seed
    assert loaded.public_key == key.public_key
    assert loaded.sign(b"x") == key.sign(b"x")


def test_round_trip_with_default_cost(tmp_path: Path, key: Keypair) -> None:
    target = tmp_path / "default.json"
    save_keystore(target, key, PASSWORD)
    kdf = read_json(target)["kdf"]
    assert kdf["opslimit"] == DEFAULT_OPSLIMIT == argon2id.OPSLIMIT_INTERACTIVE
    assert kdf["memlimit"] == DEFAULT_MEMLIMIT == argon2id.MEMLIMIT_INTERACTIVE
    assert load_keystore(target, PASSWORD).public_key == key.public_key


def test_document_has_the_documented_shape(path: Path, key: Keypair) -> None:
    document = read_json(path)
    assert set(document) == {"version", "address", "name", "kdf", "cipher"}
    assert document["version"] == 1
    assert document["address"] == key.address
    assert document["name"] == "till 3"
    assert document["kdf"]["name"] == "argon2id"
    assert len(bytes.fromhex(document["kdf"]["salt"])) == argon2id.SALTBYTES
    assert document["kdf"]["opslimit"] == FAST["opslimit"]
    assert document["kdf"]["memlimit"] == FAST["memlimit"]
    assert document["cipher"]["name"] == "xsalsa20poly1305"
    assert len(bytes.fromhex(document["cipher"]["nonce"])) == 24


def test_info_is_readable_without_the_password(path: Path, key: Keypair) -> None:
    assert read_keystore_info(path) == {"address": key.address, "name": "till 3"}


def test_each_save_uses_a_fresh_salt_and_nonce(tmp_path: Path, key: Keypair) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    save_keystore(a, key, PASSWORD, **FAST)
    save_keystore(b, key, PASSWORD, **FAST)
    doc_a, doc_b = read_json(a), read_json(b)
    assert doc_a["kdf"]["salt"] != doc_b["kdf"]["salt"]
    assert doc_a["cipher"]["nonce"] != doc_b["cipher"]["nonce"]
    assert doc_a["cipher"]["ciphertext"] != doc_b["cipher"]["ciphertext"]


def test_equivalent_unicode_spellings_of_a_password_open_the_file(
    tmp_path: Path, key: Keypair
) -> None:
    composed = unicodedata.normalize("NFC", "café crème")
    decomposed = unicodedata.normalize("NFD", "café crème")
    assert composed != decomposed
    target = tmp_path / "unicode.json"
    save_keystore(target, key, composed, **FAST)
    assert load_keystore(target, decomposed).public_key == key.public_key


# --- secrecy on disk ---------------------------------------------------------------


def test_file_holds_no_copy_of_the_seed(path: Path, key: Keypair) -> None:
    content = path.read_bytes()
    seed = key.seed
    assert seed not in content
    assert seed.hex().encode() not in content
    assert seed.hex().upper().encode() not in content
    assert base64.b64encode(seed).rstrip(b"=") not in content
    assert PASSWORD.encode() not in content


def test_file_mode_is_0600_whatever_the_umask(tmp_path: Path, key: Keypair) -> None:
    target = tmp_path / "open-umask.json"
    previous = os.umask(0)
    try:
        save_keystore(target, key, PASSWORD, **FAST)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_no_temporary_files_are_left_behind(path: Path) -> None:
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


# --- wrong password and tampering ----------------------------------------------------


@pytest.mark.parametrize("password", ["", "correct horse battery stapler", "CORRECT"])
def test_wrong_password_is_refused(path: Path, password: str) -> None:
    with pytest.raises(KeystoreError, match="wrong password or corrupted keystore"):
        load_keystore(path, password)


def test_tampered_ciphertext_is_refused(path: Path) -> None:
    document = read_json(path)
    ciphertext = bytearray.fromhex(document["cipher"]["ciphertext"])
    for index in (0, len(ciphertext) // 2, len(ciphertext) - 1):
        altered = bytearray(ciphertext)
        altered[index] ^= 0x01
        document["cipher"]["ciphertext"] = altered.hex()
        write_json(path, document)
        with pytest.raises(KeystoreError, match="wrong password or corrupted"):
            load_keystore(path, PASSWORD)


@pytest.mark.parametrize("section, field", [("kdf", "salt"), ("cipher", "nonce")])
def test_tampered_salt_or_nonce_is_refused(
    path: Path, section: str, field: str
) -> None:
    document = read_json(path)
    value = bytearray.fromhex(document[section][field])
    value[0] ^= 0x80
    document[section][field] = value.hex()
    write_json(path, document)
    with pytest.raises(KeystoreError, match="wrong password or corrupted"):
        load_keystore(path, PASSWORD)


def test_tampered_kdf_cost_is_refused(path: Path) -> None:
    document = read_json(path)
    document["kdf"]["opslimit"] += 1
    write_json(path, document)
    with pytest.raises(KeystoreError, match="wrong password or corrupted"):
        load_keystore(path, PASSWORD)


def test_tampered_address_is_refused(path: Path) -> None:
    document = read_json(path)
    document["address"] = Keypair.from_seed(bytes(32)).address
    write_json(path, document)
    # Listing shows what the file claims; opening it exposes the lie.
    assert read_keystore_info(path)["address"] == document["address"]
    with pytest.raises(KeystoreError, match="address does not match"):
        load_keystore(path, PASSWORD)


def test_tampered_name_is_refused(path: Path) -> None:
    document = read_json(path)
    document["name"] = "treasury"
    write_json(path, document)
    with pytest.raises(KeystoreError, match="name does not match"):
        load_keystore(path, PASSWORD)


# --- overwriting -------------------------------------------------------------------


def test_refuses_to_overwrite(path: Path) -> None:
    before = path.read_bytes()
    other = Keypair.from_seed(bytes(32))
    with pytest.raises(KeystoreExistsError):
        save_keystore(path, other, PASSWORD, **FAST)
    assert path.read_bytes() == before
    assert issubclass(KeystoreExistsError, FileExistsError)
    assert issubclass(KeystoreExistsError, KeystoreError)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_overwrite_replaces_when_asked(path: Path) -> None:
    other = Keypair.from_seed(bytes(32))
    save_keystore(path, other, "new password", "spare", overwrite=True, **FAST)
    assert load_keystore(path, "new password").public_key == other.public_key
    assert read_keystore_info(path)["name"] == "spare"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


# --- misuse and malformed files ------------------------------------------------------


def test_empty_password_is_refused_at_save(tmp_path: Path, key: Keypair) -> None:
    target = tmp_path / "empty.json"
    with pytest.raises(KeystoreError, match="empty password"):
        save_keystore(target, key, "", **FAST)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "cost",
    [
        {"opslimit": 0, "memlimit": argon2id.MEMLIMIT_MIN},
        {"opslimit": 1, "memlimit": 1024},
        {"opslimit": 1, "memlimit": argon2id.MEMLIMIT_SENSITIVE * 2},
    ],
)
def test_out_of_range_kdf_cost_is_refused_at_save(
    tmp_path: Path, key: Keypair, cost: dict[str, int]
) -> None:
    with pytest.raises(ValueError):
        save_keystore(tmp_path / "k.json", key, PASSWORD, **cost)


@pytest.mark.parametrize("name", ["line\nbreak", "\x1b[31mred", "x" * 129])
def test_unprintable_or_long_name_is_refused_at_save(
    tmp_path: Path, key: Keypair, name: str
) -> None:
    with pytest.raises(ValueError):
        save_keystore(tmp_path / "k.json", key, PASSWORD, name, **FAST)


def test_unsupported_version_is_refused(path: Path) -> None:
    document = read_json(path)
    document["version"] = 2
    write_json(path, document)
    with pytest.raises(KeystoreError, match="unsupported keystore version 2"):
        load_keystore(path, PASSWORD)
    with pytest.raises(KeystoreError, match="unsupported keystore version 2"):
        read_keystore_info(path)


def edit_remove_kdf(d: dict[str, Any]) -> None:
    del d["kdf"]


def edit_bool_version(d: dict[str, Any]) -> None:
    d["version"] = True


def edit_bad_address(d: dict[str, Any]) -> None:
    d["address"] = d["address"][:-1]


def edit_upper_hex(d: dict[str, Any]) -> None:
    d["cipher"]["ciphertext"] = d["cipher"]["ciphertext"].upper()


def edit_short_salt(d: dict[str, Any]) -> None:
    d["kdf"]["salt"] = d["kdf"]["salt"][:-2]


def edit_other_kdf(d: dict[str, Any]) -> None:
    d["kdf"]["name"] = "scrypt"


def edit_other_cipher(d: dict[str, Any]) -> None:
    d["cipher"]["name"] = "aes-256-gcm"


def edit_huge_memlimit(d: dict[str, Any]) -> None:
    d["kdf"]["memlimit"] = 1 << 42


def edit_string_opslimit(d: dict[str, Any]) -> None:
    d["kdf"]["opslimit"] = "2"


def edit_empty_ciphertext(d: dict[str, Any]) -> None:
    d["cipher"]["ciphertext"] = ""


@pytest.mark.parametrize(
    "edit",
    [
        edit_remove_kdf,
        edit_bool_version,
        edit_bad_address,
        edit_upper_hex,
        edit_short_salt,
        edit_other_kdf,
        edit_other_cipher,
        edit_huge_memlimit,
        edit_string_opslimit,
        edit_empty_ciphertext,
    ],
)
def test_malformed_document_is_refused(path: Path, edit: Any) -> None:
    document = read_json(path)
    edit(document)
    write_json(path, document)
    with pytest.raises(KeystoreError):
        load_keystore(path, PASSWORD)
    with pytest.raises(KeystoreError):
        read_keystore_info(path)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not json",
        b"[]",
        b"\xff\xfe",
        b'{"version": 1, "version": 1}',
        b"[" * 50_000,
    ],
)
def test_unparseable_file_is_refused(tmp_path: Path, content: bytes) -> None:
    target = tmp_path / "bad.json"
    target.write_bytes(content)
    with pytest.raises(KeystoreError, match="malformed keystore"):
        load_keystore(target, PASSWORD)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "big.json"
    target.write_bytes(b" " * (1 << 20))
    with pytest.raises(KeystoreError, match="too large"):
        read_keystore_info(target)


def test_missing_file_raises_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_keystore(tmp_path / "absent.json", PASSWORD)
