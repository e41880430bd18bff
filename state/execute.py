"""Block execution: from the state at height H and a list of transactions to the
receipts and the state root at H+1.

Two entry points, both pure with respect to the store (nothing is written until
`Store.commit_block`):

- `build_block`, for a proposer: admits what it can of the candidate
  transactions, drops the rest with their reason, and makes the header.
- `execute_block`, for everyone else: re-executes a proposed or synced block and
  refuses it (InvalidBlock) unless every transaction is admissible and every root
  in the header matches.

A transaction is admissible in a block at time T when its form, chain id,
amounts and signature are right, T < expires_at <= T + MAX_TTL_S, and its hash
is neither earlier in the block nor in any committed block. Admissible
transactions always enter the block; the ledger may still refuse them, which
the receipt records.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from state.block import (
    MAX_BLOCK_BYTES,
    MAX_BLOCK_TXS,
    Block,
    Header,
    Receipt,
    encode_array_of_encoded,
    merkle_root,
    results_root,
)
from state.codec import encode
from state.codes import Code
from state.genesis import Genesis
from state.ledger import Ledger, StateView
from state.program import Rules
from state.root import Accumulator
from state.store import Store
from state.tx import (
    SignatureCache,
    Transaction,
    TxRejected,
    check_expiry,
    check_stateless,
)


class InvalidBlock(Exception):
    """A block that no honest validator may accept; `reason` says which rule."""

    def __init__(self, height: int, reason: str):
        super().__init__(f"invalid block at height {height}: {reason}")
        self.height = height
        self.reason = reason


@dataclass
class BlockResult:
    """Everything a block changes, ready for one write batch."""

    height: int
    time_ms: int
    txs: list[Transaction]
    receipts: list[Receipt]
    state_writes: dict[bytes, bytes | None]
    accumulator: Accumulator
    dropped: list[tuple[Transaction, Code, str]] = field(default_factory=list)
    # (account, issuer, coins) that expired at the start of the block; not
    # state, for indexers (expiry has no transaction and so no receipt).
    expirations: list[tuple[bytes, bytes, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Each receipt is encoded once: for the results root and for the store.
        self.encoded_receipts = [encode(r.to_wire()) for r in self.receipts]
        self.state_root = self.accumulator.root()

    @property
    def results_root(self) -> bytes:
        return results_root(self.encoded_receipts)

    @property
    def receipts_bytes(self) -> bytes:
        return encode_array_of_encoded(self.encoded_receipts)


def genesis_rules(genesis: Genesis | None) -> Rules:
    """The loyalty rules that hold until a program change first writes them."""
    if genesis is None:
        return Rules()
    return genesis.program.loyalty


class Executor:
    def __init__(self, store: Store, signatures: SignatureCache | None = None):
        self.store = store
        # Not `signatures or ...`: an empty cache is falsy (it has a length).
        self.signatures = signatures if signatures is not None else SignatureCache()
        self.genesis_rules = genesis_rules(getattr(store, "genesis", None))

    # --- admission ---

    def admit(
        self, tx: Transaction, now_s: int, seen: set[bytes] | None = None
    ) -> None:
        """Raise TxRejected unless `tx` may enter a block at time now_s."""
        check_stateless(tx, self.store.chain_id, self.signatures)
        check_expiry(tx, now_s)
        if (seen is not None and tx.hash in seen) or self.store.is_replay(
            tx.hash, now_s
        ):
            raise TxRejected(Code.DUPLICATE_TX, "transaction was already included")

    # --- the two paths ---

    def build_block(
        self, time_ms: int, proposer: bytes, candidates: list[Transaction]
    ) -> tuple[Block, BlockResult]:
        """Make the next block from `candidates`, dropping inadmissible ones."""
        self.check_time(time_ms)
        now_s = time_ms // 1000
        admitted, dropped, seen = [], [], set()
        size = 0
        for tx in candidates:
            # A block must stay within what every peer's decoder accepts; the
            # rest waits in the mempool for the next block.
            size += len(tx.raw) + 3
            if len(admitted) >= MAX_BLOCK_TXS or size > MAX_BLOCK_BYTES - 1024:
                break
            try:
                self.admit(tx, now_s, seen)
            except TxRejected as rejected:
                dropped.append((tx, rejected.code, rejected.detail))
                continue
            seen.add(tx.hash)
            admitted.append(tx)

        result = self.run(time_ms, admitted)
        result.dropped = dropped
        header = self.make_header(time_ms, proposer, admitted, result)
        return Block(header, tuple(tx.raw for tx in admitted)), result

    def execute_block(self, block: Block) -> BlockResult:
        """Re-execute `block`; raise InvalidBlock unless it is exactly right."""
        header = block.header
        height = header.height
        if header.chain_id != self.store.chain_id:
            raise InvalidBlock(height, f"chain id {header.chain_id!r}")
        if height != self.store.height + 1:
            raise InvalidBlock(height, f"expected height {self.store.height + 1}")
        if header.parent_hash != self.store.block_hash:
            raise InvalidBlock(height, "parent hash does not match")
        try:
            self.check_time(header.time_ms)
        except ValueError as exc:
            raise InvalidBlock(height, str(exc)) from None
        if header.validators_hash != self.store.validators_hash:
            raise InvalidBlock(height, "validators hash does not match")

        if len(block.txs) > MAX_BLOCK_TXS:
            raise InvalidBlock(height, f"more than {MAX_BLOCK_TXS} transactions")
        if header.proposer not in {key for _, key in self.store.validators}:
            raise InvalidBlock(height, "proposer is not a validator")
        now_s = header.time_s
        txs, seen = [], set()
        for i, raw in enumerate(block.txs):
            try:
                tx = self.signatures.decode(raw)
                self.admit(tx, now_s, seen)
            except TxRejected as rejected:
                raise InvalidBlock(
                    height, f"tx {i} is not admissible: {rejected.code.slug}"
                ) from None
            seen.add(tx.hash)
            txs.append(tx)

        if merkle_root([tx.hash for tx in txs]) != header.tx_root:
            raise InvalidBlock(height, "tx root does not match")
        result = self.run(header.time_ms, txs)
        if result.state_root != header.state_root:
            raise InvalidBlock(height, "state root does not match execution")
        if result.results_root != header.results_root:
            raise InvalidBlock(height, "results root does not match execution")
        return result

    def check_time(self, time_ms: int) -> None:
        if time_ms <= self.store.time_ms:
            raise ValueError(
                f"block time {time_ms} is not after parent time {self.store.time_ms}"
            )

    # --- execution ---

    def run(self, time_ms: int, txs: list[Transaction]) -> BlockResult:
        """Apply admitted transactions in order; no store writes."""
        view = StateView(self.store.get_state)
        height = self.store.height + 1
        ledger = Ledger(
            view, time_ms // 1000, height, self.store.chain_id, self.genesis_rules
        )
        ledger.begin_block(self.scan_state)
        receipts = [ledger.apply(tx) for tx in txs]
        ledger.end_block()
        accumulator = self.store.accumulator.copy()
        writes = view.finish(accumulator, self.store.elements)
        result = BlockResult(
            self.store.height + 1, time_ms, txs, receipts, writes, accumulator
        )
        result.expirations = ledger.expirations
        return result

    def scan_state(self, start: bytes, stop: bytes):
        """Committed state keys in [start, stop), in order (the expiry index)."""
        return self.store.db.iterator(start=start, stop=stop, include_value=False)

    def make_header(
        self,
        time_ms: int,
        proposer: bytes,
        txs: list[Transaction],
        result: BlockResult,
    ) -> Header:
        return Header(
            chain_id=self.store.chain_id,
            height=result.height,
            time_ms=time_ms,
            parent_hash=self.store.block_hash,
            tx_root=merkle_root([tx.hash for tx in txs]),
            state_root=result.state_root,
            results_root=result.results_root,
            validators_hash=self.store.validators_hash,
            proposer=proposer,
        )
