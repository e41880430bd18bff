"""An in-memory network of consensus engines over the real ledger, for tests.

Each validator has its own LevelDB store (state.store.Store) in tmp_path, an
Executor, a mempool, a signer guard and a write-ahead log, exactly as a node
would; only the network and the clock are simulated. The network delivers each
broadcast to every other engine after a small delay drawn from a seeded
generator, and can cut links (per direction) or drop messages by a filter.

Clocks follow real time from a fixed start a little after genesis, with an
optional per-node skew, so block times are realistic and heartbeats work.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from client import builders
from client.keys import Keypair
from consensus.engine import ConsensusEngine
from consensus.messages import (
    PREVOTE,
    CommitCertificate,
    DoubleSignEvidence,
    decode_certificate,
    decode_proposal_message,
    decode_vote,
    encode_commit_message,
)
from consensus.outbox import Faults
from consensus.signer import SignerGuard
from consensus.timeouts import TimeoutConfig
from consensus.wal import WriteAheadLog
from state.block import Block, decode_block
from state.execute import BlockResult, Executor, InvalidBlock
from state.genesis import Genesis, parse_genesis
from state.store import Store
from state.tx import Transaction, decode_tx

CHAIN = "perk-consensus-test"
GENESIS_MS = 1_750_000_000_000
ADMIN = Keypair.from_seed(bytes([1]) * 32)
MERCHANT = Keypair.from_seed(bytes([2]) * 32)
VALIDATOR_KEYS = [Keypair.from_seed(bytes([100 + i]) * 32) for i in range(7)]

# Short timeouts keep the suite fast; the cap is what failed rounds grow to.
FAST = TimeoutConfig(
    propose_ms=150,
    propose_delta_ms=50,
    prevote_ms=60,
    prevote_delta_ms=30,
    precommit_ms=60,
    precommit_delta_ms=30,
    max_timeout_ms=400,
    block_interval_ms=5,
    heartbeat_ms=0,
    max_clock_drift_ms=5_000,
    idle_poll_ms=10,
    rebroadcast_ms=100,
)


def make_genesis(n: int) -> Genesis:
    return parse_genesis(
        {
            "chain_id": CHAIN,
            "genesis_time_ms": GENESIS_MS,
            "validators": [
                {"name": f"v{i}", "key": VALIDATOR_KEYS[i].address} for i in range(n)
            ],
            "admins": [ADMIN.address],
            "merchants": [
                {
                    "key": MERCHANT.address,
                    "name": "Corner Cafe",
                    "rate": 10,
                    "daily_cap": 10**12,
                }
            ],
        }
    )


def award(order: int, customer: Keypair | None = None, amount: int = 2_500) -> bytes:
    """A signed purchase award from the genesis merchant."""
    customer = customer or Keypair.from_seed(order.to_bytes(4, "big") * 8)
    expires = GENESIS_MS // 1000 + 3_000
    return builders.award_purchase(
        MERCHANT, CHAIN, expires, customer.public_key, f"order-{order}", amount
    )


class Clock:
    """Milliseconds that follow real time from a start just after genesis."""

    def __init__(self, skew_ms: int = 0):
        self.skew_ms = skew_ms
        self._t0 = time.monotonic()

    def __call__(self) -> int:
        elapsed = int((time.monotonic() - self._t0) * 1000)
        return GENESIS_MS + 1_000 + elapsed + self.skew_ms


class LedgerApp:
    """The Application protocol over a real Store and Executor."""

    def __init__(self, store: Store, clock: Clock):
        self.store = store
        self.executor = Executor(store)
        self.clock = clock
        self.mempool: dict[bytes, Transaction] = {}
        self.results: dict[bytes, BlockResult] = {}
        self.evidence: list[DoubleSignEvidence] = []
        self.sync_requests: list[int] = []
        self.on_sync: Callable[[int], None] | None = None

    def submit(self, raw: bytes) -> None:
        tx = decode_tx(raw)
        self.mempool[tx.hash] = tx

    def last_height(self) -> int:
        return self.store.height

    def last_block_time_ms(self) -> int:
        return self.store.time_ms

    def validators(self, height: int) -> list[bytes]:
        return [key for _, key in self.store.validators]

    def has_pending_txs(self) -> bool:
        return bool(self.mempool)

    def propose_block(self, height: int, time_ms: int, proposer: bytes) -> Block:
        assert height == self.store.height + 1
        block, result = self.executor.build_block(
            time_ms, proposer, list(self.mempool.values())
        )
        for tx, _, _ in result.dropped:
            self.mempool.pop(tx.hash, None)
        self.results[block.hash] = result
        return block

    def validate_block(self, block: Block) -> str | None:
        if block.hash in self.results:
            return None
        try:
            self.results[block.hash] = self.executor.execute_block(block)
        except InvalidBlock as exc:
            return exc.reason
        return None

    def commit_block(self, block: Block, certificate: CommitCertificate) -> None:
        if block.height <= self.store.height:
            return
        result = self.results.pop(block.hash, None)
        if result is None:
            result = self.executor.execute_block(block)
        self.store.commit_block(block, certificate.encode(), result)
        self.results.clear()
        for tx in result.txs:
            self.mempool.pop(tx.hash, None)

    def now_ms(self) -> int:
        return self.clock()

    def report_evidence(self, evidence: DoubleSignEvidence) -> None:
        self.evidence.append(evidence)

    def request_sync(self, target_height: int) -> None:
        self.sync_requests.append(target_height)
        if self.on_sync is not None:
            self.on_sync(target_height)


Filter = Callable[[int, int, str, bytes], bool]


class Network:
    """Delivers broadcasts between engines with seeded delays; links can be cut."""

    def __init__(self, seed: int = 1, delay_ms: tuple[float, float] = (0.2, 2.0)):
        self.rng = random.Random(seed)
        self.delay_ms = delay_ms
        self.engines: dict[int, ConsensusEngine] = {}
        self.cut: set[tuple[int, int]] = set()
        self.filters: list[Filter] = []
        self.sent: list[tuple[int, str, bytes]] = []
        self.refused: list[tuple[int, int, str, str]] = []
        # src -> fn(msg_type, payload) -> [(dsts, msg_type, payload), ...]: what
        # a Byzantine sender sends instead of its broadcast.
        self.rewrite: dict[int, Callable[[str, bytes], list]] = {}
        self._tasks: set[asyncio.Task] = set()

    def broadcaster(self, src: int):
        async def broadcast(msg_type: str, payload: bytes) -> None:
            self.sent.append((src, msg_type, payload))
            if src in self.rewrite:
                for dsts, out_type, out in self.rewrite[src](msg_type, payload):
                    self.send(src, dsts, out_type, out)
                return
            self.send(src, list(self.engines), msg_type, payload)

        return broadcast

    def send(self, src: int, dsts: Iterable[int], msg_type: str, payload: bytes):
        loop = asyncio.get_running_loop()
        for dst in dsts:
            if dst == src or (src, dst) in self.cut:
                continue
            if any(f(src, dst, msg_type, payload) for f in self.filters):
                continue
            delay = self.rng.uniform(*self.delay_ms) / 1000
            loop.call_later(delay, self._deliver, src, dst, msg_type, payload)

    def _deliver(self, src: int, dst: int, msg_type: str, payload: bytes) -> None:
        engine = self.engines.get(dst)
        if engine is None or (src, dst) in self.cut:
            return
        task = asyncio.ensure_future(self._handle(engine, src, dst, msg_type, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, engine, src, dst, msg_type, payload) -> None:
        reason = await engine.on_message(msg_type, payload, peer=src)
        if reason is not None:
            self.refused.append((src, dst, msg_type, reason))

    def isolate(self, node: int, nodes: Iterable[int]) -> None:
        for other in nodes:
            if other != node:
                self.cut |= {(node, other), (other, node)}

    def heal(self) -> None:
        self.cut.clear()
        self.filters.clear()

    def votes_by(self, src: int) -> list:
        return [decode_vote(p) for s, t, p in self.sent if s == src and t == "vote"]

    def proposals(self) -> list:
        return [
            decode_proposal_message(p)[0] for _, t, p in self.sent if t == "proposal"
        ]


class ErrorLog(logging.Handler):
    """Collects consensus log records at ERROR and above."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Node:
    def __init__(self, cluster: Cluster, index: int, signing: bool):
        self.cluster = cluster
        self.index = index
        self.home = cluster.root / f"n{index}"
        self.key = VALIDATOR_KEYS[index] if signing else None
        self.store = Store(self.home / "db", cluster.genesis)
        self.app = LedgerApp(self.store, Clock(cluster.skews.get(index, 0)))
        self.app.on_sync = lambda target: cluster.sync(self.index, target)
        self.signer = (
            SignerGuard(self.home / "signer.state", self.key.seed)
            if self.key is not None
            else None
        )
        self.wal = WriteAheadLog(self.home / "consensus.wal")
        self.faults = Faults()  # shared by every engine this node runs
        self.engine: ConsensusEngine | None = None

    def new_engine(self) -> ConsensusEngine:
        self.engine = ConsensusEngine(
            CHAIN,
            self.app,
            self.signer,
            self.cluster.network.broadcaster(self.index),
            self.cluster.timeouts,
            self.wal,
            logging.getLogger(f"consensus.n{self.index}"),
            self.faults,
        )
        return self.engine

    async def start(self, start_height: int | None = None) -> None:
        engine = self.new_engine()
        self.cluster.network.engines[self.index] = engine
        await engine.start(start_height)

    async def stop(self) -> None:
        self.cluster.network.engines.pop(self.index, None)
        if self.engine is not None:
            await self.engine.stop()

    @property
    def height(self) -> int:
        return self.store.height


class Cluster:
    """n validators (and optional read-only followers) on one Network."""

    def __init__(
        self,
        root: Path,
        n: int = 4,
        followers: int = 0,
        timeouts: TimeoutConfig = FAST,
        seed: int = 1,
        skews: dict[int, int] | None = None,
    ):
        self.root = root
        self.n = n
        self.timeouts = timeouts
        self.genesis = make_genesis(n)
        self.network = Network(seed)
        self.skews = skews or {}
        self.nodes = [Node(self, i, signing=i < n) for i in range(n + followers)]
        self.errors = ErrorLog()
        self._sync_tasks: set[asyncio.Task] = set()
        logging.getLogger("consensus").addHandler(self.errors)

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self, indexes: Iterable[int] | None = None) -> None:
        for i in indexes if indexes is not None else range(len(self.nodes)):
            await self.nodes[i].start()

    async def close(self) -> None:
        for node in self.nodes:
            await node.stop()
        for task in self._sync_tasks:
            task.cancel()
        await asyncio.sleep(0)
        for node in self.nodes:
            node.wal.close()
            node.store.close()
        logging.getLogger("consensus").removeHandler(self.errors)

    def submit(self, raw: bytes, indexes: Iterable[int] | None = None) -> None:
        """Give a transaction to every mempool (what tx gossip would do)."""
        for i in indexes if indexes is not None else range(len(self.nodes)):
            self.nodes[i].app.submit(raw)

    async def wait_height(
        self, height: int, indexes: Iterable[int] | None = None, timeout: float = 15
    ) -> None:
        nodes = [self.nodes[i] for i in indexes] if indexes is not None else self.nodes
        deadline = time.monotonic() + timeout
        while any(node.height < height for node in nodes):
            if time.monotonic() > deadline:
                heights = {node.index: node.height for node in nodes}
                raise AssertionError(f"height {height} not reached: {heights}")
            await asyncio.sleep(0.01)

    def block(self, index: int, height: int) -> Block:
        return decode_block(self.nodes[index].store.block_bytes(height))

    def certificate(self, index: int, height: int) -> CommitCertificate:
        return decode_certificate(self.nodes[index].store.commit_bytes(height))

    def assert_no_fork(self) -> int:
        """Every height held by two nodes has the same block, a certificate that
        verifies, and nodes at equal height have the same state root."""
        top = max(node.height for node in self.nodes)
        validators = [k.public_key for k in VALIDATOR_KEYS[: self.n]]
        for height in range(1, top + 1):
            hashes = set()
            for node in self.nodes:
                raw = node.store.block_bytes(height)
                if raw is None:
                    continue
                block = decode_block(raw)
                hashes.add(block.hash)
                cert = decode_certificate(node.store.commit_bytes(height))
                assert cert.block_hash == block.hash
                cert.verify(CHAIN, validators)
            assert len(hashes) <= 1, f"fork at height {height}"
        by_height: dict[int, set[bytes]] = {}
        for node in self.nodes:
            by_height.setdefault(node.height, set()).add(node.store.state_root)
        assert all(len(roots) == 1 for roots in by_height.values())
        return top

    def assert_no_errors(self) -> None:
        messages = [r.getMessage() for r in self.errors.records]
        assert not messages, messages

    def sync(self, index: int, target: int) -> None:
        """What a node's block sync does: fetch committed blocks from a peer that
        has them and feed them to the engine as "commit" messages."""
        task = asyncio.ensure_future(self._sync(index, target))
        self._sync_tasks.add(task)
        task.add_done_callback(self._sync_tasks.discard)

    async def _sync(self, index: int, target: int) -> None:
        node = self.nodes[index]
        peers = [p for p in self.nodes if p is not node]
        source = max(peers, key=lambda p: p.height)
        for height in range(node.height + 1, min(target, source.height) + 1):
            if node.engine is None or node.height >= height:
                continue
            payload = encode_commit_message(
                decode_certificate(source.store.commit_bytes(height)),
                source.store.block_bytes(height),
            )
            await node.engine.on_message("commit", payload, peer="sync")


def is_vote(vote_type: int) -> Filter:
    def match(src: int, dst: int, msg_type: str, payload: bytes) -> bool:
        return msg_type == "vote" and decode_vote(payload).vote_type == vote_type

    return match


def prevotes(votes: list) -> list:
    return [v for v in votes if v.vote_type == PREVOTE]
