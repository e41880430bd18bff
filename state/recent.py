"""The hashes of recently committed transactions, for the replay check.

A transaction that is not expired at time `now` can only be a replay of one
committed less than MAX_TTL_S seconds of block time before `now`: a block at
time t admits a transaction only if t < expires_at <= t + MAX_TTL_S, so
expires_at > now means t > now - MAX_TTL_S. Keeping the hashes of that window
in memory answers the replay check of every admitted transaction (twice per
transaction: in the mempool and in the block) without a database read, which
is a missed lookup and costs about as much as the rest of the check.

The window is exact only for a `now` it covers: after the node starts it
holds nothing committed before, so until MAX_TTL_S past the tip's time the
store reads its transaction index instead; the same holds when blocks are
dropped from the window, by age or because it holds MAX_RECENT hashes.
"""

from __future__ import annotations

from collections import deque

from state.tx import MAX_TTL_S

# At most this many hashes in memory (about 100 bytes each); a busier hour
# falls back to the database for what the window no longer holds.
MAX_RECENT = 500_000


class RecentTxs:
    """Hashes committed in the last MAX_TTL_S seconds of block time."""

    def __init__(self, exact_from_s: int):
        # Queries at now_s >= exact_from_s are answered from memory.
        self.exact_from_s = exact_from_s
        self._blocks: deque[tuple[int, list[bytes]]] = deque()
        self._hashes: set[bytes] = set()

    def __len__(self) -> int:
        return len(self._hashes)

    def covers(self, now_s: int) -> bool:
        return now_s >= self.exact_from_s

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._hashes

    def add(self, time_s: int, hashes: list[bytes]) -> None:
        """The transactions of a block committed at time_s."""
        if hashes:
            self._blocks.append((time_s, hashes))
            self._hashes.update(hashes)
        self._drop_before(time_s - MAX_TTL_S)

    def _drop_before(self, horizon_s: int) -> None:
        # Blocks at or before the horizon cannot hold a replay of anything
        # admissible from now on; past the size cap, the oldest go too.
        blocks = self._blocks
        while blocks and (blocks[0][0] <= horizon_s or len(self._hashes) > MAX_RECENT):
            time_s, hashes = blocks.popleft()
            self._hashes.difference_update(hashes)
            self.exact_from_s = max(self.exact_from_s, time_s + MAX_TTL_S)
