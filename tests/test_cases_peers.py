"""Failure case C13: oversized and trickling peer frames, on node processes.

A peer that holds an allowed key (the auditor's, its node stopped) completes
TLS and admission with a validator, then breaks the framing rules:

- a frame header declaring 4 GB, and a 50 MB vote: the connection is cut
  within a second of the header, before the body is read;
- a peer list of a million entries (each [b"", 0], 4 bytes on the wire, so
  the frame is smaller than the limit), as a frame of its own (v2) and as
  the body of a transaction gossip message (v3): the first is cut within a
  second, the second refused with the link kept, and neither costs the node
  the objects a million entries would make;
- a vote as large as a frame may be (v2): read, refused, forgotten;
- 1-byte frames, and a frame sent one byte at a time: the 1-byte frame is
  cut within a second, the trickle by the per-frame deadline.

Throughout, each attacked validator's resident memory grows by less than
20 MB, and no block is missed anywhere: every validator decides every height
of the attack in round 0 and never goes MAX_BLOCK_GAP_S without a block,
every node ends at one tip with one history, and the attacked validators
sign commits again.

`peer_attacks` is the scenario; a soak can call it with other sizes (each
call costs the attacking key 25 penalty points at v1 and v2, so calls must
be ten minutes apart or the key is banned first).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import threading
import time
import tracemalloc
from dataclasses import dataclass, field

import msgpack
import pytest

from node.config import NODE_CERT_FILE, load_config
from node.peering import MSG_TXS, MSG_VOTE
from p2p.framing import HEADER, Control, FrameReader, ProtocolError, decode_frame
from p2p.identity import NodeIdentity
from p2p.policing import Limits
from p2p.tls import client_context
from tests.cases_support import MemoryWatch
from tests.harness.cluster import launched_cluster

log = logging.getLogger("tests.network")

MB = 1 << 20
ATTACKER = "a1"  # whose key the attacker holds (its node is stopped)
PEER_LIST_ENTRIES = 1_000_000
HUGE_VOTE_BYTES = 50 * MB
DECLARED_4GB = 0xFFFF_FFFF
TRICKLE_PAUSE_S = 0.5
CUT_WITHIN_S = 1.0
MEMORY_BOUND = 20 * MB
# Idle chains make a block a second (the harness's heartbeat); a missed block
# shows as a height decided in a later round, and a stall as a long gap.
MAX_BLOCK_GAP_S = 3.0
COMMITTED = re.compile(r"committed height=(\d+) round=(\d+)")
# How long the node lets one frame take to arrive once it has begun.
FRAME_DEADLINE_S = Limits().frame_timeout


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("cases-peers") / "devnet"
    with launched_cluster(root, request) as running:
        yield running


class RawPeer:
    """A TLS connection under an allowed key, with nothing but bytes on top."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, cluster, victim: str, identity: NodeIdentity) -> RawPeer:
        node = cluster.nodes[victim]
        certificate = (node.home / NODE_CERT_FILE).read_text()
        context = client_context(identity, [certificate])
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", node.p2p_port, ssl=context), 10
        )
        frames = FrameReader(reader, max_frame=1024, idle_timeout=5, frame_timeout=5)
        welcome = await frames.read()
        assert welcome is not None and welcome.msg_type == Control.WELCOME, welcome
        return cls(reader, writer)

    async def send(self, data: bytes) -> bool:
        """False once the node has cut us off."""
        try:
            self.writer.write(data)
            await self.writer.drain()
            return True
        except (ConnectionError, ssl.SSLError):
            return False

    async def cut_within(self, seconds: float, what: str) -> float:
        """Seconds until the node closes the connection; fails past `seconds`."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            async with asyncio.timeout(seconds):
                while await self.reader.read(65536):
                    pass  # pings
        except (ConnectionError, ssl.SSLError):
            pass
        except TimeoutError:
            raise AssertionError(
                f"{what}: still connected after {seconds:g}s"
            ) from None
        finally:
            self.writer.transport.abort()
        return loop.time() - started

    async def still_open_after(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                while await self.reader.read(65536):
                    pass
            return False
        except TimeoutError:
            return True
        except (ConnectionError, ssl.SSLError):
            return False
        finally:
            self.writer.transport.abort()


def framed(payload: bytes) -> bytes:
    return HEADER.pack(len(payload)) + payload


def peer_list(entries: int) -> bytes:
    """A msgpack array of `entries` peers, each [b"", 0]: 4 bytes apiece."""
    return b"\xdd" + entries.to_bytes(4, "big") + b"\x92\xc4\x00\x00" * entries


def one_way(msg_type: int, body: bytes) -> bytes:
    return framed(msgpack.packb([msg_type, 0, body], use_bin_type=True))


@dataclass
class BlockClock:
    """When each height first showed on each watched node."""

    cluster: object
    names: list[str]
    seen: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> BlockClock:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def run(self) -> None:
        while not self._stop.wait(0.1):
            for name in self.names:
                height = self.cluster.height(name)
                heights = self.seen.setdefault(name, [])
                if height is not None and (not heights or heights[-1][0] < height):
                    heights.append((height, time.monotonic()))

    def longest_gap(self, name: str) -> float:
        times = [t for _, t in self.seen.get(name, [])]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        return max(gaps, default=0.0)


async def attack_v1(cluster, identity: NodeIdentity) -> dict[str, float]:
    """Offences that cut at once, and the trickle, against v1."""
    cuts = {}

    peer = await RawPeer.connect(cluster, "v1", identity)
    await peer.send(framed(b"\x00"))
    cuts["1-byte frame"] = await peer.cut_within(CUT_WITHIN_S, "1-byte frame")

    peer = await RawPeer.connect(cluster, "v1", identity)
    await peer.send(HEADER.pack(DECLARED_4GB))
    cuts["4 GB header"] = await peer.cut_within(CUT_WITHIN_S, "4 GB header")

    # A gossip frame one byte at a time: each byte well inside the idle
    # timeout, the frame as a whole past its deadline.
    peer = await RawPeer.connect(cluster, "v1", identity)
    data = one_way(MSG_TXS, msgpack.packb([b"x" * 200]))

    async def trickle() -> None:
        for byte in data:
            if not await peer.send(bytes([byte])):
                return
            await asyncio.sleep(TRICKLE_PAUSE_S)

    trickler = asyncio.create_task(trickle())
    cuts["trickled frame"] = await peer.cut_within(
        FRAME_DEADLINE_S + CUT_WITHIN_S, "trickled frame"
    )
    trickler.cancel()
    await asyncio.gather(trickler, return_exceptions=True)
    return cuts


async def attack_v2(
    cluster, identity: NodeIdentity, entries: int, vote_bytes: int
) -> dict[str, float]:
    """Oversized and amplifying frames against v2."""
    cuts = {}
    max_frame = load_config(cluster.nodes["v2"].home).p2p.max_frame_bytes

    # A 50 MB vote: the header alone tells; the body keeps coming meanwhile.
    peer = await RawPeer.connect(cluster, "v2", identity)
    await peer.send(HEADER.pack(vote_bytes + 16))
    sender = asyncio.create_task(send_some(peer, b"v" * (256 * 1024), 8))
    cuts["50 MB vote"] = await peer.cut_within(CUT_WITHIN_S, "50 MB vote")
    sender.cancel()
    await asyncio.gather(sender, return_exceptions=True)

    # The peer list as a frame: under the size limit, not a frame's shape.
    peer = await RawPeer.connect(cluster, "v2", identity)
    await peer.send(framed(peer_list(entries)))
    cuts["peer list frame"] = await peer.cut_within(CUT_WITHIN_S, "peer list frame")

    # As large a vote as a frame may carry: read whole, refused, forgotten;
    # a well-formed frame costs the peer points, not the link.
    peer = await RawPeer.connect(cluster, "v2", identity)
    await peer.send(one_way(MSG_VOTE, b"\x00" * (max_frame - 64)))
    assert await peer.still_open_after(1.0), "v2 cut the link for a bad vote"
    return cuts


async def attack_v3(cluster, identity: NodeIdentity, entries: int) -> None:
    """The peer list as the body of a transaction gossip message: refused
    when its array header is read, before a single entry is made."""
    peer = await RawPeer.connect(cluster, "v3", identity)
    await peer.send(one_way(MSG_TXS, peer_list(entries)))
    assert await peer.still_open_after(1.0), "v3 cut the link for bad gossip"


async def send_some(peer: RawPeer, chunk: bytes, count: int) -> None:
    for _ in range(count):
        if not await peer.send(chunk):
            return


def peer_attacks(
    cluster,
    entries: int = PEER_LIST_ENTRIES,
    vote_bytes: int = HUGE_VOTE_BYTES,
) -> None:
    """C13 against v1, v2 and v3 of a running cluster."""
    identity = NodeIdentity(cluster.nodes[ATTACKER].plan.seed)
    if cluster.nodes[ATTACKER].running:
        cluster.stop(ATTACKER)
    attacked = ["v1", "v2", "v3"]
    start = cluster.tip(cluster.validators)
    watches = {n: MemoryWatch(cluster.nodes[n].process.pid) for n in attacked}

    async def attack() -> list[dict[str, float]]:
        return await asyncio.gather(
            attack_v1(cluster, identity),
            attack_v2(cluster, identity, entries, vote_bytes),
            attack_v3(cluster, identity, entries),
        )

    with BlockClock(cluster, cluster.validators) as blocks:
        for watch in watches.values():
            watch.__enter__()
        try:
            cuts = asyncio.run(attack())
            log.info("cut off after %s", cuts)
        finally:
            for watch in watches.values():
                watch.__exit__(None, None, None)
        cluster.wait_for_blocks(3, cluster.validators, timeout=20)

    for offence, seconds in {**cuts[0], **cuts[1]}.items():
        limit = FRAME_DEADLINE_S + CUT_WITHIN_S if "trickle" in offence else 1.0
        assert seconds < limit, f"{offence}: cut after {seconds:.2f}s"
    for name, watch in watches.items():
        log.info("%s under attack: %s", name, watch.describe())
        assert watch.growth < MEMORY_BOUND, f"{name}: {watch.describe()}"
    end = cluster.tip(cluster.validators)
    for name in cluster.validators:
        gap = blocks.longest_gap(name)
        log.info("%s longest time without a block: %.2fs", name, gap)
        assert gap < MAX_BLOCK_GAP_S, f"{name} went {gap:.1f}s without a block"
        # A missed block shows as a height decided in a later round.
        late = {
            h: r for h, r in decided_rounds(cluster, name).items()
            if start < h <= end and r > 0
        }  # fmt: skip
        assert not late, f"{name}: heights decided after round 0: {late}"
    for name in attacked:
        cluster.wait_until_signing(name, after=start, timeout=20)
    cluster.start(ATTACKER)
    cluster.wait_for_height([ATTACKER], cluster.tip(cluster.validators), timeout=30)
    cluster.assert_consistent(cluster.members)


def decided_rounds(cluster, name: str) -> dict[int, int]:
    """The round in which each height was decided, from the node's log."""
    rounds = {}
    for line in cluster.log_matches(name, COMMITTED.pattern):
        height, round = map(int, COMMITTED.search(line).groups())
        rounds[height] = round
    return rounds


def test_c13_a_million_entry_frame_is_refused_by_its_length():
    """The decoder refuses the array when it reads its length: a few
    megabytes of frame never become a million objects."""
    payload = peer_list(PEER_LIST_ENTRIES)
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as refused:
            decode_frame(payload)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.reason == "bad_frame_shape"
    assert peak < MB, f"decoding allocated {peak} bytes"


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_c13_oversized_and_trickling_peer_frames(cluster):
    peer_attacks(cluster)
    for name in cluster.validators:
        assert not cluster.log_matches(name, "Traceback|level=error"), name
