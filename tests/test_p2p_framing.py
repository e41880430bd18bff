"""Frame encoding, framing limits, rate and penalty bookkeeping, log lines."""

from __future__ import annotations

import asyncio
import logging

import msgpack
import pytest

from p2p.connection import reason_of
from p2p.events import log_event
from p2p.framing import (
    HEADER,
    Control,
    Frame,
    FrameReader,
    ProtocolError,
    decode_frame,
    encode_frame,
)
from p2p.policing import Limits, PenaltyBox, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_frames_round_trip() -> None:
    data = encode_frame(7, 42, b"\x00body", max_frame=1024)
    (length,) = HEADER.unpack(data[:4])
    assert length == len(data) - 4
    assert decode_frame(data[4:]) == Frame(7, 42, b"\x00body")
    control = encode_frame(Control.PING, 0, b"", 1024)
    assert decode_frame(control[4:]).msg_type == Control.PING


def test_encoding_refuses_oversized_and_out_of_range_frames() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        encode_frame(1, 0, b"x" * 2000, max_frame=1024)
    with pytest.raises(ValueError):
        encode_frame(70_000, 0, b"", 1024)
    with pytest.raises(ValueError):
        encode_frame(1, -1, b"", 1024)
    with pytest.raises(TypeError):
        encode_frame(1, 0, "text", 1024)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1\xc1\xc1", "malformed_frame"),
        (msgpack.packb([1, 0, b"x"]) + b"\x00", "malformed_frame"),
        (msgpack.packb({"type": 1}), "bad_frame_shape"),
        (msgpack.packb([1, 0]), "bad_frame_shape"),
        (msgpack.packb([1, 0, b"x", 4]), "bad_frame_shape"),
        (msgpack.packb([1, 0, "text"]), "bad_frame_shape"),
        (msgpack.packb([True, 0, b"x"]), "bad_frame_shape"),
        (msgpack.packb([1.5, 0, b"x"]), "bad_frame_shape"),
        (msgpack.packb([1, -3, b"x"]), "bad_frame_shape"),
        (msgpack.packb([1_000_000, 0, b"x"]), "bad_frame_shape"),
        (msgpack.packb([1, 0, msgpack.ExtType(1, b"x")]), "bad_frame_shape"),
    ],
)
def test_decoding_refuses_anything_but_int_int_bytes(payload, reason) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_frame(payload)
    assert caught.value.reason == reason


def _reader(data: bytes, *, eof: bool = False) -> asyncio.StreamReader:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    if eof:
        stream.feed_eof()
    return stream


async def test_reader_refuses_oversized_header_without_waiting_for_body() -> None:
    # Only the header is there; the body never comes, and need not.
    reader = FrameReader(
        _reader(HEADER.pack(0xFFFFFFFF)),
        max_frame=4 * 1024 * 1024,
        idle_timeout=5,
        frame_timeout=5,
    )
    with pytest.raises(ProtocolError) as caught:
        await asyncio.wait_for(reader.read(), 1)
    assert caught.value.reason == "frame_too_large"


async def test_reader_times_out_slow_frames_and_idle_peers() -> None:
    slow = FrameReader(
        _reader(HEADER.pack(10) + b"abc"),
        max_frame=1024,
        idle_timeout=5,
        frame_timeout=0.1,
    )
    with pytest.raises(ProtocolError) as caught:
        await slow.read()
    assert caught.value.reason == "slow_frame"
    idle = FrameReader(_reader(b""), max_frame=1024, idle_timeout=0.1, frame_timeout=5)
    with pytest.raises(ProtocolError) as caught:
        await idle.read()
    assert caught.value.reason == "idle_timeout"


async def test_reader_reports_clean_and_truncated_ends() -> None:
    frame = encode_frame(3, 0, b"hello", 1024)
    reader = FrameReader(
        _reader(frame, eof=True), max_frame=1024, idle_timeout=1, frame_timeout=1
    )
    assert await reader.read() == Frame(3, 0, b"hello")
    assert await reader.read() is None
    cut = FrameReader(
        _reader(frame[:-2], eof=True), max_frame=1024, idle_timeout=1, frame_timeout=1
    )
    with pytest.raises(ProtocolError) as caught:
        await cut.read()
    assert caught.value.reason == "truncated_frame"


async def test_reader_asks_admission_before_reading_the_body() -> None:
    sizes: list[int] = []

    def refuse(size: int) -> None:
        sizes.append(size)
        raise ProtocolError("rate_limited")

    reader = FrameReader(
        _reader(HEADER.pack(500)),
        max_frame=1024,
        idle_timeout=1,
        frame_timeout=1,
        admit=refuse,
    )
    with pytest.raises(ProtocolError):
        await reader.read()
    assert sizes == [504]


def test_token_bucket_refills_at_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, capacity=20, clock=clock)
    assert all(bucket.take(1) for _ in range(20))
    assert not bucket.take(1)
    clock.now += 0.5
    assert all(bucket.take(1) for _ in range(5))
    assert not bucket.take(1)
    clock.now += 100
    assert bucket.take(20)
    assert not bucket.take(1)


def test_penalties_accumulate_to_a_ban_that_expires() -> None:
    clock = FakeClock()
    box = PenaltyBox(threshold=30, ban_seconds=60, memory_seconds=600, clock=clock)
    peer = b"p" * 32
    assert box.add(peer, 10) == 10
    assert box.add(peer, 10) == 20
    assert not box.is_banned(peer)
    assert box.add(peer, 10) == 30
    assert box.is_banned(peer)
    assert box.score(peer) == 0
    clock.now += 59
    assert box.is_banned(peer)
    clock.now += 2
    assert not box.is_banned(peer)


def test_penalties_fade_after_their_memory() -> None:
    clock = FakeClock()
    box = PenaltyBox(threshold=30, ban_seconds=60, memory_seconds=100, clock=clock)
    peer = b"q" * 32
    box.add(peer, 20)
    clock.now += 101
    assert box.score(peer) == 0
    assert box.add(peer, 20) == 20
    assert not box.is_banned(peer)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        Limits(frame_timeout=0)
    with pytest.raises(ValueError):
        Limits(idle_timeout=5, ping_interval=10)


def test_log_lines_are_key_value_and_cannot_be_forged(caplog) -> None:
    logger = logging.getLogger("p2p.test")
    caplog.set_level(logging.INFO, logger="p2p")
    log_event(
        logger,
        logging.WARNING,
        "peer refused",
        peer=b"\xab\x12\xcd\x34" + bytes(28),
        addr="127.0.0.1:4001",
        reason="refused_by_peer",
        detail='x\nINFO fake reason="y"',
        skipped=None,
    )
    (message,) = [r.getMessage() for r in caplog.records]
    assert message == (
        "peer refused peer=ab12cd34 addr=127.0.0.1:4001 reason=refused_by_peer"
        ' detail="x\\nINFO fake reason=\\"y\\""'
    )
    assert "\n" not in message
    assert reason_of(b"not allowed\n!") == "not?allowed??"
