"""The peers a node knows: who they are and where, if anywhere, to dial them.

A node's configuration lists every peer it may exchange frames with. Each entry
pairs a public key with the certificate made from it (which goes into the TLS
trust store) and, for peers that accept connections, a host and port. Entries
without an address are peers that only dial in, such as auditors behind a
firewall.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .identity import PUBLIC_KEY_SIZE, public_key_of_certificate


@dataclass(frozen=True)
class PeerAddress:
    """A peer we accept: its key, its certificate, and where to dial it.

    ``host`` and ``port`` are None for a peer that only dials us, such as an
    auditor behind a firewall.
    """

    public_key: bytes
    host: str | None
    port: int | None
    certificate_pem: str

    def __post_init__(self) -> None:
        if len(self.public_key) != PUBLIC_KEY_SIZE:
            raise ValueError(f"peer public key must be {PUBLIC_KEY_SIZE} bytes")
        if public_key_of_certificate(self.certificate_pem) != self.public_key:
            raise ValueError(
                f"certificate of peer {self.public_key.hex()} holds another key"
            )
        if (self.host is None) != (self.port is None):
            raise ValueError("give both host and port, or neither")

    @property
    def dialable(self) -> bool:
        return self.host is not None and self.port is not None


def index_peers(peers: Iterable[PeerAddress]) -> dict[bytes, PeerAddress]:
    indexed: dict[bytes, PeerAddress] = {}
    for peer in peers:
        if peer.public_key in indexed:
            raise ValueError(f"peer {peer.public_key.hex()} listed twice")
        indexed[peer.public_key] = peer
    return indexed
