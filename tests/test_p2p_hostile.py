"""Hostile peers: an allowed key driving a raw TLS connection to break the rules.

The attacker holds a real, allowed node key, so it gets through TLS and
admission; everything after that is hand-written bytes. Each offence must cut
the connection quickly, cost the attacker penalty points, and leave the node
serving its honest peer.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import msgpack
import pytest

from p2p import Limits, Network, NodeIdentity, PeerAddress, PeerUnavailable
from p2p.framing import HEADER, Control, Frame, FrameReader, encode_frame
from p2p.tls import client_context

LIMITS = Limits(
    handshake_timeout=2.0,
    dial_timeout=2.0,
    frame_timeout=0.5,
    idle_timeout=1.0,
    ping_interval=0.3,
    write_timeout=2.0,
    frames_per_second=100.0,
    frame_burst=100,
    bytes_per_second=256 * 1024 * 1024,
    send_queue_frames=4,
    backoff_initial=0.05,
    backoff_max=0.3,
    ban_threshold=30,
    ban_seconds=60.0,
    max_handshakes_per_address=4,
)
ECHO = 1
GOSSIP = 2

NODE = NodeIdentity(b"\x11" * 32)
HONEST = NodeIdentity(b"\x22" * 32)
ATTACKER = NodeIdentity(b"\x33" * 32)


def peer(identity: NodeIdentity, port: int | None = None) -> PeerAddress:
    host = None if port is None else "127.0.0.1"
    return PeerAddress(identity.public_key, host, port, identity.certificate_pem())


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "p2p.node"]


def short(identity: NodeIdentity) -> str:
    return identity.public_key[:4].hex()


@asynccontextmanager
async def node_with_honest_peer() -> AsyncIterator[tuple[Network, Network]]:
    """The node under attack, and an honest peer connected to it."""

    async def echo(peer_key: bytes, body: bytes) -> bytes:
        return body

    node = Network(
        NODE,
        "127.0.0.1",
        0,
        [peer(HONEST), peer(ATTACKER)],
        lambda key: True,
        limits=LIMITS,
        logger=logging.getLogger("p2p.node"),
    )
    node.register_request_handler(ECHO, echo)
    await node.start()
    honest = Network(
        HONEST,
        "127.0.0.1",
        0,
        [peer(NODE, node.listen_port)],
        lambda key: True,
        limits=LIMITS,
        logger=logging.getLogger("p2p.honest"),
    )
    try:
        await honest.start()
        await wait_until(lambda: node.connected_peers() == [HONEST.public_key])
        yield node, honest
    finally:
        await honest.stop()
        await node.stop()


class RawPeer:
    """A TLS connection under the attacker's key, with nothing but bytes on top."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.local_port: int = writer.get_extra_info("sockname")[1]

    @classmethod
    async def connect(cls, node: Network) -> tuple[RawPeer, Frame | None]:
        context = client_context(ATTACKER, [NODE.certificate_pem()])
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", node.listen_port, ssl=context), 5
        )
        frames = FrameReader(reader, max_frame=1024, idle_timeout=2, frame_timeout=2)
        return cls(reader, writer), await frames.read()

    async def send(self, data: bytes) -> None:
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass  # already cut off, which is what the tests wait for

    async def cut_within(self, seconds: float) -> float:
        """Seconds until the node closes on us; fails if it takes longer."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(seconds):
                while await self.reader.read(65536):
                    pass  # pings and the like
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.writer.transport.abort()
        return loop.time() - started


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="p2p")


async def still_serves(node: Network, honest: Network) -> None:
    assert node.connected_peers()[0] == HONEST.public_key
    assert await honest.request(NODE.public_key, ECHO, b"ok?", 2) == b"ok?"


def framed(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


async def test_each_offence_cuts_quickly_and_penalties_lead_to_ban(caplog) -> None:
    async with node_with_honest_peer() as (node, honest):
        attacker_key = ATTACKER.public_key
        # (reason logged, score after it, bytes sent; None means trickle).
        # The fourth offence takes the score to 35, past the ban threshold.
        offences: list[tuple[str, int | None, bytes | None]] = [
            ("slow_frame", 5, None),
            ("frame_too_large", 15, HEADER.pack(0xFFFF_FFFF)),
            ("malformed_frame", 25, framed(b"\xc1\xc1\xc1\xc1")),
            ("bad_frame_shape", None, framed(msgpack.packb({"type": 1}))),
        ]
        for reason, score_after, data in offences:
            raw, welcome = await RawPeer.connect(node)
            assert welcome is not None and welcome.msg_type == Control.WELCOME
            await wait_until(lambda: attacker_key in node.connected_peers())
            if data is None:
                # A byte every 0.2 s: each arrives well within the idle timeout,
                # but the frame as a whole misses its 0.5 s deadline.
                async def trickle(raw: RawPeer = raw) -> None:
                    for byte in framed(msgpack.packb([GOSSIP, 0, b"slow"])):
                        await raw.send(bytes([byte]))
                        await asyncio.sleep(0.2)

                trickler = asyncio.create_task(trickle())
                elapsed = await raw.cut_within(2.0)
                trickler.cancel()
                await asyncio.gather(trickler, return_exceptions=True)
                assert elapsed < LIMITS.frame_timeout + 0.5
            else:
                await raw.send(data)
                assert await raw.cut_within(1.0) < 0.5
            await wait_until(lambda: attacker_key not in node.connected_peers())
            expected = (
                f"peer disconnected peer={short(ATTACKER)}"
                f" addr=127.0.0.1:{raw.local_port} reason={reason}"
            )
            await wait_until(
                lambda line=expected: any(
                    seen.startswith(line) for seen in logged(caplog)
                )
            )
            if score_after is not None:
                assert node.penalty_score(attacker_key) == score_after
            await still_serves(node, honest)

        assert node.is_banned(attacker_key)
        assert any(line.startswith("peer banned") for line in logged(caplog))
        raw, answer = await RawPeer.connect(node)
        assert answer == Frame(Control.REFUSE, 0, b"banned")
        await raw.cut_within(1.0)
        assert any(
            line.startswith(f"peer refused peer={short(ATTACKER)}")
            and line.endswith("reason=banned")
            for line in logged(caplog)
        )
        await still_serves(node, honest)


async def test_silent_peer_is_dropped_after_idle_timeout(caplog) -> None:
    async with node_with_honest_peer() as (node, honest):
        raw, _ = await RawPeer.connect(node)
        elapsed = await raw.cut_within(LIMITS.idle_timeout + 1.0)
        assert elapsed >= LIMITS.idle_timeout - 0.2
        await wait_until(
            lambda: any("reason=idle_timeout" in line for line in logged(caplog))
        )
        # The honest peer was just as quiet, but its pings kept it connected.
        await still_serves(node, honest)


async def test_flooding_peer_is_disconnected(caplog) -> None:
    async with node_with_honest_peer() as (node, honest):
        raw, _ = await RawPeer.connect(node)
        burst = encode_frame(GOSSIP, 0, b"spam", 1024) * (LIMITS.frame_burst * 3)
        await raw.send(burst)
        assert await raw.cut_within(2.0) < 1.0
        await wait_until(
            lambda: any(
                line.startswith(f"peer disconnected peer={short(ATTACKER)}")
                and "reason=rate_limited" in line
                for line in logged(caplog)
            )
        )
        assert node.penalty_score(ATTACKER.public_key) == 10
        await still_serves(node, honest)


async def test_peer_that_stops_reading_does_not_hold_up_others(caplog) -> None:
    async with node_with_honest_peer() as (node, honest):
        delivered: list[int] = []

        async def count(peer_key: bytes, body: bytes) -> None:
            delivered.append(len(body))

        honest.register_handler(GOSSIP, count)
        raw, _ = await RawPeer.connect(node)  # ... and never reads again
        await wait_until(lambda: len(node.connected_peers()) == 2)
        big = b"x" * (256 * 1024)
        sent = 0
        with pytest.raises(PeerUnavailable):
            for _ in range(2_000):
                await node.broadcast(GOSSIP, big)
                sent += 1
                await node.send(ATTACKER.public_key, GOSSIP, big)
                await asyncio.sleep(0.005)
        await wait_until(
            lambda: any(
                line.startswith(f"peer disconnected peer={short(ATTACKER)}")
                and "reason=send_queue_full" in line
                for line in logged(caplog)
            )
        )
        await wait_until(lambda: len(delivered) == sent, timeout=10)
        assert sent > 0
        raw.writer.transport.abort()
        await still_serves(node, honest)


async def test_idle_connects_from_one_address_hold_only_its_share(caplog) -> None:
    """Connects that never start TLS take at most the per-address share of
    handshake slots; the rest are closed at once, logged once, not each."""
    caplog.set_level(logging.INFO)
    share = LIMITS.max_handshakes_per_address
    async with node_with_honest_peer() as (node, honest):
        idle = [
            await asyncio.open_connection("127.0.0.1", node.listen_port)
            for _ in range(share + 6)
        ]
        try:
            # The node answers a refused connect by closing it: end of file
            # (or a reset) at once. The held ones wait for their TLS, longer
            # than this look (the handshake timeout).
            async def closed_at_once(reader: asyncio.StreamReader) -> bool:
                try:
                    return await asyncio.wait_for(reader.read(1), 0.5) == b""
                except TimeoutError:
                    return False
                except ConnectionError:
                    return True

            assert LIMITS.handshake_timeout > 1.0
            closed = await asyncio.gather(*(closed_at_once(r) for r, _ in idle))
            assert sum(closed) == 6, closed

            refusals = [m for m in logged(caplog) if "too_many_handshakes" in m]
            assert len(refusals) == 1, refusals
            assert "reason=too_many_handshakes_from_address" in refusals[0]
            # The honest peer, admitted before, is served throughout.
            assert await honest.request(NODE.public_key, ECHO, b"ok?", 2) == b"ok?"
        finally:
            for _, writer in idle:
                writer.close()
