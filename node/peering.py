"""How a node uses the peer network: message types and their handlers.

    1 txs        newly admitted transactions, [tx_bytes, ...]      broadcast
    2 proposal   consensus proposal with its block                 broadcast
    3 vote       consensus prevote or precommit                    broadcast
    4 commit     commit certificate with its block                 broadcast
    5 status     [height, block_hash] every few seconds            broadcast
    6 blocks     block sync request / response                     request
    7 signed_by  [key] -> [highest height heard signed by key]     request

Transactions are gossiped by the node that admitted them from a client, to
every peer; peers do not relay them. In the full mesh of a permissioned
network every node hears them directly. A transaction that still waits in a
mempool after a few seconds is sent again, so one admitted while its node had
no peers, or missed by a peer that was restarting, still reaches a proposer.

The allowlist is the validator set (which follows on-chain changes) plus the
observer keys in the node's configuration. Every peer must also be listed in
`[[p2p.peers]]` with its certificate: the certificate is the TLS pin.

Consensus traffic is also where two devnet-only test switches act
(node.testing): recording every signed message that passes, and missing the
proposal of one round.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from consensus.messages import encode_commit_message
from consensus.sync import STATUS_INTERVAL_S, BlockSync, encode_status, serve_blocks
from node.testing import RECORD_FILE, ConsensusRecorder, misses
from p2p.errors import P2PError, PeerUnavailable
from p2p.identity import NodeIdentity
from p2p.network import Network
from p2p.peers import PeerAddress
from state.address import parse_address
from state.codec import (
    DecodeError,
    check_array,
    check_bytes,
    check_uint,
    decode,
    encode,
)
from state.codes import Code
from state.tx import TxRejected

log = logging.getLogger("node.peering")

MSG_TXS = 1
MSG_PROPOSAL = 2
MSG_VOTE = 3
MSG_COMMIT = 4
MSG_STATUS = 5
MSG_BLOCKS = 6
MSG_SIGNED_BY = 7
SIGNED_BY_TIMEOUT_S = 5.0

CONSENSUS_TYPES = {MSG_PROPOSAL: "proposal", MSG_VOTE: "vote", MSG_COMMIT: "commit"}
CONSENSUS_CODES = {name: code for code, name in CONSENSUS_TYPES.items()}
MAX_GOSSIP_TXS = 4096
# Transactions still waiting after this long are gossiped again.
REANNOUNCE_AFTER_S = 5.0
# Points against a peer that relays a message that fails verification.
INVALID_MESSAGE_PENALTY = 5


FORGED_GOSSIP_CODES = frozenset(
    {Code.MALFORMED, Code.WRONG_CHAIN, Code.BAD_SIGNATURE, Code.UNKNOWN_KIND}
)


def is_local_failure(reason: str) -> bool:
    """Reasons the engine gives for its own failures, not the sender's."""
    return reason.startswith(("internal error", "certified block is invalid here"))


def load_peers(config) -> list[PeerAddress]:
    peers = []
    for entry in config.p2p.peers:
        cert_path = Path(entry.cert)
        if not cert_path.is_absolute():
            cert_path = config.home / cert_path
        peers.append(
            PeerAddress(
                parse_address(entry.key),
                entry.host or None,
                entry.port or None,
                cert_path.read_text(),
            )
        )
    return peers


class Peering:
    """The node's side of the peer network: gossip, consensus traffic, sync."""

    def __init__(self, node, identity: NodeIdentity):
        self.node = node
        config = node.config
        self.observers = {parse_address(k) for k in config.p2p.observers}
        self.network = Network(
            identity,
            config.p2p.host,
            config.p2p.port,
            load_peers(config),
            self.is_allowed,
            max_frame=config.p2p.max_frame_bytes,
        )
        self.sync = BlockSync(
            node.chain_id,
            node.app,
            self.request_blocks,
            self.network.connected_peers,
            self.apply_commit,
            self.penalize,
        )
        self.network.register_handler(MSG_TXS, self.on_txs)
        for code, name in CONSENSUS_TYPES.items():
            self.network.register_handler(code, self.consensus_handler(name))
        self.network.register_handler(MSG_STATUS, self.on_status)
        self.network.register_request_handler(MSG_BLOCKS, self.on_blocks_request)
        self.network.register_request_handler(MSG_SIGNED_BY, self.on_signed_by)
        self._status_task: asyncio.Task | None = None
        self.switches = config.testing
        self._left_missed_round = False
        self.recorder = None
        if self.switches.record_consensus:
            self.recorder = ConsensusRecorder(config.home / RECORD_FILE)

    def is_allowed(self, key: bytes) -> bool:
        return key in self.observers or key in self.node.app.validators(
            self.node.store.height + 1
        )

    # --- lifecycle ---

    async def start(self) -> None:
        await self.network.start()
        self.sync.start()
        self._status_task = asyncio.create_task(self.announce_status_loop())
        log.info("p2p listening port=%d", self.network.listen_port)

    async def stop(self) -> None:
        if self._status_task is not None:
            self._status_task.cancel()
            try:
                await self._status_task
            except asyncio.CancelledError:
                pass
        await self.sync.stop()
        await self.network.stop()
        if self.recorder is not None:
            self.recorder.close()

    # --- outbound ---

    async def broadcast_consensus(self, msg_type: str, payload: bytes) -> None:
        if self.recorder is not None:
            self.recorder.record("out", msg_type, payload)
        await self.network.broadcast(CONSENSUS_CODES[msg_type], payload)

    async def gossip_txs(self, raws: list[bytes]) -> None:
        for i in range(0, len(raws), MAX_GOSSIP_TXS):
            await self.network.broadcast(MSG_TXS, encode(raws[i : i + MAX_GOSSIP_TXS]))

    async def announce_status_loop(self) -> None:
        while True:
            self.announce_status()
            await self.reannounce_waiting_txs()
            await asyncio.sleep(STATUS_INTERVAL_S)

    async def reannounce_waiting_txs(self) -> None:
        """Send again what has waited in the mempool for a while: a peer that
        was away when it first went out (or a proposer that never got it)
        hears of it now. Peers that have it answer idempotently."""
        waiting = self.node.mempool.waiting_longer_than(REANNOUNCE_AFTER_S, 2000)
        if waiting and self.network.connected_peers():
            await self.gossip_txs([tx.raw for tx in waiting])

    def announce_status(self) -> None:
        store = self.node.store
        body = encode_status(store.height, store.block_hash)
        asyncio.ensure_future(self.network.broadcast(MSG_STATUS, body))

    # --- inbound ---

    async def on_txs(self, peer: bytes, body: bytes) -> None:
        try:
            raws = decode(body, self.node.config.p2p.max_frame_bytes)
            if type(raws) is not list or not all(type(r) is bytes for r in raws):
                raise DecodeError("expected an array of transactions")
        except DecodeError as exc:
            self.penalize(peer, f"bad tx gossip: {exc}")
            return
        results = await self.node.submit_batch(raws, gossip=False)
        # An honest peer gossips only what it admitted itself, so forms,
        # chains and signatures that fail here are the sender's doing.
        forged = sum(
            1
            for r in results
            if isinstance(r, TxRejected) and r.code in FORGED_GOSSIP_CODES
        )
        if forged:
            self.penalize(peer, f"gossiped {forged} malformed or forged transactions")

    def consensus_handler(self, name: str):
        async def handle(peer: bytes, body: bytes) -> None:
            if self.recorder is not None:
                self.recorder.record("in", name, body)
            if self.missed(name, peer, body):
                return
            engine = self.node.engine
            if engine is None:
                return
            reason = await engine.on_message(name, body, peer.hex()[:8])
            if reason is None:
                return
            if is_local_failure(reason):
                # Our own trouble (a full disk, no file descriptors, a state
                # that diverged): the peer did nothing wrong.
                log.error("consensus message not handled peer=%s reason=%r",
                          peer.hex()[:8], reason)  # fmt: skip
                return
            self.penalize(peer, f"{name}: {reason}")

        return handle

    async def on_status(self, peer: bytes, body: bytes) -> None:
        if self.missed("status", peer, body):
            return
        try:
            self.sync.on_status(peer, body)
        except DecodeError as exc:
            self.penalize(peer, f"bad status: {exc}")

    async def on_blocks_request(self, peer: bytes, body: bytes) -> bytes:
        store = self.node.store
        try:
            return serve_blocks(body, store.block_bytes, store.commit_bytes)
        except DecodeError as exc:
            self.penalize(peer, f"bad block request: {exc}")
            return encode([])

    def missed(self, msg_type: str, peer: bytes, body: bytes) -> bool:
        """Whether the miss_proposal test switch drops this message."""
        if not self.switches.miss_proposal_height:
            return False
        engine = self.node.engine
        status = engine.status() if engine is not None else None
        position = (status.height, status.round) if status is not None else None
        height, round_ = position or (0, 0)
        left = height == self.switches.miss_proposal_height and (
            round_ > self.switches.miss_proposal_round
        )
        if left and not self._left_missed_round:
            # Said once, so a test can tell the node went to the next round.
            self._left_missed_round = True
            log.info(
                "test switch: moved past the missed round height=%d round=%d",
                height,
                round_,
            )
        if not misses(self.switches, msg_type, body, position):
            return False
        log.info("test switch: %s missed peer=%s", msg_type, peer.hex()[:8])
        return True

    async def on_signed_by(self, peer: bytes, body: bytes) -> bytes:
        """How far this node heard a key sign: asked by a validator that lost
        its signer record, so that it never signs where it already did."""
        engine = self.node.engine
        try:
            value = decode(body, 64)
            check_array(value, 1, "signed_by")
            key = check_bytes(value[0], "key", 32)
        except DecodeError as exc:
            self.penalize(peer, f"bad signed_by request: {exc}")
            return encode([])
        if engine is None:
            # Not following consensus yet: "nothing heard" would be a claim.
            return encode([])
        return encode([engine.highest_signed_by(key)])

    async def ask_signed_by(self, peer: bytes, key: bytes) -> int | None:
        """`peer`'s answer to on_signed_by, or None if it gave none (an empty
        answer: it does not know)."""
        try:
            body = await self.network.request(
                peer, MSG_SIGNED_BY, encode([key]), SIGNED_BY_TIMEOUT_S
            )
            value = decode(body, 64)
            check_array(value, 1, "signed_by answer")
            return check_uint(value[0], "height")
        except (P2PError, TimeoutError, ConnectionError, DecodeError):
            return None

    # --- sync plumbing ---

    async def request_blocks(self, peer: bytes, body: bytes, timeout: float) -> bytes:
        try:
            return await self.network.request(peer, MSG_BLOCKS, body, timeout)
        except PeerUnavailable as exc:
            raise ConnectionError(str(exc)) from None

    async def apply_commit(self, certificate, block, block_bytes: bytes) -> str | None:
        """Apply a synced block: through the engine when it runs (it then moves
        to the next height itself), else straight through the ledger app."""
        engine = self.node.engine
        if self.recorder is not None:
            self.recorder.record(
                "sync", "commit", encode_commit_message(certificate, b"")
            )
        if engine is not None and engine.status().running:
            payload = encode_commit_message(certificate, block_bytes)
            reason = await engine.on_message("commit", payload)
            if reason is None and self.node.store.height < block.height:
                reason = "engine did not commit the block"
            return reason
        app = self.node.app
        reason = app.validate_block(block)
        if reason is None:
            app.commit_block(block, certificate)
        return reason

    def penalize(self, peer: bytes, reason: str) -> None:
        log.warning("peer misbehaved peer=%s reason=%r", peer.hex()[:8], reason)
        self.network.penalize(peer, INVALID_MESSAGE_PENALTY, reason)
