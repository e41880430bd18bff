"""Encrypted keystore files: how a signing key is kept on disk.

A key is never written in the clear. A keystore is a small JSON document:

    {
      "version": 1,
      "address": "perk1...",
      "name": "till 3, High Street",
      "kdf": {"name": "argon2id", "salt": hex, "opslimit": int, "memlimit": int},
      "cipher": {"name": "xsalsa20poly1305", "nonce": hex, "ciphertext": hex}
    }

The password is stretched with Argon2id into a 32-byte key, which opens an
XSalsa20-Poly1305 secret box. The box holds the canonical encoding of
``[seed, address, name]``: the Poly1305 tag makes any change to the ciphertext
fail as a wrong password, and comparing the sealed address and name with the
cleartext ones catches an edited header. The KDF parameters and salt need no
extra binding, since changing any of them derives a different key.

The address and name stay readable without the password, so a wallet can list
its keys; ``read_keystore_info`` returns them. Only ``load_keystore`` decrypts.

Passwords are normalised to Unicode NFKC before use, so the same password typed
on keyboards that compose accented characters differently opens the same file.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
import nacl.secret
import nacl.utils

from client.keys import MAX_ADDRESS_CHARS, AddressError, Keypair, parse_address
from state.codec import DecodeError, check_array, check_bytes, check_text, decode
from state.codec import encode as canonical_encode

__all__ = [
    "DEFAULT_MEMLIMIT",
    "DEFAULT_OPSLIMIT",
    "KeystoreError",
    "KeystoreExistsError",
    "load_keystore",
    "read_keystore_info",
    "save_keystore",
]

KEYSTORE_VERSION = 1
KDF_NAME = "argon2id"
CIPHER_NAME = "xsalsa20poly1305"

DEFAULT_OPSLIMIT = argon2id.OPSLIMIT_INTERACTIVE
DEFAULT_MEMLIMIT = argon2id.MEMLIMIT_INTERACTIVE

# Bounds on the KDF cost accepted at save and at load. The lower ones are
# libsodium's; the upper ones stop a doctored file from making the loader
# allocate terabytes or spin for hours before failing.
MIN_OPSLIMIT = argon2id.OPSLIMIT_MIN
MAX_OPSLIMIT = 4 * argon2id.OPSLIMIT_SENSITIVE
MIN_MEMLIMIT = argon2id.MEMLIMIT_MIN
MAX_MEMLIMIT = argon2id.MEMLIMIT_SENSITIVE

MAX_NAME_BYTES = 128
# The sealed [seed, address, name]: 32 + 63 + 128 bytes and a few headers.
MAX_PLAINTEXT_BYTES = 512
# A keystore is a few hundred bytes; anything much larger is not one.
MAX_FILE_BYTES = 64 * 1024
SEED_BYTES = 32

_LOWER_HEX = re.compile(r"(?:[0-9a-f]{2})*")


class KeystoreError(Exception):
    """A keystore that cannot be written, read or opened."""


class KeystoreExistsError(KeystoreError, FileExistsError):
    """Saving would replace an existing keystore, and overwrite was not asked."""


@dataclass(frozen=True, slots=True)
class KeystoreDocument:
    """A keystore file after its structure is checked, before decryption."""

    address: str
    name: str
    salt: bytes
    opslimit: int
    memlimit: int
    nonce: bytes
    ciphertext: bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "version": KEYSTORE_VERSION,
            "address": self.address,
            "name": self.name,
            "kdf": {
                "name": KDF_NAME,
                "salt": self.salt.hex(),
                "opslimit": self.opslimit,
                "memlimit": self.memlimit,
            },
            "cipher": {
                "name": CIPHER_NAME,
                "nonce": self.nonce.hex(),
                "ciphertext": self.ciphertext.hex(),
            },
        }


# --- saving ------------------------------------------------------------------------


def save_keystore(
    path: str | os.PathLike[str],
    keypair: Keypair,
    password: str,
    name: str = "",
    *,
    opslimit: int = DEFAULT_OPSLIMIT,
    memlimit: int = DEFAULT_MEMLIMIT,
    overwrite: bool = False,
) -> None:
    """Encrypt `keypair` under `password` and write it to `path`, mode 0600.

    The file appears complete or not at all: it is written to a temporary file
    in the same directory, flushed to disk, then moved into place. An existing
    file is kept, and KeystoreExistsError raised, unless `overwrite` is true.
    """
    if not isinstance(keypair, Keypair):
        raise TypeError("keypair must be a client.keys.Keypair")
    password_bytes = normalise_password(password)
    if not password_bytes:
        raise KeystoreError("refusing to save a keystore with an empty password")
    check_name(name)
    check_kdf_cost(opslimit, memlimit)
    target = Path(path)
    # Checked again atomically when the file is published; this early check
    # spares the user the key derivation when the answer is already known.
    if not overwrite and target.exists():
        raise KeystoreExistsError(f"{target} already exists")

    document = seal_keypair(keypair, password_bytes, name, opslimit, memlimit)
    text = json.dumps(document.to_json(), indent=2) + "\n"
    write_atomically(target, text.encode(), overwrite)


def seal_keypair(
    keypair: Keypair, password: bytes, name: str, opslimit: int, memlimit: int
) -> KeystoreDocument:
    address = keypair.address
    salt = nacl.utils.random(argon2id.SALTBYTES)
    nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
    box = nacl.secret.SecretBox(derive_key(password, salt, opslimit, memlimit))
    plaintext = canonical_encode([keypair.seed, address, name])
    ciphertext = box.encrypt(plaintext, nonce).ciphertext
    return KeystoreDocument(
        address, name, salt, opslimit, memlimit, nonce, bytes(ciphertext)
    )


def write_atomically(target: Path, content: bytes, overwrite: bool) -> None:
    directory = target.parent
    # mkstemp creates the file with mode 0600 whatever the umask, so the
    # ciphertext is never readable by others, not even briefly.
    fd, temp_name = tempfile.mkstemp(
        dir=directory, prefix=f".{target.name}.", suffix=".tmp"
    )
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        publish(temp, target, overwrite)
    finally:
        temp.unlink(missing_ok=True)
    sync_directory(directory)


def publish(temp: Path, target: Path, overwrite: bool) -> None:
    """Move the finished file into place, without clobbering unless asked."""
    if overwrite:
        os.replace(temp, target)
        return
    # A hard link fails if the target exists, with no window between the check
    # and the write in which another process could create it.
    try:
        os.link(temp, target)
    except FileExistsError:
        raise KeystoreExistsError(f"{target} already exists") from None
    except OSError:
        # Some filesystems have no hard links; fall back to check-then-rename.
        if target.exists():
            raise KeystoreExistsError(f"{target} already exists") from None
        os.replace(temp, target)


def sync_directory(directory: Path) -> None:
    """Make the rename durable; not every platform can open a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --- loading -----------------------------------------------------------------------


def load_keystore(path: str | os.PathLike[str], password: str) -> Keypair:
    """Decrypt the keystore at `path`; KeystoreError if it cannot be opened.

    A wrong password and a damaged ciphertext are indistinguishable by design
    and give the same error.
    """
    document = read_document(Path(path))
    box = nacl.secret.SecretBox(
        derive_key(
            normalise_password(password),
            document.salt,
            document.opslimit,
            document.memlimit,
        )
    )
    try:
        plaintext = box.decrypt(document.ciphertext, document.nonce)
    except nacl.exceptions.CryptoError:
        raise KeystoreError("wrong password or corrupted keystore") from None
    return open_plaintext(plaintext, document)


def read_keystore_info(path: str | os.PathLike[str]) -> dict[str, str]:
    """The address and name of a keystore, read without the password."""
    document = read_document(Path(path))
    return {"address": document.address, "name": document.name}


def open_plaintext(plaintext: bytes, document: KeystoreDocument) -> Keypair:
    try:
        fields = check_array(
            decode(plaintext, MAX_PLAINTEXT_BYTES), 3, "keystore contents"
        )
        seed = check_bytes(fields[0], "seed", SEED_BYTES)
        sealed_address = check_text(fields[1], "address", MAX_ADDRESS_CHARS, 1)
        sealed_name = check_text(fields[2], "name", MAX_NAME_BYTES)
    except DecodeError as exc:
        raise KeystoreError(f"corrupted keystore: {exc}") from None
    keypair = Keypair.from_seed(seed)
    if keypair.address != sealed_address or sealed_address != document.address:
        raise KeystoreError(
            "keystore address does not match its key: the file has been altered"
        )
    if sealed_name != document.name:
        raise KeystoreError(
            "keystore name does not match the sealed name: the file has been altered"
        )
    return keypair


def read_document(path: Path) -> KeystoreDocument:
    """Read and check the structure of a keystore file; nothing is decrypted."""
    with path.open("rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise KeystoreError(f"malformed keystore: {path} is too large")
    try:
        root = json.loads(data.decode("utf-8"), object_pairs_hook=refuse_duplicates)
    # Deeply nested arrays exhaust the parser's recursion limit before any
    # size check could object; that is malformed input like any other.
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise KeystoreError(f"malformed keystore: not valid JSON ({exc})") from None
    return parse_document(root)


def refuse_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # With duplicate keys, JSON readers disagree on which value wins; a file
    # that means different things to different tools is refused.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def parse_document(root: Any) -> KeystoreDocument:
    if not isinstance(root, dict):
        raise KeystoreError("malformed keystore: expected a JSON object")
    version = root.get("version")
    if type(version) is not int:
        raise KeystoreError("malformed keystore: missing or non-integer version")
    if version != KEYSTORE_VERSION:
        raise KeystoreError(
            f"unsupported keystore version {version}; "
            f"this software reads version {KEYSTORE_VERSION}"
        )
    address = field(root, "address", str)
    try:
        parse_address(address)
    except AddressError as exc:
        raise KeystoreError(f"malformed keystore: {exc}") from None
    name = field(root, "name", str)
    try:
        check_name(name)
    except ValueError as exc:
        raise KeystoreError(f"malformed keystore: {exc}") from None

    kdf = field(root, "kdf", dict)
    if kdf.get("name") != KDF_NAME:
        raise KeystoreError(f"unsupported key derivation {kdf.get('name')!r}")
    salt = hex_field(kdf, "salt", argon2id.SALTBYTES)
    opslimit = field(kdf, "opslimit", int)
    memlimit = field(kdf, "memlimit", int)
    try:
        check_kdf_cost(opslimit, memlimit)
    except ValueError as exc:
        raise KeystoreError(f"malformed keystore: {exc}") from None

    cipher = field(root, "cipher", dict)
    if cipher.get("name") != CIPHER_NAME:
        raise KeystoreError(f"unsupported cipher {cipher.get('name')!r}")
    nonce = hex_field(cipher, "nonce", nacl.secret.SecretBox.NONCE_SIZE)
    ciphertext = hex_field(cipher, "ciphertext")
    if len(ciphertext) <= nacl.secret.SecretBox.MACBYTES:
        raise KeystoreError("malformed keystore: ciphertext is too short")
    return KeystoreDocument(address, name, salt, opslimit, memlimit, nonce, ciphertext)


def field(container: dict[str, Any], key: str, kind: type) -> Any:
    value = container.get(key)
    # `type(...) is` rather than isinstance: JSON true must not pass as an int.
    if type(value) is not kind:
        raise KeystoreError(
            f"malformed keystore: {key!r} is missing or not a {kind.__name__}"
        )
    return value


def hex_field(container: dict[str, Any], key: str, length: int | None = None) -> bytes:
    text = field(container, key, str)
    # Lowercase hex only: one spelling per value, as in everything we write.
    if not _LOWER_HEX.fullmatch(text):
        raise KeystoreError(f"malformed keystore: {key!r} is not lowercase hex")
    value = bytes.fromhex(text)
    if length is not None and len(value) != length:
        raise KeystoreError(
            f"malformed keystore: {key!r} is {len(value)} bytes, expected {length}"
        )
    return value


# --- shared steps --------------------------------------------------------------------


def normalise_password(password: str) -> bytes:
    if not isinstance(password, str):
        raise TypeError("password must be a string")
    return unicodedata.normalize("NFKC", password).encode("utf-8")


def derive_key(password: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return argon2id.kdf(
        nacl.secret.SecretBox.KEY_SIZE,
        password,
        salt,
        opslimit=opslimit,
        memlimit=memlimit,
    )


def check_name(name: str) -> None:
    """A label shown in wallet listings: short, and free of control characters."""
    if not isinstance(name, str):
        raise TypeError("name must be a string")
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        raise ValueError(f"name is longer than {MAX_NAME_BYTES} bytes")
    # Control characters in a name could rewrite a terminal when it is listed.
    if not name.isprintable():
        raise ValueError("name contains control characters")


def check_kdf_cost(opslimit: int, memlimit: int) -> None:
    if type(opslimit) is not int or not MIN_OPSLIMIT <= opslimit <= MAX_OPSLIMIT:
        raise ValueError(
            f"opslimit must be an integer in {MIN_OPSLIMIT}..{MAX_OPSLIMIT}"
        )
    if type(memlimit) is not int or not MIN_MEMLIMIT <= memlimit <= MAX_MEMLIMIT:
        raise ValueError(
            f"memlimit must be an integer in {MIN_MEMLIMIT}..{MAX_MEMLIMIT}"
        )
