"""`perk audit`: verify a whole chain from genesis, trusting nothing but genesis.

For every block, in order, the audit checks:

- the hash link: the block's parent_hash is the previous block's hash (the
  first block's is the genesis hash);
- the commit certificate: a quorum of the validator set of that height signed
  a precommit for exactly this block hash;
- every transaction signature (nothing is cached from elsewhere);
- every root: the transactions are re-executed into a fresh ledger, and the
  recomputed tx root, state root and results root must equal the header's.

At the end the state root reached by replay is compared with the root the node
reports. The fresh ledger lives in a temporary folder that is removed after.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from consensus.messages import decode_certificate
from state.block import decode_block
from state.codec import DecodeError
from state.execute import Executor, InvalidBlock
from state.genesis import Genesis
from state.store import Store

# fetch(height) -> (block bytes, commit certificate bytes)
BlockSource = Callable[[int], tuple[bytes, bytes]]


@dataclass
class AuditReport:
    ok: bool = True
    blocks: int = 0
    transactions: int = 0
    signatures: int = 0
    commits: int = 0
    state_root: str = ""
    expected_state_root: str = ""
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def tx_per_s(self) -> float:
        return self.transactions / self.seconds if self.seconds else 0.0

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["tx_per_s"] = round(self.tx_per_s)
        doc["seconds"] = round(self.seconds, 3)
        return doc

    def fail(self, message: str) -> None:
        self.ok = False
        self.failures.append(message)


def audit_chain(
    genesis: Genesis,
    fetch: BlockSource,
    tip: int,
    expected_state_root: bytes | None = None,
    progress: Callable[[int], None] | None = None,
) -> AuditReport:
    """Replay blocks 1..tip from `fetch` into a fresh ledger, checking everything."""
    report = AuditReport()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="perk-audit-") as tmp:
        store = Store(tmp, genesis)
        try:
            replay(store, fetch, tip, report, progress)
            report.state_root = store.state_root.hex()
        finally:
            store.close()
    report.seconds = time.perf_counter() - started

    if expected_state_root is not None:
        report.expected_state_root = expected_state_root.hex()
        if report.ok and report.state_root != report.expected_state_root:
            report.fail(
                f"replayed state root {report.state_root[:16]} differs from the "
                f"node's {report.expected_state_root[:16]}"
            )
    return report


def replay(
    store: Store,
    fetch: BlockSource,
    tip: int,
    report: AuditReport,
    progress: Callable[[int], None] | None,
) -> None:
    # A fresh executor has an empty signature cache: every signature is checked.
    executor = Executor(store)
    for height in range(1, tip + 1):
        try:
            block_bytes, commit_bytes = fetch(height)
            block = decode_block(block_bytes)
            certificate = decode_certificate(commit_bytes)
        except (DecodeError, LookupError, ValueError) as exc:
            report.fail(f"height {height}: cannot read block or commit: {exc}")
            return

        validators = [key for _, key in store.validators]
        try:
            if certificate.height != height or certificate.block_hash != block.hash:
                raise ValueError("certificate is for another block")
            certificate.verify(store.chain_id, validators)
        except ValueError as exc:
            report.fail(f"height {height}: commit certificate invalid: {exc}")
            return

        try:
            result = executor.execute_block(block)
        except InvalidBlock as exc:
            report.fail(f"height {height}: {exc.reason}")
            return
        store.commit_block(block, commit_bytes, result)

        report.blocks += 1
        report.commits += 1
        report.transactions += len(block.txs)
        report.signatures += len(block.txs) + len(certificate.signatures)
        if progress is not None:
            progress(height)


def blocks_from_store(store: Store) -> BlockSource:
    """A block source over a node's own (stopped) database."""

    def fetch(height: int) -> tuple[bytes, bytes]:
        block, commit = store.block_bytes(height), store.commit_bytes(height)
        if block is None or commit is None:
            raise LookupError(f"height {height} is not in the database")
        return block, commit

    return fetch
