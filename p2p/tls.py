"""TLS for peer links: contexts that pin peers by certificate, and handshakes.

All peer traffic runs over TLS 1.3 with mutual authentication. There is no
certificate authority: a node's trust store holds exactly the self-signed
certificates of the peers it accepts (see ``p2p.identity``), so the handshake
itself rejects any other key, in both directions. Python's ``ssl`` module offers
no hook to judge an unknown certificate during the handshake, which is why the
trust store, not a callback, is the pin.

The validator set changes at runtime, and a trust store cannot lose a
certificate once loaded, so contexts are cheap to rebuild: the network builds a
fresh pair whenever its peer list changes, and uses the current one for each new
connection. After the handshake the network still reads the peer's public key
back from its certificate (``peer_public_key``) and asks the allowlist, which
may have changed since the context was built.

``accept_tls`` and ``dial_tls`` run the handshake on asyncio streams and hand
back the peer's key, or a ``TLSFailure`` with a short reason for the log.

Host names play no part: peers are identified by key, so hostname checking is
off, and session tickets are disabled so every connection runs a full handshake
with a fresh certificate check.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .identity import NodeIdentity, public_key_of_certificate


def server_context(
    identity: NodeIdentity, trusted_certificates: Iterable[str]
) -> ssl.SSLContext:
    """Context for accepting peers: presents our certificate, demands theirs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    # Resumed sessions would skip the certificate exchange; we want each
    # connection checked against the trust store of the moment.
    context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    _configure(context, identity, trusted_certificates)
    return context


def client_context(
    identity: NodeIdentity, trusted_certificates: Iterable[str]
) -> ssl.SSLContext:
    """Context for dialling peers: presents our certificate, demands theirs."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    _configure(context, identity, trusted_certificates)
    return context


def _configure(
    context: ssl.SSLContext,
    identity: NodeIdentity,
    trusted_certificates: Iterable[str],
) -> None:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    _load_own_certificate(context, identity)
    trusted = _normalised_pems(trusted_certificates)
    # An empty trust store is valid and simply makes every handshake fail;
    # ssl refuses empty cadata, so only load when there is something to load.
    if trusted:
        context.load_verify_locations(cadata="".join(trusted))


def _normalised_pems(certificates: Iterable[str]) -> list[str]:
    pems: list[str] = []
    for pem in certificates:
        public_key_of_certificate(pem)  # reject anything but an Ed25519 cert
        text = pem.strip() + "\n"
        if text not in pems:
            pems.append(text)
    return pems


def _load_own_certificate(context: ssl.SSLContext, identity: NodeIdentity) -> None:
    # ssl only loads a key pair from a file. The key goes there encrypted
    # under a one-time password, so the clear key never touches the disk,
    # and the private directory is removed straight after loading.
    password = secrets.token_bytes(32).hex().encode()
    with tempfile.TemporaryDirectory(prefix="perkchain-tls-") as directory:
        chain = Path(directory) / "node.pem"
        chain.write_bytes(
            identity.certificate_pem().encode() + identity.private_key_pem(password)
        )
        context.load_cert_chain(chain, password=password)


def peer_public_key(ssl_object: ssl.SSLObject | ssl.SSLSocket) -> bytes:
    """The Ed25519 public key of the certificate the peer presented."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise ValueError("peer presented no certificate")
    return public_key_of_certificate(der)


class TLSFailure(Exception):
    """A connection that did not get through TLS; ``reason`` is the log code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


async def accept_tls(
    writer: asyncio.StreamWriter, context: ssl.SSLContext, timeout: float
) -> bytes:
    """Upgrade an accepted TCP stream to TLS; returns the client's key.

    Call it before anything else awaits on the stream: the client's hello may
    already be arriving and must reach the TLS layer. The stream is closed
    when this raises.
    """
    try:
        await writer.start_tls(context, ssl_handshake_timeout=timeout)
        return peer_public_key(writer.get_extra_info("ssl_object"))
    except ssl.SSLCertVerificationError as exc:
        failure = TLSFailure("certificate_not_trusted", exc.verify_message)
    except (OSError, EOFError) as exc:
        failure = TLSFailure("tls_handshake_failed", type(exc).__name__)
    except ValueError as exc:
        failure = TLSFailure("bad_certificate", str(exc))
    writer.transport.abort()
    raise failure


async def dial_tls(
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    connect_timeout: float,
    handshake_timeout: float,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """Connect and run TLS as the client; returns the streams and server's key.

    A peer that cannot be reached at all fails with reason ``unreachable``.
    """
    try:
        async with asyncio.timeout(connect_timeout + handshake_timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, ssl_handshake_timeout=handshake_timeout
            )
    except ssl.SSLCertVerificationError as exc:
        raise TLSFailure("certificate_not_trusted", exc.verify_message) from None
    except ssl.SSLError as exc:
        raise TLSFailure("tls_handshake_failed", exc.reason or "") from None
    except (OSError, EOFError) as exc:
        raise TLSFailure("unreachable", type(exc).__name__) from None
    try:
        key = peer_public_key(writer.get_extra_info("ssl_object"))
    except ValueError as exc:
        writer.transport.abort()
        raise TLSFailure("bad_certificate", str(exc)) from None
    return reader, writer, key
