"""The mempool: admitted transactions waiting for a block.

Admission does every check that needs no ledger state (form, size, chain id,
amount ranges, signature) plus expiry and the replay check, exactly once per
transaction: the signature result is cached by hash, so block execution does
not verify it again. The pool is bounded by count and by bytes; when full it
refuses (the API answers 503 with Retry-After) instead of growing.

Order is first come, first served, with one limit: when more is waiting than
a block holds, no signer takes more than its fair share of the block (its
count and its bytes over the number of signers waiting) while others wait,
so one account's flood of valid transactions delays others by a block, not
by the length of its queue. A block keeps the admission order of what it
takes. The price: a transaction that depends on an earlier one of another
signer (a redemption of coins an award is about to credit) may be placed
before it when that signer is over its share, and then fails; a client
waits for the earlier one to be final, as the API's wait option allows.
After each commit the committed transactions leave the pool and the rest are
rechecked for expiry.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import dataclass

from state.codes import Code
from state.store import Store
from state.tx import (
    SignatureCache,
    Transaction,
    TxRejected,
    check_expiry,
    check_stateless,
    decode_tx,
)

log = logging.getLogger("node.mempool")


class MempoolFull(Exception):
    """No room now; the client should retry after a short wait."""


@dataclass(frozen=True, slots=True)
class Admission:
    tx: Transaction
    # False when these exact bytes were already waiting (an idempotent resubmit).
    added: bool


class Mempool:
    def __init__(
        self,
        store: Store,
        signatures: SignatureCache,
        max_txs: int,
        max_bytes: int,
    ):
        self.store = store
        self.signatures = signatures
        self.max_txs = max_txs
        self.max_bytes = max_bytes
        self._txs: OrderedDict[bytes, Transaction] = OrderedDict()
        self._admitted_at: dict[bytes, float] = {}
        self._waiting_by_signer: dict[bytes, int] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_hash: bytes) -> bool:
        return tx_hash in self._txs

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, tx_hash: bytes) -> Transaction | None:
        return self._txs.get(tx_hash)

    # --- admission ---

    def decode(self, raw: bytes) -> Transaction:
        """Decode and check everything but the signature (cheap, no state)."""
        tx = decode_tx(raw)
        if tx.chain_id != self.store.chain_id:
            raise TxRejected(
                Code.WRONG_CHAIN,
                f"chain id {tx.chain_id!r} is not {self.store.chain_id!r}",
            )
        return tx

    def admit(self, tx: Transaction, now_s: int) -> Admission:
        """Admit a decoded transaction; raises TxRejected or MempoolFull.

        The signature is checked here unless it was verified before (the cache);
        callers that verify in a thread pool add to the cache first.
        """
        if tx.hash in self._txs:
            return Admission(self._txs[tx.hash], added=False)
        check_stateless(tx, self.store.chain_id, self.signatures)
        check_expiry(tx, now_s)
        if self.store.is_replay(tx.hash, now_s):
            raise TxRejected(Code.DUPLICATE_TX, "transaction is already committed")
        if len(self._txs) >= self.max_txs or self._bytes + len(tx.raw) > self.max_bytes:
            raise MempoolFull(
                f"mempool holds {len(self._txs)} transactions, {self._bytes} bytes"
            )

        self._txs[tx.hash] = tx
        self._admitted_at[tx.hash] = time.monotonic()
        self._bytes += len(tx.raw)
        waiting = self._waiting_by_signer
        waiting[tx.signer] = waiting.get(tx.signer, 0) + 1
        return Admission(tx, added=True)

    def waiting_longer_than(self, seconds: float, limit: int) -> list[Transaction]:
        """The oldest transactions that have waited over `seconds`, at most
        `limit` of them (the pool is in admission order)."""
        cutoff = time.monotonic() - seconds
        out = []
        for tx_hash, tx in self._txs.items():
            if len(out) >= limit or self._admitted_at[tx_hash] > cutoff:
                break
            out.append(tx)
        return out

    # --- block production ---

    def reap(self, max_txs: int, max_bytes: int) -> list[Transaction]:
        """Transactions for a block, at most `max_txs` and `max_bytes` (each
        counted with its 3 bytes of framing), in admission order, left in the
        pool until commit; no signer beyond its fair share of either while
        others wait (see the module docstring)."""
        if len(self._txs) <= max_txs and self._bytes + 3 * len(self._txs) <= max_bytes:
            return list(self._txs.values())
        signers = len(self._waiting_by_signer)
        share_txs = max(1, max_txs // signers)
        share_bytes = max_bytes // signers
        taken: dict[bytes, tuple[int, int]] = {}
        wanted: set[bytes] = set()
        over: list[Transaction] = []
        total_bytes = 0
        # One pass in admission order: each signer's first share, and the
        # rest noted for the second pass.
        for tx_hash, tx in self._txs.items():
            size = len(tx.raw) + 3
            count, held = taken.get(tx.signer, (0, 0))
            if count < share_txs and held + size <= share_bytes:
                if total_bytes + size > max_bytes:
                    break
                taken[tx.signer] = (count + 1, held + size)
                wanted.add(tx_hash)
                total_bytes += size
                if len(wanted) == max_txs:
                    break
            elif len(over) < max_txs:
                over.append(tx)
        # Room left (some signers wanted less than their share): the oldest of
        # the rest, then all back into admission order.
        for tx in over:
            size = len(tx.raw) + 3
            if len(wanted) == max_txs or total_bytes + size > max_bytes:
                break
            wanted.add(tx.hash)
            total_bytes += size
        out = []
        for tx_hash, tx in self._txs.items():
            if tx_hash in wanted:
                out.append(tx)
                if len(out) == len(wanted):
                    break
        return out

    def update(self, committed: list[Transaction], now_s: int) -> int:
        """Drop committed and expired transactions; return how many expired."""
        for tx in committed:
            self._remove(tx.hash)
        expired = [h for h, tx in self._txs.items() if tx.expires_at <= now_s]
        for tx_hash in expired:
            self._remove(tx_hash)
        if expired:
            log.info("mempool expired dropped=%d remaining=%d", len(expired), len(self))
        return len(expired)

    def remove(self, tx_hash: bytes) -> None:
        self._remove(tx_hash)

    def _remove(self, tx_hash: bytes) -> None:
        tx = self._txs.pop(tx_hash, None)
        if tx is not None:
            self._bytes -= len(tx.raw)
            del self._admitted_at[tx_hash]
            waiting = self._waiting_by_signer
            left = waiting[tx.signer] - 1
            if left:
                waiting[tx.signer] = left
            else:
                del waiting[tx.signer]
