"""`perk audit`: verify a whole chain from genesis, trusting nothing but genesis.

For every block, in order, the audit checks:

- the hash link: the block's parent_hash is the previous block's hash (the
  first block's is the genesis hash);
- the commit certificate: a quorum of the validator set of that height signed
  a precommit for exactly this block hash;
- every transaction signature (nothing is taken from a cache);
- every root: the transactions are re-executed into a fresh ledger, and the
  recomputed tx root, state root and results root must equal the header's.

At the end the state root reached by replay is compared with the root the node
reports. The fresh ledger lives in a temporary folder, removed afterwards.
Blocks come from a node's own database (`--home`, node stopped) or from its
HTTP API (`--api`), fetched ahead in parallel while earlier ones replay.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field

from consensus.messages import decode_certificate
from state.block import decode_block
from state.codec import DecodeError
from state.execute import Executor, InvalidBlock
from state.genesis import Genesis
from state.root import Accumulator
from state.store import Store

API_PREFETCH = 32


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


class Auditor:
    """Replays blocks one by one into a fresh ledger, checking each."""

    def __init__(self, genesis: Genesis):
        self._folder = tempfile.mkdtemp(prefix="perk-audit-")
        self.store = Store(self._folder, genesis)
        # A fresh executor has an empty signature cache: every signature is
        # verified.
        self.executor = Executor(self.store)
        self.report = AuditReport()
        self._started = time.perf_counter()

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self._folder, ignore_errors=True)

    def check(
        self,
        height: int,
        block_bytes: bytes,
        commit_bytes: bytes,
        receipts_bytes: bytes | None = None,
    ) -> bool:
        """Verify and apply the block at `height`; False (and a failure) if bad.

        `receipts_bytes`, when the source has them, must equal the receipts the
        replay produced: a node that serves edited receipts fails the audit."""
        report = self.report
        try:
            block = decode_block(block_bytes)
            certificate = decode_certificate(commit_bytes)
        except (DecodeError, ValueError) as exc:
            report.fail(f"height {height}: cannot read block or commit: {exc}")
            return False

        validators = [key for _, key in self.store.validators]
        try:
            if certificate.height != height or certificate.block_hash != block.hash:
                raise ValueError("the certificate is for another block")
            certificate.verify(self.store.chain_id, validators)
        except ValueError as exc:
            report.fail(f"height {height}: commit certificate invalid: {exc}")
            return False

        try:
            result = self.executor.execute_block(block)
        except InvalidBlock as exc:
            report.fail(f"height {height}: {exc.reason}")
            return False
        if receipts_bytes is not None and receipts_bytes != result.receipts_bytes:
            report.fail(f"height {height}: stored receipts differ from the replay")
            return False
        self.store.commit_block(block, commit_bytes, result)

        report.blocks += 1
        report.commits += 1
        report.transactions += len(block.txs)
        report.signatures += len(block.txs) + len(certificate.signatures)
        return True

    def finish(self, expected_state_root: bytes | None) -> AuditReport:
        report = self.report
        report.seconds = time.perf_counter() - self._started
        report.state_root = self.store.state_root.hex()
        if expected_state_root is not None:
            report.expected_state_root = expected_state_root.hex()
            if report.ok and report.state_root != report.expected_state_root:
                report.fail(
                    f"replayed state root {report.state_root[:16]} differs from "
                    f"the node's {report.expected_state_root[:16]}"
                )
        return report


def audit_store(genesis: Genesis, store: Store) -> AuditReport:
    """Audit a node's own database (the node must be stopped).

    Besides replaying every block, the state entries the database holds are
    summed into a state root of their own: an edited balance or record shows
    as a mismatch even where the stored root was left alone."""
    auditor = Auditor(genesis)
    try:
        for height in range(1, store.height + 1):
            block, commit = store.block_bytes(height), store.commit_bytes(height)
            if block is None or commit is None:
                auditor.report.fail(f"height {height} is missing from the database")
                break
            receipts = store.receipts_bytes(height) or b""
            if not auditor.check(height, block, commit, receipts):
                break
        report = auditor.finish(store.state_root)
    finally:
        auditor.close()
    held = Accumulator()
    for key, value in store.state_items():
        held.add(key, value)
    if report.ok and held.root().hex() != report.state_root:
        report.fail(
            f"the database's state entries sum to root {held.root().hex()[:16]}, "
            f"not the replayed {report.state_root[:16]}"
        )
    return report


async def audit_api(genesis: Genesis, api) -> AuditReport:
    """Audit through a node's HTTP API (`client.http.AsyncClient`)."""
    status = await api.status()
    if status["chain_id"] != genesis.chain_id:
        report = AuditReport()
        report.fail(f"the node serves chain {status['chain_id']!r}, not ours")
        return report
    tip = status["height"]
    expected = bytes.fromhex(status["state_root"])

    auditor = Auditor(genesis)
    fetches: dict[int, asyncio.Task] = {}
    try:
        for height in range(1, tip + 1):
            for ahead in range(height, min(height + API_PREFETCH, tip + 1)):
                if ahead not in fetches:
                    fetches[ahead] = asyncio.ensure_future(api.raw_block(ahead))
            block, commit, receipts = await fetches.pop(height)
            if not auditor.check(height, block, commit, receipts):
                break
        return auditor.finish(expected)
    finally:
        for task in fetches.values():
            task.cancel()
        auditor.close()
