"""Canonical msgpack encoding for everything that is signed or hashed.

Every structure on the wire and on disk is a msgpack array in a fixed field
order, holding only integers, byte strings, short UTF-8 strings, booleans and
nested arrays. There are no floats and no maps, so a value has exactly one
encoding. The decoder enforces that: it refuses any input whose re-encoding
differs from the bytes it was given, which rules out over-long integers,
strings sent as bytes, trailing data and every other second spelling of the
same value. One transaction therefore has exactly one hash.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

import msgpack

# Limits applied while unpacking, before any schema check: no single string or
# byte field and no array may be larger than these, whatever the schema says.
MAX_FIELD_BYTES = 8 << 20
MAX_ARRAY_ITEMS = 1 << 16


class DecodeError(ValueError):
    """Bytes that are not the canonical encoding of an allowed value."""


# One packer per thread, reused: msgpack.packb makes (and frees) a packer with
# its buffer on every call, which was a tenth of block execution. A packer
# empties its buffer after each value, and after an error too.
_packers = threading.local()


def encoder() -> Callable[[Any], bytes]:
    """This thread's `encode`, for loops that encode thousands of values: it
    saves a function call and a thread-local lookup per value."""
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack


def encode(value: Any) -> bytes:
    """Return the canonical encoding of `value` (arrays, ints, bytes, str)."""
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(value)


def decode(data: bytes, max_bytes: int, check_value_types: bool = True) -> Any:
    """Decode canonical msgpack, refusing anything over `max_bytes` or not canonical.

    Raises DecodeError and nothing else, whatever the input. A caller that runs
    its own schema first (to name the offending field) passes
    check_value_types=False and calls check_types after its schema.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise DecodeError("input is not bytes")
    data = bytes(data)
    if len(data) > max_bytes:
        raise DecodeError(f"{len(data)} bytes is over the limit of {max_bytes}")
    if not data:
        raise DecodeError("empty input")
    limit = min(max_bytes, MAX_FIELD_BYTES)
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=min(max_bytes, MAX_ARRAY_ITEMS),
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types; all mean "bad bytes"
        raise DecodeError(f"not valid msgpack: {type(exc).__name__}") from None

    # Only arrays, integers, booleans, bytes and text are allowed anywhere.
    if check_value_types:
        check_types(value)

    # The re-encoding test catches every alternative spelling at once.
    try:
        canonical = encode(value)
    except Exception:
        raise DecodeError("value cannot be re-encoded") from None
    if canonical != data:
        raise DecodeError("not the canonical encoding")
    return value


_SCALARS = (int, bool, bytes, str)


def check_types(value: Any) -> None:
    """Refuse maps, nil, floats and extension types, however deeply nested."""
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is list:
            stack.extend(item)
        elif kind not in _SCALARS:
            raise DecodeError(f"{kind.__name__} values are not allowed")


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


# --- schema checks -------------------------------------------------------------
#
# Small, fast field validators used by every decoder. Each raises DecodeError
# with the field name, so an API client learns which field was wrong.


def check_array(value: Any, length: int, name: str) -> list:
    if type(value) is not list or len(value) != length:
        raise DecodeError(f"{name}: expected an array of {length} fields")
    return value


def check_uint(value: Any, name: str, maximum: int = (1 << 63) - 1) -> int:
    # bool is a subclass of int; it is its own type on the wire and refused here.
    if type(value) is not int:
        raise DecodeError(f"{name}: expected an integer")
    if value < 0 or value > maximum:
        raise DecodeError(f"{name}: {value} is outside 0..{maximum}")
    return value


def check_bool(value: Any, name: str) -> bool:
    if type(value) is not bool:
        raise DecodeError(f"{name}: expected a boolean")
    return value


def check_bytes(value: Any, name: str, length: int | None = None, max_len: int = 0):
    if type(value) is not bytes:
        raise DecodeError(f"{name}: expected bytes")
    if length is not None and len(value) != length:
        raise DecodeError(f"{name}: expected {length} bytes, got {len(value)}")
    if max_len and len(value) > max_len:
        raise DecodeError(f"{name}: {len(value)} bytes is over {max_len}")
    return value


def check_text(value: Any, name: str, max_len: int, min_len: int = 0) -> str:
    """A short printable string: no control characters, bounded in UTF-8 bytes."""
    if type(value) is not str:
        raise DecodeError(f"{name}: expected a string")
    size = len(value.encode())
    if size > max_len or size < min_len:
        raise DecodeError(f"{name}: length {size} is outside {min_len}..{max_len}")
    if not value.isprintable():
        raise DecodeError(f"{name}: contains control characters")
    return value
