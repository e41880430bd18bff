"""Structured log lines for the peer network.

Every line is a short lowercase event followed by key=value fields, for
example ``peer disconnected peer=ab12cd34 reason=frame_too_large``, so that
operators can grep and machines can parse. Peers appear as the first eight hex
digits of their public key, enough to tell validators apart at a glance.
"""

from __future__ import annotations

import json
import logging

LOGGER_NAME = "p2p"


def short_key(public_key: bytes) -> str:
    return public_key[:4].hex()


def _field(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        text = short_key(bytes(value))
    else:
        text = str(value)
    if not text or any(
        ch.isspace() or not ch.isprintable() or ch in '="\\' for ch in text
    ):
        # JSON string quoting escapes quotes and control characters, so a
        # value can never break a line or forge another field.
        return json.dumps(text)
    return text


def log_event(
    logger: logging.Logger,
    level: int,
    event: str,
    /,
    exc_info: bool = False,
    **fields: object,
) -> None:
    """Log ``event`` with its fields; None-valued fields are left out."""
    if not logger.isEnabledFor(level):
        return
    parts = [event]
    parts.extend(f"{k}={_field(v)}" for k, v in fields.items() if v is not None)
    logger.log(level, "%s", " ".join(parts), exc_info=exc_info)


def format_address(peername: object) -> str:
    """``host:port`` of a socket address, with IPv6 hosts in brackets."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        host, port = peername[0], peername[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(peername)
