"""Peer-to-peer transport of perkchain: authenticated frames between known nodes.

Validators and auditor nodes reach each other over mutually authenticated TLS
1.3, each pinned by a certificate made from its Ed25519 node key. This package
moves opaque, length-prefixed frames between them and defends the node against
peers that misbehave; it knows nothing of blocks, votes or transactions, which
the layers above encode into frame bodies.

Entry points: ``NodeIdentity`` for a node key and its certificate,
``Network`` with ``PeerAddress`` for the connections and messaging, ``Limits``
to tune timeouts, rates and penalties.
"""

from .errors import P2PError, PeerUnavailable, RequestFailed, RequestTimeout
from .framing import DEFAULT_MAX_FRAME, MAX_MSG_TYPE
from .identity import (
    NodeIdentity,
    public_key_of_certificate,
    read_certificate,
    read_node_key,
    write_certificate,
    write_node_key,
)
from .network import Network
from .peers import PeerAddress
from .policing import Limits

__all__ = [
    "DEFAULT_MAX_FRAME",
    "MAX_MSG_TYPE",
    "Limits",
    "Network",
    "NodeIdentity",
    "P2PError",
    "PeerAddress",
    "PeerUnavailable",
    "RequestFailed",
    "RequestTimeout",
    "public_key_of_certificate",
    "read_certificate",
    "read_node_key",
    "write_certificate",
    "write_node_key",
]
