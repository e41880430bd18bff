"""The ledger as the consensus engine sees it: propose, validate, commit.

`LedgerApp` implements the engine's application interface over `state/`:

- propose_block: the proposer reaps the mempool and builds (executes) a block;
- validate_block: every validator re-executes a proposal before prevoting it;
- commit_block: the block, its commit certificate, all it changes and the
  loyalty indexer's entries for it (node.indexer) go to the store in one synced
  batch, then waiters and streams hear of it.

Execution results are kept by block hash between validate and commit, so a
block is executed once per node however many rounds it takes.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable

from node.events import CommittedBlock, EventBus
from node.indexer import Indexer
from node.mempool import Mempool
from state.block import MAX_BLOCK_BYTES, Block
from state.execute import BlockResult, Executor, InvalidBlock
from state.store import Store

log = logging.getLogger("node.app")

# Results of blocks executed but not yet committed, kept by hash. More than a
# handful means rounds are failing; the oldest are dropped.
MAX_PENDING_RESULTS = 16
# What the block builder fits into a block (state.execute keeps 1 KiB for the
# rest of the encoding); the mempool reaps within it.
BLOCK_TX_BYTES = MAX_BLOCK_BYTES - 1024


class LedgerApp:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        mempool: Mempool,
        events: EventBus,
        clock: Callable[[], int],
        max_block_txs: int,
        metrics=None,
    ):
        self.store = store
        self.executor = executor
        self.mempool = mempool
        self.events = events
        self.clock = clock
        self.max_block_txs = max_block_txs
        self.metrics = metrics
        self._results: dict[bytes, BlockResult] = {}
        self.indexer = Indexer(store, executor.signatures)
        self.indexer.catch_up()
        self.on_sync_needed: Callable[[int], None] | None = None
        self.on_evidence: Callable[[object], None] | None = None
        self.on_validators_changed: Callable[[], None] | None = None

    # --- what the engine reads ---

    def last_height(self) -> int:
        return self.store.height

    def last_block_time_ms(self) -> int:
        return self.store.time_ms

    def validators(self, height: int) -> list[bytes]:
        # The set is fixed by genesis; changes by vote arrive with the set in
        # state, at which point this reads the set effective at `height`.
        return [key for _, key in self.store.validators]

    def has_pending_txs(self) -> bool:
        return len(self.mempool) > 0

    def now_ms(self) -> int:
        return self.clock()

    # --- propose, validate, commit ---

    def propose_block(self, height: int, time_ms: int, proposer: bytes) -> Block:
        if height != self.store.height + 1:
            raise ValueError(f"cannot propose height {height} on {self.store.height}")
        time_ms = max(time_ms, self.store.time_ms + 1)
        started = time.perf_counter()
        block, result = self.executor.build_block(
            time_ms, proposer, self.mempool.reap(self.max_block_txs, BLOCK_TX_BYTES)
        )
        for tx, code, detail in result.dropped:
            self.mempool.remove(tx.hash)
            log.info(
                "mempool dropped tx=%s reason=%s detail=%r",
                tx.hash.hex()[:16],
                code.slug,
                detail,
            )
        self._keep(block.hash, result)
        self._observe_execution(started)
        return block

    def validate_block(self, block: Block) -> str | None:
        if block.hash in self._results:
            return None
        started = time.perf_counter()
        try:
            result = self.executor.execute_block(block)
        except InvalidBlock as exc:
            return exc.reason
        self._keep(block.hash, result)
        self._observe_execution(started)
        return None

    def commit_block(self, block: Block, certificate) -> None:
        if block.height <= self.store.height:
            return  # already committed (a repeated decision): nothing to do
        result = self._results.pop(block.hash, None)
        if result is None:
            result = self.executor.execute_block(block)
        commit_bytes = (
            certificate if isinstance(certificate, bytes) else certificate.encode()
        )
        validators_before = self.store.validators_hash
        self.store.commit_block(block, commit_bytes, self._with_index(block, result))
        self.indexer.committed(block.height)
        self._results.clear()
        if self.store.validators_hash != validators_before:
            log.info(
                "validator set changed height=%d validators=%d",
                block.height,
                len(self.store.validators),
            )
            if self.on_validators_changed is not None:
                self.on_validators_changed()
        self.mempool.update(result.txs, block.header.time_s)

        log.debug(
            "block stored height=%d hash=%s txs=%d time_ms=%d root=%s",
            block.height,
            block.hash.hex()[:16],
            len(result.txs),
            block.header.time_ms,
            result.state_root.hex()[:16],
        )
        if self.metrics is not None:
            self.metrics.observe_commit(
                block, result, len(self.mempool), self.mempool.size_bytes
            )
        self.events.publish(
            CommittedBlock(
                block,
                result.txs,
                result.receipts,
                result.state_root,
                result.expirations,
            )
        )

    def report_evidence(self, evidence) -> None:
        log.warning("double signing detected %s", evidence.describe())
        if self.on_evidence is not None:
            self.on_evidence(evidence)

    def request_sync(self, target_height: int) -> None:
        # Block sync keeps the highest target and wakes on every request, so a
        # retry of the same target (the engine repeats it) still gets through.
        if self.on_sync_needed is not None:
            self.on_sync_needed(target_height)

    # --- helpers ---

    def _with_index(self, block: Block, result: BlockResult) -> BlockResult:
        """`result` with the indexer's entries added to its writes.

        The store writes every entry of `state_writes` in the block's batch, so
        the index and the chain commit together and a crash cannot leave one
        without the other. The index keys (b"i") are outside the ledger's
        namespace and the state root is already computed, so the root and the
        result the executor keeps are unaffected.
        """
        writes = result.state_writes

        def state_after(key: bytes) -> bytes | None:
            return writes[key] if key in writes else self.store.get_state(key)

        entries = self.indexer.block_entries(
            block, result.txs, result.receipts, result.expirations, state_after
        )
        combined = copy.copy(result)
        combined.state_writes = {**writes, **entries}
        return combined

    def _keep(self, block_hash: bytes, result: BlockResult) -> None:
        self._results[block_hash] = result
        while len(self._results) > MAX_PENDING_RESULTS:
            self._results.pop(next(iter(self._results)))

    def _observe_execution(self, started: float) -> None:
        if self.metrics is not None:
            self.metrics.block_execution.observe(time.perf_counter() - started)
