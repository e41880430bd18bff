"""Exceptions raised to the layers that send through the peer network.

Anything a peer does wrong ends in a disconnect and a log line, never in an
exception here: these are only for the local caller whose send or request
could not be carried out.
"""

from __future__ import annotations


class P2PError(Exception):
    """Base class of the peer network's errors."""


class PeerUnavailable(P2PError):
    """The peer is not connected, or its connection was just closed."""


class RequestTimeout(P2PError, TimeoutError):
    """The peer did not answer a request in time."""


class RequestFailed(P2PError):
    """The peer answered a request with an error instead of a response.

    ``reason`` is the short code it sent: ``no_handler``, ``handler_error``,
    ``busy`` or ``response_too_large``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"peer refused the request: {reason}")
        self.reason = reason
