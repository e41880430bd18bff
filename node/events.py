"""Committed-block events: waiters for finality and streams for subscribers.

Everything here runs on the node's event loop. A client waiting for its
transaction to become final holds a future keyed by the transaction hash; a
stream subscriber holds a bounded queue. A subscriber that falls behind by more
than its queue is dropped with a reason rather than letting memory grow.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from state.block import Block, Receipt
from state.tx import Transaction

log = logging.getLogger("node.events")


@dataclass(frozen=True)
class CommittedBlock:
    block: Block
    txs: list[Transaction]
    receipts: list[Receipt]
    state_root: bytes
    # (account, issuer, coins) that expired at the start of the block: expiry
    # has no receipt, so followers learn of it only here.
    expirations: list[tuple[bytes, bytes, int]] = field(default_factory=list)

    @property
    def height(self) -> int:
        return self.block.height


class Subscription:
    def __init__(self, bus: EventBus, maxsize: int):
        self._bus = bus
        self.queue: asyncio.Queue[CommittedBlock | None] = asyncio.Queue(maxsize)
        self.dropped_reason: str | None = None

    async def next(self) -> CommittedBlock | None:
        """The next committed block, or None once the subscription has ended."""
        return await self.queue.get()

    def close(self) -> None:
        self._bus._subscribers.discard(self)


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[Subscription] = set()
        self._waiters: dict[bytes, list[asyncio.Future]] = {}

    def subscribe(self, maxsize: int = 256) -> Subscription:
        sub = Subscription(self, maxsize)
        self._subscribers.add(sub)
        return sub

    def wait_for(self, tx_hash: bytes) -> asyncio.Future:
        """A future resolved with (height, index, receipt) when tx_hash commits."""
        future = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(tx_hash, []).append(future)
        return future

    def forget(self, tx_hash: bytes, future: asyncio.Future) -> None:
        waiting = self._waiters.get(tx_hash)
        if waiting and future in waiting:
            waiting.remove(future)
            if not waiting:
                del self._waiters[tx_hash]

    def publish(self, event: CommittedBlock) -> None:
        if self._waiters:
            for index, tx in enumerate(event.txs):
                for future in self._waiters.pop(tx.hash, ()):
                    if not future.done():
                        future.set_result((event.height, index, event.receipts[index]))
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.dropped_reason = "subscriber fell behind"
                self._subscribers.discard(sub)
                log.warning("stream subscriber dropped reason=slow height=%d",
                            event.height)  # fmt: skip
                _end(sub)

    def close(self) -> None:
        for sub in list(self._subscribers):
            _end(sub)
        self._subscribers.clear()
        for waiting in self._waiters.values():
            for future in waiting:
                future.cancel()
        self._waiters.clear()


def _end(sub: Subscription) -> None:
    """Wake the subscriber with the end marker, making room for it if needed."""
    while True:
        try:
            sub.queue.put_nowait(None)
            return
        except asyncio.QueueFull:
            sub.queue.get_nowait()
