"""The node process: wires the store, mempool, consensus, network and HTTP API.

`Node` is what `perk node run` starts. It is also what the HTTP handlers talk
to: submissions go through `submit`/`submit_batch`, reads through `store` and
`tx_status`, finality waits through `wait_final`.

Start-up order: store (opening it recovers from any crash), mempool, ledger
app, network, consensus, then the API, so nothing is served before the node
can answer. Shutdown runs the other way and closes the database last, after
the last block write has finished: a stop never leaves a partial block.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass

from node.app import LedgerApp
from node.config import Config, check_devnet_only
from node.events import EventBus
from node.mempool import Admission, Mempool, MempoolFull
from node.metrics import Metrics
from node.verify import verify_into_cache
from state.block import Receipt, decode_receipts
from state.codec import sha256
from state.codes import Code
from state.execute import Executor
from state.genesis import Genesis
from state.store import Store
from state.tx import SignatureCache, Transaction, TxRejected

log = logging.getLogger("node")

# A validator without a signer record waits at most this long to sync to the
# tip its peers report before it joins consensus, and says every so often
# that it is still waiting to hear from them.
SYNC_BEFORE_SIGNING_S = 120.0
# How long a validator without a signer record waits for every other
# validator to say how far it heard its key sign.
SIGNED_BY_WAIT_S = 30.0
# How far above its sync floor another validator's answer may place this key's
# last signature (see find_safe_start_height).
HEARD_CAP_MARGIN = 2
# A chain younger than this many heartbeats may be new even if not every
# validator has said so yet (one of them may be late to the launch).
NEW_CHAIN_HEARTBEATS = 3
DISCOVERY_LOG_S = 10.0
EVIDENCE_TTL_S = 600
# Recently refused transactions are remembered so `GET /v1/transactions/{hash}`
# can say why; bounded, oldest forgotten first.
MAX_REMEMBERED_REJECTIONS = 10_000


@dataclass(frozen=True)
class TxStatus:
    """Where a transaction stands, as `GET /v1/transactions/{hash}` reports it."""

    status: str  # "pending" | "committed" | "rejected"
    tx: Transaction | None = None
    height: int | None = None
    index: int | None = None
    receipt: Receipt | None = None
    code: Code | None = None
    detail: str = ""


class Node:
    def __init__(
        self,
        config: Config,
        genesis: Genesis,
        seed: bytes | None,
        manual_blocks: bool = False,
    ):
        # manual_blocks: start neither network nor consensus; blocks are made by
        # calling app.propose_block and app.commit_block (API unit tests).
        self.manual_blocks = manual_blocks
        self.config = config
        self.genesis = genesis
        self.seed = seed
        self.metrics = Metrics()
        # Read when /metrics is scraped, so it is never stale.
        self.metrics.peers.set_function(self.peer_count)
        self.events = EventBus()
        self.signatures = SignatureCache()
        self.store: Store | None = None
        self.mempool: Mempool | None = None
        self.app: LedgerApp | None = None
        self.engine = None
        self._engine_start: asyncio.Task | None = None
        self.network = None
        self.peering = None
        self.api_runner = None
        self.api_port: int | None = None
        self.started = False
        # Devnet-only controls never run on a real chain, however constructed.
        check_devnet_only(config, genesis)
        self._clock = make_clock(config)
        self._rejections: dict[bytes, tuple[Code, str]] = {}

    @property
    def kind(self) -> str:
        return self.config.node.kind

    @property
    def chain_id(self) -> str:
        return self.genesis.chain_id

    def clock(self) -> int:
        """The node's clock in milliseconds: the wall clock, or on a devnet the
        shared clock file when one is configured (node.clock)."""
        return self._clock()

    # --- lifecycle ---

    async def start(self) -> None:
        config = self.config
        self.store = Store(config.data_dir, self.genesis)
        self.mempool = Mempool(
            self.store,
            self.signatures,
            config.mempool.max_txs,
            config.mempool.max_bytes,
        )
        executor = Executor(self.store, self.signatures)
        self.app = LedgerApp(
            self.store,
            executor,
            self.mempool,
            self.events,
            self.clock,
            config.mempool.max_block_txs,
            self.metrics,
        )
        self.metrics.height.set(self.store.height)
        log.info(
            "node starting name=%s kind=%s chain=%s height=%d root=%s",
            config.node.name,
            self.kind,
            self.chain_id,
            self.store.height,
            self.store.state_root.hex()[:16],
        )
        if not self.manual_blocks:
            await self.start_network()
            await self.start_consensus()
        await self.start_api()
        self.started = True

    async def stop(self) -> None:
        log.info("node stopping name=%s", self.config.node.name)
        if self.api_runner is not None:
            await self.api_runner.cleanup()
            self.api_runner = None
        if self._engine_start is not None and not self._engine_start.done():
            self._engine_start.cancel()
            try:
                await self._engine_start
            except asyncio.CancelledError:
                pass
        if self.engine is not None:
            await self.engine.stop()
            self.engine = None
        if self.peering is not None:
            await self.peering.stop()
            self.peering = None
            self.network = None
        self.events.close()
        if self.store is not None:
            self.store.close()
        self.started = False
        log.info("node stopped name=%s", self.config.node.name)

    async def start_api(self) -> None:
        from aiohttp import web

        from node.api import create_app
        from node.api_site import CappedTCPSite

        api = self.config.api
        self.api_runner = web.AppRunner(
            create_app(self), access_log=None, handle_signals=False
        )
        await self.api_runner.setup()
        site = CappedTCPSite(self.api_runner, api.host, api.port, api.max_connections)
        await site.start()
        self.api_port = self.api_runner.addresses[0][1]
        log.info("api listening addr=%s:%d", api.host, self.api_port)

    async def start_network(self) -> None:
        """Peer links, gossip and block sync (a lone validator has no peers,
        but still listens so that auditors can follow it)."""
        from node.peering import Peering
        from p2p.identity import NodeIdentity

        self.peering = Peering(self, NodeIdentity(self.seed))
        self.network = self.peering.network
        self.app.on_sync_needed = self.peering.sync.request_sync
        self.app.on_validators_changed = self.network.refresh_allowlist
        self.app.on_evidence = self.report_evidence
        await self.peering.start()

    async def start_consensus(self) -> None:
        """The engine drives block production: propose, execute, commit.

        A validator whose signer record is missing (a new key, or its data
        wiped) first learns the network's tip from its peers and syncs to it,
        and signs only from two heights above it: a wiped validator may have
        signed at the tip's next height before it lost its record.
        """
        from consensus.engine import ConsensusEngine
        from consensus.outbox import Faults
        from consensus.signer import SignerGuard
        from consensus.timeouts import TimeoutConfig
        from consensus.wal import WriteAheadLog
        from node.testing import crash_after_sign

        c = self.config.consensus
        timeouts = TimeoutConfig(
            propose_ms=c.timeout_propose_ms,
            propose_delta_ms=c.timeout_delta_ms,
            prevote_ms=c.timeout_prevote_ms,
            prevote_delta_ms=c.timeout_delta_ms,
            precommit_ms=c.timeout_precommit_ms,
            precommit_delta_ms=c.timeout_delta_ms,
            max_timeout_ms=c.timeout_cap_ms,
            block_interval_ms=c.block_interval_ms,
            heartbeat_ms=c.heartbeat_ms,
            max_clock_drift_ms=c.max_clock_drift_ms,
        )
        self.config.consensus_dir.mkdir(parents=True, exist_ok=True)
        signer = None
        if self.kind == "validator":
            signer = SignerGuard(self.config.consensus_dir / "signer.json", self.seed)
        self.engine = ConsensusEngine(
            self.chain_id,
            self.app,
            signer,
            self.peering.broadcast_consensus,
            timeouts,
            WriteAheadLog(self.config.consensus_dir / "wal"),
            faults=Faults(on_signed=crash_after_sign(self.config.testing)),
        )
        alone = len(self.app.validators(self.store.height + 1)) == 1
        if signer is None or signer.last is not None or alone:
            await self.engine.start(None)
            return
        # Without a signer record the engine waits, in the background, until
        # the peers say how far the chain got; the API and sync run meanwhile.
        self._engine_start = asyncio.create_task(self.start_engine_when_safe())

    async def start_engine_when_safe(self) -> None:
        start = await self.find_safe_start_height()
        await self.engine.start(start)

    async def find_safe_start_height(self) -> int | None:
        """The first height a validator without a signer record may sign.

        Silence proves nothing (this node may be alone after an outage), so it
        waits until f+1 connected peers said where the chain is. When they
        and this node are all at height 0, the chain is new only if every
        other validator says so or genesis is only a few heartbeats old
        (chain_is_new). Otherwise it syncs to the highest tip any of them
        claims (a claim is unsigned, but the blocks come with certificates),
        and its floor is at least the tip f+1 of them agree on.

        Then it asks every other validator how far it heard this key sign: a
        message this node signed and sent before it lost its record reached
        them, and nothing it signed can conflict with what it signs above that.
        It signs from the height after both the floor and the highest answer
        (capped just above the floor: a higher one is a lie). A validator
        that does not answer in time may hold such a message, so then it keeps
        one more height of margin.
        """
        sync = self.peering.sync
        me = self.engine.signer.public_key
        validators = self.app.validators(self.store.height + 1)
        others = [key for key in validators if key != me]
        agree = (len(validators) - 1) // 3 + 1
        loop = asyncio.get_running_loop()
        since = loop.time()
        while True:
            if sync.known_tips() >= agree:
                if sync.best_tip() > 0 or self.store.height > 0:
                    break
                if self.chain_is_new(others):
                    log.info("no signer record yet on a new chain; signing from 1")
                    return None
            if loop.time() - since > DISCOVERY_LOG_S:
                log.info(
                    "no signer record; waiting for peers heard=%d needed=%d",
                    sync.known_tips(),
                    agree,
                )
                since = loop.time()
            await asyncio.sleep(0.2)

        # Sync: to the highest tip claimed (a liar only makes this wait run
        # out), and at least to the tip f+1 peers agree on (liars cannot
        # raise it), which is the floor whatever the sync reached.
        deadline = loop.time() + SYNC_BEFORE_SIGNING_S
        while self.store.height < sync.best_tip() and loop.time() < deadline:
            await asyncio.sleep(0.1)
        floor = max(self.store.height, sync.agreed_tip(agree))
        heard, answered = await self.ask_where_we_signed()
        # An answer is an unsigned claim: this key signed nothing above the
        # chain's tip plus one, so a higher answer is a lie that would keep it
        # from ever signing again; it is capped just above the floor.
        heard = min(heard, floor + HEARD_CAP_MARGIN)
        margin = 1 if answered else 2
        start = max(floor, heard) + margin
        log.info(
            "signer record missing tip=%d sign_from=%d floor=%d heard=%d "
            "all_answered=%s",
            self.store.height,
            start,
            floor,
            heard,
            answered,
        )
        return start

    def chain_is_new(self, others: list[bytes]) -> bool:
        """With every peer that spoke at height 0: new only if every other
        validator says so, or the chain is younger than a few heartbeats.
        Validators that lost their data also say 0, so f+1 zeros could be a
        quorum of wiped validators about to fork a live chain."""
        tips = self.peering.sync.peer_tips
        if all(tips.get(key) == 0 for key in others):
            return True
        age_ms = self.clock() - self.genesis.genesis_time_ms
        return age_ms < NEW_CHAIN_HEARTBEATS * self.config.consensus.heartbeat_ms

    async def ask_where_we_signed(self) -> tuple[int, bool]:
        """The highest height the other validators heard this key sign, and
        whether every one of them answered (within SIGNED_BY_WAIT_S)."""
        me = self.engine.signer.public_key
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SIGNED_BY_WAIT_S
        answers: dict[bytes, int] = {}
        while True:
            others = [
                key for key in self.app.validators(self.store.height + 1) if key != me
            ]
            connected = set(self.peering.network.connected_peers())
            asked = [k for k in others if k in connected and k not in answers]
            replies = await asyncio.gather(
                *(self.peering.ask_signed_by(k, me) for k in asked)
            )
            for key, height in zip(asked, replies, strict=True):
                if height is not None:
                    answers[key] = height
            if all(k in answers for k in others) or loop.time() > deadline:
                break
            await asyncio.sleep(0.5)
        answered = all(k in answers for k in others)
        return max(answers.values(), default=0), answered

    # --- submissions ---

    async def submit(self, raw: bytes) -> Admission:
        """Admit one transaction; raises TxRejected or MempoolFull."""
        result = (await self.submit_batch([raw]))[0]
        if isinstance(result, Exception):
            raise result
        return result

    async def submit_batch(
        self, raws: list[bytes], gossip: bool = True
    ) -> list[Admission | Exception]:
        """Admit many transactions; each result is an Admission or the exception
        that refused it (TxRejected or MempoolFull), in order."""
        results: list[Admission | Exception | None] = [None] * len(raws)
        decoded: list[tuple[int, Transaction]] = []
        for i, raw in enumerate(raws):
            try:
                decoded.append((i, self.mempool.decode(raw)))
            except TxRejected as exc:
                # Kept as a value: without its traceback, whose frames hold
                # this list (a cycle) and every raw transaction of the batch.
                results[i] = exc.with_traceback(None)
                # The answer names these bytes' hash; a look-up of it then
                # says why they were refused, as for any other refusal.
                self._remember_rejection(sha256(raw), results[i])

        # Verify signatures in worker processes (node.verify), in parallel with
        # whatever the event loop runs meanwhile; the cache then holds every
        # one that verified, and admission below only looks it up.
        unverified = [tx for _, tx in decoded if tx not in self.signatures]
        bad = await verify_into_cache(unverified, self.signatures)

        now_s = self.clock() // 1000
        added = []
        for i, tx in decoded:
            try:
                if tx.hash in bad:
                    # It failed in the workers just now: say so without
                    # verifying it a second time on the event loop. (One that
                    # verified but has left the cache meanwhile, under a
                    # flood, is verified again by admission.)
                    raise TxRejected(Code.BAD_SIGNATURE, "signature does not verify")
                admission = self.mempool.admit(tx, now_s)
            except (TxRejected, MempoolFull) as exc:
                results[i] = exc.with_traceback(None)
                self._remember_rejection(tx.hash, exc)
                continue
            results[i] = admission
            # A client's resubmission of a pending transaction is sent on again:
            # a peer that was away when it first went out may not have it.
            if admission.added or gossip:
                added.append(tx.raw)
        self.metrics.mempool_txs.set(len(self.mempool))
        self.metrics.mempool_bytes.set(self.mempool.size_bytes)
        if added and gossip:
            await self.gossip_txs(added)
        return results  # type: ignore[return-value]

    def _remember_rejection(self, tx_hash: bytes, exc: Exception) -> None:
        if isinstance(exc, TxRejected):
            self.metrics.txs_rejected.labels(exc.code.slug).inc()
            if exc.code == Code.DUPLICATE_TX:
                return  # the committed one answers for this hash
            self._rejections[tx_hash] = (exc.code, exc.detail)
            if len(self._rejections) > MAX_REMEMBERED_REJECTIONS:
                self._rejections.pop(next(iter(self._rejections)))
        else:
            self.metrics.txs_rejected.labels("mempool_full").inc()

    async def gossip_txs(self, raws: list[bytes]) -> None:
        """Send transactions admitted from clients to every peer."""
        if self.peering is not None:
            await self.peering.gossip_txs(raws)

    def report_evidence(self, evidence) -> None:
        """Put evidence of a double signature on chain, signed by this node."""
        from client import builders
        from client.keys import Keypair

        expires_at = max(self.clock(), self.store.time_ms) // 1000 + EVIDENCE_TTL_S
        raw = builders.report_evidence(
            Keypair.from_seed(self.seed), self.chain_id, expires_at, evidence.encode()
        )
        task = asyncio.ensure_future(self.submit_batch([raw]))
        task.add_done_callback(self._log_evidence_submission)

    @staticmethod
    def _log_evidence_submission(task: asyncio.Future) -> None:
        if task.cancelled():
            return
        outcome = task.result()[0]
        if isinstance(outcome, Exception):
            log.warning("evidence not submitted reason=%r", str(outcome))
        else:
            log.info("evidence submitted tx=%s", outcome.tx.hash.hex()[:16])

    # --- reads ---

    def tx_status(self, tx_hash: bytes) -> TxStatus | None:
        location = self.store.tx_location(tx_hash)
        if location is not None:
            height, index = location
            receipts = decode_receipts(self.store.receipts_bytes(height))
            from state.block import decode_block

            block = decode_block(self.store.block_bytes(height))
            tx = self.signatures.decode(block.txs[index])
            return TxStatus(
                "committed", tx, height, index, receipts[index], receipts[index].code
            )
        tx = self.mempool.get(tx_hash)
        if tx is not None:
            return TxStatus("pending", tx)
        rejection = self._rejections.get(tx_hash)
        if rejection is not None:
            return TxStatus("rejected", None, code=rejection[0], detail=rejection[1])
        return None

    async def wait_final(self, tx_hash: bytes, timeout: float) -> TxStatus | None:
        """Wait until tx_hash is committed or `timeout` passes; its status then."""
        future = self.events.wait_for(tx_hash)
        try:
            status = self.tx_status(tx_hash)
            if status is not None and status.status != "pending":
                return status
            try:
                await asyncio.wait_for(asyncio.shield(future), timeout)
            except TimeoutError:
                pass
            return self.tx_status(tx_hash)
        finally:
            self.events.forget(tx_hash, future)

    def status(self) -> dict:
        store = self.store
        return {
            "chain_id": self.chain_id,
            "node": self.config.node.name,
            "kind": self.kind,
            "height": store.height,
            "latest_block_hash": store.block_hash.hex(),
            "latest_block_time_ms": store.time_ms,
            "state_root": store.state_root.hex(),
            "genesis_hash": store.genesis_hash.hex(),
            "peers": self.peer_count(),
            "mempool_txs": len(self.mempool),
            "mempool_bytes": self.mempool.size_bytes,
            "syncing": self.is_syncing(),
            "consensus": None if self.engine is None else asdict(self.engine.status()),
        }

    def peer_count(self) -> int:
        return 0 if self.network is None else len(self.network.connected_peers())

    def is_syncing(self) -> bool:
        return self.peering is not None and self.peering.sync.syncing


def make_clock(config: Config):
    """The wall clock; on a devnet the shared clock file when one is set, and
    this node's own offset on top when a test set one (node.clock)."""
    from node.clock import DevnetClock, wall_clock_ms

    clock = wall_clock_ms
    if config.clock_path is not None:
        log.warning("devnet clock in use path=%s", config.clock_path)
        clock = DevnetClock(config.clock_path)
    if config.clock_offset_path is not None:
        log.warning("test clock offset in use path=%s", config.clock_offset_path)
        clock = DevnetClock(config.clock_offset_path, base=clock)
    return clock
