"""How long consensus waits, and when it starts a new height.

Each round step waits at most a timeout for the messages it needs. Timeouts
grow linearly with the round, so that after enough failed rounds they are long
enough for any real network delay (the partial-synchrony assumption that gives
Tendermint its liveness), and never beyond a cap, so a validator that comes
back after a long outage is not left waiting minutes for the next round.

A new height starts `block_interval_ms` after the previous one started (the
time spent executing and committing counts towards it), and then only when
there is something to do: pending transactions, or `heartbeat_ms` since the
last block's time (an empty block that shows the chain is alive). The engine
counts that from the block's time by its own clock, or from when it committed
the block if that is longer ago, so a clock running behind does not hold a
validator back.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, fields

from consensus.signer import STEP_PRECOMMIT, STEP_PREVOTE, STEP_PROPOSE


@dataclass(frozen=True)
class TimeoutConfig:
    propose_ms: int = 3000
    propose_delta_ms: int = 500
    prevote_ms: int = 1000
    prevote_delta_ms: int = 500
    precommit_ms: int = 1000
    precommit_delta_ms: int = 500
    # No timeout ever exceeds this, whatever the round.
    max_timeout_ms: int = 30_000
    # Spacing of heights: from the start of one to the start of the next.
    block_interval_ms: int = 1000
    # Make an empty block when this long passed since the last block time.
    heartbeat_ms: int = 10_000
    # Prevote nil on a fresh proposal whose time is this far ahead of our clock.
    max_clock_drift_ms: int = 500
    # While waiting to start a height, check the mempool this often.
    idle_poll_ms: int = 100
    # Re-send this validator's votes of the current round this often, so a
    # peer that missed them (restarted, or a lost packet) can catch up.
    rebroadcast_ms: int = 1000

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 0:
                raise ValueError(f"{f.name}: expected a non-negative integer")
        for name in ("max_timeout_ms", "idle_poll_ms", "rebroadcast_ms"):
            if getattr(self, name) == 0:
                raise ValueError(f"{name}: must be positive")

    def timeout_ms(self, step: int, round: int) -> int:
        """The timeout of `step` in `round`: base + round * delta, capped."""
        if round < 0:
            raise ValueError("round must not be negative")
        if step == STEP_PROPOSE:
            base, delta = self.propose_ms, self.propose_delta_ms
        elif step == STEP_PREVOTE:
            base, delta = self.prevote_ms, self.prevote_delta_ms
        elif step == STEP_PRECOMMIT:
            base, delta = self.precommit_ms, self.precommit_delta_ms
        else:
            raise ValueError(f"step {step} has no timeout")
        return min(self.max_timeout_ms, base + delta * round)

    def start_delay_ms(
        self, since_start_ms: float | None, since_block_ms: int, pending_txs: bool
    ) -> int:
        """How long to wait before starting the next height; 0 means now.

        Rule: start once block_interval_ms passed since the previous height
        started (None: no height committed yet in this run) and there is pending
        work or a heartbeat is due; until then, look again after at most
        idle_poll_ms.
        """
        if since_start_ms is not None and since_start_ms < self.block_interval_ms:
            return max(1, math.ceil(self.block_interval_ms - since_start_ms))
        if pending_txs or since_block_ms >= self.heartbeat_ms:
            return 0
        return max(1, min(self.idle_poll_ms, self.heartbeat_ms - since_block_ms))


class Timers:
    """One-shot callbacks on the running event loop, cancelled all at once."""

    def __init__(self) -> None:
        self._handles: set[asyncio.TimerHandle] = set()

    def __len__(self) -> int:
        return len(self._handles)

    def call_later(self, delay_ms: int, callback: Callable[[], None]) -> None:
        def fire() -> None:
            self._handles.discard(handle)
            callback()

        handle = asyncio.get_running_loop().call_later(delay_ms / 1000, fire)
        self._handles.add(handle)

    def cancel_all(self) -> None:
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()
