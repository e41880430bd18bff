"""Block sync: catching up on committed blocks from peers.

A node that is behind (new, restarted, wiped, or partitioned for a while)
learns the peers' tips from their periodic status messages, then fetches
committed blocks with their commit certificates in batches. Each block is
checked before it is applied:

- the certificate is for this height and exactly this block hash;
- a quorum of the validator set of that height signed it;
- the block re-executes to the state, tx and results roots in its header
  (done by the engine through the application when the block is applied).

A peer that serves anything that fails these checks is penalised and the
batch is refetched from another peer; nothing it sent is applied. Read-only
nodes sync the same way and never vote.

Wire formats (canonical msgpack):

    status   [height, block_hash]                         broadcast
    request  [from_height, max_blocks]                    request
    response [[block_bytes, certificate_bytes], ...]      reply
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from consensus.app import Application
from consensus.messages import (
    CommitCertificate,
    VerificationError,
    decode_certificate,
)
from state.block import MAX_BLOCK_BYTES, Block, decode_block
from state.codec import (
    DecodeError,
    check_array,
    check_bytes,
    check_uint,
    decode,
    encode,
)

log = logging.getLogger("consensus.sync")

STATUS_INTERVAL_S = 2.0
REQUEST_TIMEOUT_S = 10.0
MAX_BLOCKS_PER_REQUEST = 64
MAX_RESPONSE_BYTES = 4 << 20
MAX_STATUS_BYTES = 128

Request = Callable[[bytes, bytes, float], Awaitable[bytes]]
ApplyCommit = Callable[[CommitCertificate, Block, bytes], Awaitable[str | None]]


class SyncError(Exception):
    """A peer's answer that cannot be used; the peer is penalised."""


def encode_status(height: int, block_hash: bytes) -> bytes:
    return encode([height, block_hash])


def decode_status(body: bytes) -> tuple[int, bytes]:
    value = decode(body, MAX_STATUS_BYTES)
    check_array(value, 2, "status")
    return check_uint(value[0], "height"), check_bytes(value[1], "hash", 32)


def serve_blocks(
    body: bytes,
    block_bytes: Callable[[int], bytes | None],
    commit_bytes: Callable[[int], bytes | None],
) -> bytes:
    """Answer a block request from the local store, bounded in count and bytes."""
    value = decode(body, 64)
    check_array(value, 2, "request")
    start = check_uint(value[0], "from_height")
    count = min(check_uint(value[1], "max_blocks"), MAX_BLOCKS_PER_REQUEST)
    out, size = [], 0
    for height in range(max(start, 1), max(start, 1) + count):
        block, commit = block_bytes(height), commit_bytes(height)
        if block is None or commit is None:
            break
        size += len(block) + len(commit) + 16
        if out and size > MAX_RESPONSE_BYTES:
            break
        out.append([block, commit])
    return encode(out)


class BlockSync:
    def __init__(
        self,
        chain_id: str,
        app: Application,
        request: Request,
        peers: Callable[[], list[bytes]],
        apply_commit: ApplyCommit,
        penalize: Callable[[bytes, str], None],
    ):
        self.chain_id = chain_id
        self.app = app
        self.request = request
        self.peers = peers
        self.apply_commit = apply_commit
        self.penalize = penalize
        self.peer_tips: dict[bytes, int] = {}
        self.target = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # --- lifecycle ---

    def start(self) -> None:
        self._task = asyncio.create_task(self.run(), name="block-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    # --- inputs ---

    def on_status(self, peer: bytes, body: bytes) -> None:
        """A peer's claim of its tip. It is unsigned, so it only says whom to
        ask: it never becomes the sync target, and it is forgotten when the
        peer leaves or fails to serve the blocks it claimed."""
        height, _ = decode_status(body)
        self.peer_tips[peer] = height
        if height > self.app.last_height():
            self._wake.set()

    def request_sync(self, target: int) -> None:
        """A verified reason to sync (a commit certificate, or f+1 validators
        at later heights): the target holds until reached."""
        if target > self.target:
            self.target = target
        self._wake.set()

    def known_tips(self) -> int:
        """How many connected peers have said where their chain is."""
        connected = set(self.peers())
        return sum(1 for p in self.peer_tips if p in connected)

    def agreed_tip(self, agree: int) -> int:
        """The highest height that at least `agree` connected peers claim, so
        that fewer than `agree` liars cannot raise it."""
        connected = set(self.peers())
        tips = sorted((h for p, h in self.peer_tips.items() if p in connected),
                      reverse=True)  # fmt: skip
        return tips[agree - 1] if len(tips) >= agree else 0

    def forget_peer(self, peer: bytes) -> None:
        self.peer_tips.pop(peer, None)

    # --- the loop ---

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.app.last_height() < self.best_tip():
                if not await self.fetch_round():
                    # No peer could help just now; wait for news or retry soon.
                    try:
                        await asyncio.wait_for(self._wake.wait(), STATUS_INTERVAL_S)
                    except TimeoutError:
                        pass
                    self._wake.clear()

    def best_tip(self) -> int:
        connected = set(self.peers())
        tips = [h for p, h in self.peer_tips.items() if p in connected]
        return max([self.target if connected else 0, *tips])

    @property
    def syncing(self) -> bool:
        return self.best_tip() > self.app.last_height()

    async def fetch_round(self) -> bool:
        """Fetch and apply one batch from some peer ahead of us; False if none."""
        height = self.app.last_height()
        candidates = [
            p for p in self.peers() if self.peer_tips.get(p, self.target) > height
        ]
        if not candidates:
            return False
        peer = random.choice(candidates)
        body = encode([height + 1, MAX_BLOCKS_PER_REQUEST])
        try:
            reply = await self.request(peer, body, REQUEST_TIMEOUT_S)
            applied = await self.apply_batch(peer, reply, height + 1)
        except SyncError as exc:
            log.warning(
                "sync peer refused peer=%s height=%d reason=%r",
                peer.hex()[:8],
                height + 1,
                str(exc),
            )
            self.penalize(peer, str(exc))
            self.peer_tips.pop(peer, None)
            return False
        except (TimeoutError, ConnectionError, OSError) as exc:
            log.info(
                "sync request failed peer=%s reason=%s", peer.hex()[:8], exc.__class__
            )
            self.peer_tips.pop(peer, None)
            return False
        if applied == 0:
            self.peer_tips[peer] = height  # it has nothing beyond our tip
            return False
        log.info(
            "sync applied peer=%s from=%d to=%d target=%d",
            peer.hex()[:8],
            height + 1,
            height + applied,
            self.best_tip(),
        )
        return True

    async def apply_batch(self, peer: bytes, reply: bytes, first: int) -> int:
        try:
            # One block may pass the soft response limit on its own.
            entries = decode(reply, MAX_RESPONSE_BYTES + MAX_BLOCK_BYTES + 4096)
        except DecodeError as exc:
            raise SyncError(f"undecodable response: {exc}") from None
        if type(entries) is not list or len(entries) > MAX_BLOCKS_PER_REQUEST:
            raise SyncError("response is not a list of blocks")

        applied = 0
        for offset, entry in enumerate(entries):
            height = first + offset
            if self.app.last_height() >= height:
                continue  # the engine committed it meanwhile
            certificate, block, block_bytes = self.check_entry(entry, height)
            reason = await self.apply_commit(certificate, block, block_bytes)
            if reason is not None:
                raise SyncError(f"block {height} refused: {reason}")
            applied += 1
        return applied

    def check_entry(
        self, entry: object, height: int
    ) -> tuple[CommitCertificate, Block, bytes]:
        try:
            check_array(entry, 2, "entry")
            block_bytes = check_bytes(entry[0], "block")
            block = decode_block(block_bytes)
            certificate = decode_certificate(entry[1])
        except (DecodeError, ValueError) as exc:
            raise SyncError(f"malformed block {height}: {exc}") from None

        # The certificate must be for exactly this height and this block.
        if block.height != height or certificate.height != height:
            raise SyncError(f"asked for height {height}, got {block.height}")
        if certificate.block_hash != block.hash:
            raise SyncError(f"certificate of height {height} names another block")
        # A quorum of the validators of that height must have signed it.
        try:
            certificate.verify(self.chain_id, self.app.validators(height))
        except VerificationError as exc:
            raise SyncError(f"certificate of height {height}: {exc}") from None
        return certificate, block, block_bytes
