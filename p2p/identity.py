"""Node identity: the Ed25519 node key and the certificate made from it.

Every validator and auditor node owns a node key, an Ed25519 key pair kept as a
32-byte seed. The network knows a node by its 32-byte public key, never by host
name or address: an address only says where to dial, and the key says who must
answer there.

TLS needs a certificate, so each node presents a self-signed X.509 certificate
for its node key. The certificate is a pure function of the seed: every field is
fixed (subject and issuer common name = hex public key, serial number derived
from the key, a validity running from 2000 to the end of year 9999) and Ed25519
signatures are deterministic, so the same seed always yields the very same
bytes. That lets an operator hand out a node's certificate once, and lets peers
pin it in their trust stores, without any certificate authority and without
renewals.

Key files hold the private key as an unencrypted PKCS#8 PEM, written with mode
0600 like an SSH host key: a node must start unattended.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import secrets
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SEED_SIZE = 32
PUBLIC_KEY_SIZE = 32

# Fixed validity: the certificate carries no expiry worth managing, because
# trust comes from pinning the exact certificate, not from a CA or a clock.
# 9999-12-31T23:59:59Z is RFC 5280's "no well-defined expiration date".
_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
_SERIAL_DOMAIN = b"perkchain/p2p/certificate-serial/v1"


class NodeIdentity:
    """A node's Ed25519 key pair and its deterministic TLS certificate."""

    __slots__ = ("_private_key", "_public_key", "_certificate")

    def __init__(self, seed: bytes) -> None:
        if not isinstance(seed, bytes | bytearray) or len(seed) != SEED_SIZE:
            raise ValueError(f"a node key seed is {SEED_SIZE} bytes")
        self._private_key = Ed25519PrivateKey.from_private_bytes(bytes(seed))
        self._public_key = self._private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self._certificate = _build_certificate(self._private_key, self._public_key)

    @classmethod
    def generate(cls) -> NodeIdentity:
        """A fresh random node key."""
        return cls(secrets.token_bytes(SEED_SIZE))

    @property
    def public_key(self) -> bytes:
        return self._public_key

    @property
    def seed(self) -> bytes:
        return self._private_key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def certificate_pem(self) -> str:
        """The self-signed certificate, identical on every call and machine."""
        return self._certificate.public_bytes(serialization.Encoding.PEM).decode()

    def certificate_der(self) -> bytes:
        return self._certificate.public_bytes(serialization.Encoding.DER)

    def private_key_pem(self, password: bytes | None = None) -> bytes:
        """PKCS#8 PEM of the private key, encrypted when a password is given."""
        encryption: serialization.KeySerializationEncryption
        if password:
            encryption = serialization.BestAvailableEncryption(password)
        else:
            encryption = serialization.NoEncryption()
        return self._private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def __repr__(self) -> str:
        return f"NodeIdentity(public_key={self._public_key.hex()})"


def _certificate_serial(public_key: bytes) -> int:
    # 127 bits keeps the serial positive and well under the 20-octet limit,
    # while two nodes never share one in practice.
    digest = hashlib.sha256(_SERIAL_DOMAIN + public_key).digest()
    return (int.from_bytes(digest[:16], "big") >> 1) | 1


def _build_certificate(
    private_key: Ed25519PrivateKey, public_key: bytes
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, public_key.hex())])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(_certificate_serial(public_key))
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        # A leaf that signs nothing: the certificate is trusted as itself.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
        # Every node is both a TLS server (accepting) and a client (dialling).
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            False,
        )
    )
    # Ed25519 takes no separate digest, hence algorithm=None.
    return builder.sign(private_key, None)


def public_key_of_certificate(certificate: str | bytes) -> bytes:
    """The raw 32-byte Ed25519 public key inside a PEM or DER certificate.

    Raises ValueError when the data is not a certificate or its key is not
    Ed25519.
    """
    data = certificate.encode() if isinstance(certificate, str) else bytes(certificate)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            parsed = x509.load_pem_x509_certificate(data)
        else:
            parsed = x509.load_der_x509_certificate(data)
        key = parsed.public_key()
    except ValueError as exc:
        raise ValueError(f"not a readable certificate: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("certificate key is not Ed25519")
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    # Write beside the target and rename, so a crash never leaves half a key.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def write_node_key(path: str | Path, identity: NodeIdentity) -> None:
    """Save the node key as a PKCS#8 PEM readable only by its owner."""
    _write_atomically(Path(path), identity.private_key_pem(), 0o600)


def read_node_key(path: str | Path) -> NodeIdentity:
    """Load a node key written by write_node_key (or by `openssl genpkey`)."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path}: node key is not Ed25519")
    seed = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return NodeIdentity(seed)


def write_certificate(path: str | Path, identity: NodeIdentity) -> None:
    """Save the node certificate, the public half handed to peer operators."""
    _write_atomically(Path(path), identity.certificate_pem().encode(), 0o644)


def read_certificate(path: str | Path) -> str:
    """Load a peer certificate PEM, checking that it holds an Ed25519 key."""
    pem = Path(path).read_text()
    public_key_of_certificate(pem)
    return pem
