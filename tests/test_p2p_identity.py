"""Node keys, their pinned certificates, and the TLS contexts built on them."""

from __future__ import annotations

import asyncio
import datetime
import ssl
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from p2p.identity import (
    NodeIdentity,
    public_key_of_certificate,
    read_certificate,
    read_node_key,
    write_certificate,
    write_node_key,
)
from p2p.tls import client_context, peer_public_key, server_context

ALICE = NodeIdentity(bytes(range(32)))
BOB = NodeIdentity(bytes(range(1, 33)))
MALLORY = NodeIdentity(b"\x66" * 32)


def test_certificate_is_a_pure_function_of_the_seed() -> None:
    again = NodeIdentity(bytes(range(32)))
    assert again.certificate_pem() == ALICE.certificate_pem()
    assert again.certificate_der() == ALICE.certificate_der()
    assert ALICE.certificate_pem() != BOB.certificate_pem()


def test_certificate_fields_are_fixed() -> None:
    cert = x509.load_pem_x509_certificate(ALICE.certificate_pem().encode())
    common_name = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert common_name == ALICE.public_key.hex()
    assert cert.issuer == cert.subject
    assert cert.not_valid_before_utc == datetime.datetime(
        2000, 1, 1, tzinfo=datetime.UTC
    )
    assert cert.not_valid_after_utc.year == 9999
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.value.ca is False
    assert 0 < cert.serial_number < 2**127
    assert (
        cert.serial_number
        != x509.load_pem_x509_certificate(BOB.certificate_pem().encode()).serial_number
    )


def test_public_key_is_read_back_from_pem_and_der() -> None:
    assert public_key_of_certificate(ALICE.certificate_pem()) == ALICE.public_key
    assert public_key_of_certificate(ALICE.certificate_pem().encode()) == (
        ALICE.public_key
    )
    assert public_key_of_certificate(ALICE.certificate_der()) == ALICE.public_key
    assert len(ALICE.public_key) == 32


def test_public_key_extraction_refuses_other_keys_and_junk() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec")])
    now = datetime.datetime.now(datetime.UTC)
    ec_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(ValueError, match="not Ed25519"):
        public_key_of_certificate(ec_cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(ValueError):
        public_key_of_certificate(b"not a certificate")
    with pytest.raises(ValueError):
        NodeIdentity(b"short")


def test_key_and_certificate_files_round_trip(tmp_path) -> None:
    key_path = tmp_path / "node" / "node_key.pem"
    write_node_key(key_path, ALICE)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert read_node_key(key_path).seed == ALICE.seed
    cert_path = tmp_path / "node.crt"
    write_certificate(cert_path, ALICE)
    assert read_certificate(cert_path) == ALICE.certificate_pem()


async def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> tuple[str, bytes, bytes]:
    """Run one handshake; returns (version, key seen by client, by server)."""
    seen_by_server: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            seen_by_server.set_result(peer_public_key(ssl_object))
            writer.write(b"ok")
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, ssl=client_ctx), 5
        )
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            assert await asyncio.wait_for(reader.read(2), 5) == b"ok"
            return (
                ssl_object.version(),
                peer_public_key(ssl_object),
                await asyncio.wait_for(seen_by_server, 5),
            )
        finally:
            writer.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_mutual_tls13_with_pinned_ed25519_certificates() -> None:
    version, seen_by_client, seen_by_server = await _handshake(
        server_context(ALICE, [BOB.certificate_pem()]),
        client_context(BOB, [ALICE.certificate_pem()]),
    )
    assert version == "TLSv1.3"
    assert seen_by_client == ALICE.public_key
    assert seen_by_server == BOB.public_key


async def test_server_not_in_trust_store_is_rejected_by_client() -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(
            server_context(MALLORY, [BOB.certificate_pem()]),
            client_context(BOB, [ALICE.certificate_pem()]),
        )


async def test_tls12_client_cannot_connect() -> None:
    old_client = client_context(BOB, [ALICE.certificate_pem()])
    old_client.minimum_version = ssl.TLSVersion.TLSv1_2
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await _handshake(server_context(ALICE, [BOB.certificate_pem()]), old_client)


def test_contexts_demand_certificates_and_skip_hostnames() -> None:
    for context in (
        server_context(ALICE, [BOB.certificate_pem()]),
        client_context(ALICE, []),
    ):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is False
    with pytest.raises(ValueError):
        server_context(ALICE, ["-----BEGIN CERTIFICATE-----\nbroken"])
