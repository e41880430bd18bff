"""The node's LevelDB database (plyvel), one per node.

Key layout, by first byte:

    s...                      ledger state (state.ledger), covered by the root
    b + height                block bytes
    c + height                commit certificate bytes (opaque here)
    r + height                receipts of the block
    t + tx_hash               height (8 bytes) + index (4 bytes) of a transaction
    h + account + height + index + event
                              [tx_hash, event, delta]: per-account history
    m + name                  chain metadata: height, hash, time, accumulator ...
    x + expires_at + account  the expiry index (state.records), not state

Heights, indexes and times are fixed-width big-endian so iteration is in order.

Everything one block changes goes into a single write batch written with
sync, so after a crash at any moment, kill -9 included, the database holds
either the previous height or the new one, complete, never a mix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import plyvel

from state.bounded import drop_oldest_quarter
from state.codec import decode, encode, encoder, sha256
from state.genesis import Genesis
from state.ledger import (
    KEY_PROGRAM,
    KEY_VALIDATORS,
    STATE_PREFIX,
    Merchant,
    Program,
    merchant_key,
    past_validator_key,
)
from state.recent import RecentTxs
from state.root import Accumulator, ElementMemo
from state.tx import MAX_TTL_S

if TYPE_CHECKING:
    from state.block import Block
    from state.execute import BlockResult

_META_HEIGHT = b"mheight"
_META_HASH = b"mhash"
_META_TIME = b"mtime"
_META_ACC = b"macc"
_META_CHAIN = b"mchain"
_META_GENESIS = b"mgenesis"
_META_FORMAT = b"mformat"

# The chain format this code reads and writes. A database without the marker
# is of format 1, whose state still held the expiry index (`sx`): its state
# roots cannot be reproduced by this code, so it is refused, not misread.
CHAIN_FORMAT = 2


# State entries the store keeps in memory for execution (see Store.get_state).
STATE_CACHE_ENTRIES = 100_000

# The last byte of a history key: the event's place in its receipt.
_EVENT_NUMBER = [bytes([n]) for n in range(256)]


class StoreError(Exception):
    """The database cannot be used: wrong chain, or damaged."""


def h8(n: int) -> bytes:
    return n.to_bytes(8, "big")


def validators_hash(validators: list[list]) -> bytes:
    return sha256(b"perkchain/validators/v1\x00" + encode(validators))


class Store:
    def __init__(self, path: str | os.PathLike, genesis: Genesis):
        os.makedirs(path, exist_ok=True)
        self.path = str(path)
        try:
            # Most reads during execution look for keys that do not exist yet (a
            # new order, a new account, a transaction hash): a Bloom filter
            # answers those without touching the disk blocks.
            self.db = plyvel.DB(
                self.path,
                create_if_missing=True,
                bloom_filter_bits=10,
                lru_cache_size=64 << 20,
                write_buffer_size=16 << 20,
            )
        except plyvel.Error as exc:
            raise StoreError(f"cannot open database at {path}: {exc}") from None
        self.genesis = genesis
        # State entries as of the last commit, by key (None: deleted since it
        # was read); filled by reads, kept true by every commit, bounded by
        # STATE_CACHE_ENTRIES (about 30 MB at most).
        self._state_cache: dict[bytes, bytes | None] = {}
        self.elements = ElementMemo()
        if self.db.get(_META_HEIGHT) is None:
            self._write_genesis(genesis)
        self._load_meta(genesis)

    def close(self) -> None:
        if not self.db.closed:
            self.db.close()

    # --- metadata ---

    def _load_meta(self, genesis: Genesis) -> None:
        found = self.db.get(_META_FORMAT)
        chain_format = 1 if found is None else int.from_bytes(found, "big")
        if chain_format != CHAIN_FORMAT:
            raise StoreError(
                f"database at {self.path} is of chain format {chain_format}; this "
                f"version reads format {CHAIN_FORMAT}: start the chain anew, or "
                f"run the version that wrote it"
            )
        if self.db.get(_META_GENESIS) != genesis.hash:
            raise StoreError(
                f"database at {self.path} belongs to another genesis "
                f"(chain {self.db.get(_META_CHAIN, b'?').decode()!r})"
            )
        self.chain_id = genesis.chain_id
        self.genesis_hash = genesis.hash
        self.height = int.from_bytes(self.db.get(_META_HEIGHT), "big")
        self.block_hash = self.db.get(_META_HASH)
        self.time_ms = int.from_bytes(self.db.get(_META_TIME), "big")
        self.accumulator = Accumulator.from_bytes(self.db.get(_META_ACC))
        self.validators = decode(self.db.get(KEY_VALIDATORS), 1 << 20)
        self.validators_hash = validators_hash(self.validators)
        # Nothing committed before this start is in memory: until MAX_TTL_S
        # past the tip, the replay check reads the transaction index.
        self.recent = RecentTxs(
            0 if self.height == 0 else self.time_ms // 1000 + MAX_TTL_S
        )

    @property
    def state_root(self) -> bytes:
        return self.accumulator.root()

    def _write_genesis(self, genesis: Genesis) -> None:
        entries: dict[bytes, bytes] = {
            KEY_PROGRAM: encode(
                Program(
                    list(genesis.admins),
                    genesis.program.transfers_allowed,
                    genesis.program.utc_offset_minutes,
                    genesis.program.min_validators,
                ).to_wire()
            ),
            KEY_VALIDATORS: encode([[v.name, v.key] for v in genesis.validators]),
        }
        for v in genesis.validators:
            entries[past_validator_key(v.key)] = encode([v.name])
        for m in genesis.merchants:
            entries[merchant_key(m.key)] = encode(
                Merchant(m.name, m.rate, m.daily_cap).to_wire()
            )
        acc = Accumulator()
        with self.db.write_batch(transaction=True, sync=True) as batch:
            for key in sorted(entries):
                acc.add(key, entries[key])
                batch.put(key, entries[key])
            batch.put(_META_CHAIN, genesis.chain_id.encode())
            batch.put(_META_GENESIS, genesis.hash)
            batch.put(_META_FORMAT, h8(CHAIN_FORMAT))
            batch.put(_META_HEIGHT, h8(0))
            batch.put(_META_HASH, genesis.hash)
            batch.put(_META_TIME, h8(genesis.genesis_time_ms))
            batch.put(_META_ACC, acc.to_bytes())

    # --- reads used by execution ---

    def get_state(self, key: bytes) -> bytes | None:
        """A state entry as of the last commit.

        Execution reads the same records block after block (a customer buys
        again, a merchant's counters, the program). A LevelDB read costs a few
        microseconds, several per transaction; the cache answers repeats from
        memory. Only commit_block writes state, and it updates every cached
        key it writes, so the cache never differs from the database.
        """
        cache = self._state_cache
        if key in cache:
            return cache[key]
        value = self.db.get(key)
        # Absent keys are not kept: most are new orders, read once, and a
        # miss costs little (the Bloom filter answers it).
        if value is not None:
            if len(cache) >= STATE_CACHE_ENTRIES:
                drop_oldest_quarter(cache)
            cache[key] = value
        return value

    def is_committed(self, tx_hash: bytes) -> bool:
        """True if a transaction with this hash is in a committed block.

        This is the replay check. The transaction index is kept for ever, so it
        covers the replay window (committed hashes until they expire) and more:
        a transaction past its expiry is refused as expired before this matters.
        """
        return self.db.get(b"t" + tx_hash) is not None

    def is_replay(self, tx_hash: bytes, now_s: int) -> bool:
        """is_committed for a transaction the caller found not expired at
        now_s: from memory when the recent window covers now_s (state.recent)."""
        if self.recent.covers(now_s):
            return tx_hash in self.recent
        return self.is_committed(tx_hash)

    # --- commit ---

    def commit_block(self, block: Block, commit: bytes, result: BlockResult) -> None:
        """Write block, commit certificate, state and indexes in one synced batch."""
        height = block.height
        if height != self.height + 1:
            raise StoreError(f"commit of height {height} on top of {self.height}")
        hb = h8(height)

        with self.db.write_batch(transaction=True, sync=True) as batch:
            put = batch.put
            for key, value in result.state_writes.items():
                if value is None:
                    batch.delete(key)
                else:
                    put(key, value)

            put(b"b" + hb, block.encode())
            put(b"c" + hb, commit)
            put(b"r" + hb, result.receipts_bytes)
            pack = encoder()
            for index, (tx, receipt) in enumerate(
                zip(result.txs, result.receipts, strict=True)
            ):
                position = hb + index.to_bytes(4, "big")
                tx_hash = tx.hash
                put(b"t" + tx_hash, position)
                n = 0
                for name, account, delta in receipt.events:
                    key = b"h" + account + position + _EVENT_NUMBER[n]
                    put(key, pack((tx_hash, name, delta)))
                    n += 1

            batch.put(_META_HEIGHT, hb)
            batch.put(_META_HASH, block.hash)
            batch.put(_META_TIME, h8(block.header.time_ms))
            batch.put(_META_ACC, result.accumulator.to_bytes())

        cache = self._state_cache
        for key, value in result.state_writes.items():
            if key in cache:
                cache[key] = value
        self.height = height
        self.block_hash = block.hash
        self.time_ms = block.header.time_ms
        self.accumulator = result.accumulator
        self.recent.add(block.header.time_s, [tx.hash for tx in result.txs])
        if KEY_VALIDATORS in result.state_writes:
            self.validators = decode(result.state_writes[KEY_VALIDATORS], 1 << 20)
            self.validators_hash = validators_hash(self.validators)

    # --- reads for the API and sync ---

    def block_bytes(self, height: int) -> bytes | None:
        return self.db.get(b"b" + h8(height))

    def commit_bytes(self, height: int) -> bytes | None:
        return self.db.get(b"c" + h8(height))

    def receipts_bytes(self, height: int) -> bytes | None:
        return self.db.get(b"r" + h8(height))

    def tx_location(self, tx_hash: bytes) -> tuple[int, int] | None:
        raw = self.db.get(b"t" + tx_hash)
        if raw is None:
            return None
        return int.from_bytes(raw[:8], "big"), int.from_bytes(raw[8:12], "big")

    def history(
        self, account: bytes, before: bytes | None = None, limit: int = 50
    ) -> Iterator[tuple[bytes, int, int, bytes, str, int]]:
        """An account's events, newest first: (cursor, height, index, tx_hash,
        event, delta). Pass a returned cursor as `before` for the next page."""
        prefix = b"h" + account
        if before is not None and not before.startswith(prefix):
            raise ValueError("cursor does not belong to this account")
        stop = before if before is not None else prefix + b"\xff" * 13
        it = self.db.iterator(start=prefix, stop=stop, reverse=True)
        for n, (key, value) in enumerate(it):
            if n >= limit:
                break
            tx_hash, name, delta = decode(value, 256)
            height = int.from_bytes(key[33:41], "big")
            index = int.from_bytes(key[41:45], "big")
            yield key, height, index, tx_hash, name, delta

    def state_items(self) -> Iterator[tuple[bytes, bytes]]:
        """Every ledger entry in key order: what an auditor sums for the root."""
        yield from self.db.iterator(prefix=STATE_PREFIX)
