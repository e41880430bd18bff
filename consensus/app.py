"""What consensus needs from the node: the Application protocol.

Consensus decides which block comes next; the application owns everything
else. It builds and executes blocks over the ledger (state.execute), keeps the
mempool, persists committed blocks with their certificates (state.store),
tells the time, and fetches blocks from peers when this node fell behind.
Consensus calls these methods from its event loop and expects them to return
promptly; none of them may call back into the engine.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from consensus.messages import CommitCertificate, DoubleSignEvidence
from state.block import Block


@runtime_checkable
class Application(Protocol):
    def last_height(self) -> int:
        """The height of the last committed block (0 at genesis)."""
        ...

    def last_block_time_ms(self) -> int:
        """The time of the last committed block (the genesis time at height 0)."""
        ...

    def validators(self, height: int) -> list[bytes]:
        """The public keys that vote on `height`, in order; each has equal power.

        The proposer of (height, round) is validators[(height + round) % n].
        """
        ...

    def has_pending_txs(self) -> bool:
        """True when the mempool holds transactions waiting for a block."""
        ...

    def propose_block(self, height: int, time_ms: int, proposer: bytes) -> Block:
        """Build and execute the next block from the mempool, at `time_ms`."""
        ...

    def validate_block(self, block: Block) -> str | None:
        """Execute `block` on the last committed state: None if it is valid,
        else the reason it is not. Deterministic: the same answer on every
        honest node."""
        ...

    def commit_block(self, block: Block, certificate: CommitCertificate) -> None:
        """Persist `block` with its certificate. Idempotent per height: a second
        call for a height already committed does nothing."""
        ...

    def now_ms(self) -> int:
        """This node's clock, in milliseconds since the Unix epoch."""
        ...

    def report_evidence(self, evidence: DoubleSignEvidence) -> None:
        """A validator signed two conflicting votes; `evidence` proves it."""
        ...

    def request_sync(self, target_height: int) -> None:
        """This node is behind: fetch committed blocks up to `target_height` and
        apply them (e.g. by feeding their "commit" messages to the engine)."""
        ...
