"""The engine's way out: an outbox drained by one sender task.

The engine changes state synchronously and never waits on the network; what it
sends is queued here, in order, and a task hands each message to the node's
`broadcast` callable. A slow or failing peer link therefore never stalls or
interleaves consensus, and a message queued after another is sent after it
(a proposal before the proposer's own prevote).

Faults are test-only switches, all off by default, that make the engine
misbehave on purpose; nothing outside the test suite sets them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Broadcast = Callable[[str, bytes], Awaitable[None]]


@dataclass
class Faults:
    """Test-only switches; all off by default.

    drop_outbound_votes / drop_outbound_proposals: sign and record as usual,
    but never send that message type.
    halt_after_sign: stop dead, as if the process were killed, right after the
    signer guard recorded a signature and before the message reaches the
    write-ahead log or the network.
    on_signed: called with each proposal or vote at that same moment (a node's
    test switch ends the process there, see node.testing).
    """

    drop_outbound_votes: bool = False
    drop_outbound_proposals: bool = False
    halt_after_sign: bool = False
    on_signed: Callable[[object], None] | None = None


class Outbox:
    def __init__(self, broadcast: Broadcast, faults: Faults, log: logging.Logger):
        self._broadcast = broadcast
        self._faults = faults
        self._log = log
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    def cancel(self) -> None:
        """Stop sending now; whatever is still queued is never sent."""
        if self._task is not None:
            self._task.cancel()

    async def stop(self) -> None:
        self.cancel()
        task, self._task = self._task, None
        if task is not None:
            try:
                await task
            except asyncio.CancelledError:
                pass

    def send(self, msg_type: str, payload: bytes) -> None:
        f = self._faults
        if (msg_type == "vote" and f.drop_outbound_votes) or (
            msg_type == "proposal" and f.drop_outbound_proposals
        ):
            return
        self._queue.put_nowait((msg_type, payload))

    async def _run(self) -> None:
        while True:
            msg_type, payload = await self._queue.get()
            try:
                await self._broadcast(msg_type, payload)
            except Exception:
                self._log.exception("broadcast failed type=%s", msg_type)
