"""Frames: the unit of data that peers exchange over a TLS connection.

On the wire a frame is a 4-byte big-endian payload length followed by a msgpack
payload, and the payload is always the array ``[msg_type, request_id, body]``:

- ``msg_type`` is an int. Upper layers (consensus, block sync, auditing) own the
  types 0..65535; the negative types are this package's own control frames
  (``Control``): keepalive pings, responses, and the admission answer that the
  accepting side sends first.
- ``request_id`` is 0 for one-way messages and broadcasts, and otherwise pairs a
  request with its response.
- ``body`` is opaque bytes; upper layers encode their own messages inside.

Decoding refuses anything else, so a peer cannot smuggle a map, a string or an
extension type past this layer. Reading enforces three limits that make a
misbehaving peer cheap to shed: a declared length over the maximum ends the
connection before a single body byte is read, a frame must arrive completely
within a deadline once its first byte has, and a silent connection times out.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from enum import IntEnum
from typing import NamedTuple

import msgpack

DEFAULT_MAX_FRAME = 4 * 1024 * 1024
HEADER = struct.Struct(">I")

MIN_MSG_TYPE = -(2**15)
MAX_MSG_TYPE = 2**16 - 1
MAX_REQUEST_ID = 2**63 - 1


class Control(IntEnum):
    """Frame types used by the network itself, below the upper layers' range."""

    PING = -1
    RESPONSE = -2
    ERROR = -3
    WELCOME = -4
    REFUSE = -5


class Frame(NamedTuple):
    msg_type: int
    request_id: int
    body: bytes


class ProtocolError(Exception):
    """The peer broke the wire protocol; ``reason`` is the short log code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def check_app_msg_type(msg_type: int) -> None:
    """Refuse a message type outside the range the upper layers own."""
    if type(msg_type) is not int or not 0 <= msg_type <= MAX_MSG_TYPE:
        raise ValueError(f"msg_type must be an int in 0..{MAX_MSG_TYPE}")


def encode_frame(msg_type: int, request_id: int, body: bytes, max_frame: int) -> bytes:
    """Header and payload of one frame, ready to write.

    Raises ValueError for an out-of-range field or a payload over ``max_frame``.
    """
    if not MIN_MSG_TYPE <= msg_type <= MAX_MSG_TYPE:
        raise ValueError(f"msg_type {msg_type} out of range")
    if not 0 <= request_id <= MAX_REQUEST_ID:
        raise ValueError(f"request_id {request_id} out of range")
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError("frame body must be bytes")
    payload = msgpack.packb([msg_type, request_id, bytes(body)], use_bin_type=True)
    if len(payload) > max_frame:
        raise ValueError(f"frame of {len(payload)} bytes exceeds max {max_frame}")
    return HEADER.pack(len(payload)) + payload


def decode_frame(payload: bytes) -> Frame:
    """Parse a payload, accepting only ``[int, int, bytes]`` within range."""
    try:
        # Limits that fit nothing but that shape, so the decoder refuses any
        # other array, map or string as soon as it reads its length: a
        # million-entry array fits in a few megabytes of frame, and would
        # otherwise become a million objects before the shape is checked.
        value = msgpack.unpackb(
            payload,
            raw=False,
            use_list=True,
            max_array_len=3,
            max_map_len=0,
            max_str_len=0,
            max_ext_len=0,
            max_bin_len=len(payload),
        )
    except Exception as exc:
        if type(exc) is ValueError and "exceeds max" in str(exc):
            # Well-formed msgpack, but not an array of three with a bytes body.
            raise ProtocolError("bad_frame_shape", str(exc)) from None
        # Whatever the decoder chokes on, the bytes came from the peer.
        raise ProtocolError("malformed_frame", type(exc).__name__) from None
    # type() rather than isinstance(): msgpack booleans are ints to Python.
    if type(value) is not list or len(value) != 3:
        raise ProtocolError("bad_frame_shape", "not a 3-element array")
    msg_type, request_id, body = value
    if type(msg_type) is not int or not MIN_MSG_TYPE <= msg_type <= MAX_MSG_TYPE:
        raise ProtocolError("bad_frame_shape", "msg_type")
    if type(request_id) is not int or not 0 <= request_id <= MAX_REQUEST_ID:
        raise ProtocolError("bad_frame_shape", "request_id")
    if type(body) is not bytes:
        raise ProtocolError("bad_frame_shape", "body")
    return Frame(msg_type, request_id, body)


class FrameReader:
    """Reads frames from one stream under the size and time limits.

    ``admit`` is called with a frame's full size as soon as its header is in,
    before the body is read, so rate limits can refuse it for free; it raises
    ProtocolError to end the connection.
    """

    def __init__(
        self,
        stream: asyncio.StreamReader,
        *,
        max_frame: int,
        idle_timeout: float | None,
        frame_timeout: float | None,
        admit: Callable[[int], None] | None = None,
    ) -> None:
        self._stream = stream
        self._max_frame = max_frame
        self._idle_timeout = idle_timeout
        self._frame_timeout = frame_timeout
        self._admit = admit

    async def read(self) -> Frame | None:
        """The next frame, or None when the peer closed between frames."""
        try:
            async with asyncio.timeout(self._idle_timeout):
                first = await self._stream.readexactly(1)
        except asyncio.IncompleteReadError:
            return None
        except TimeoutError:
            raise ProtocolError("idle_timeout") from None
        # From the first byte on, the whole frame has one deadline, so a peer
        # cannot hold the connection by trickling a byte at a time.
        try:
            async with asyncio.timeout(self._frame_timeout):
                header = first + await self._stream.readexactly(HEADER.size - 1)
                (length,) = HEADER.unpack(header)
                self._check_length(length)
                payload = await self._stream.readexactly(length)
        except asyncio.IncompleteReadError:
            raise ProtocolError("truncated_frame") from None
        except TimeoutError:
            raise ProtocolError("slow_frame") from None
        return decode_frame(payload)

    def _check_length(self, length: int) -> None:
        if length > self._max_frame:
            raise ProtocolError("frame_too_large", f"declared={length}")
        if length == 0:
            raise ProtocolError("malformed_frame", "empty payload")
        if self._admit is not None:
            self._admit(HEADER.size + length)
