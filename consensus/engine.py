"""The BFT consensus engine: validators agree on one block per height.

This is Tendermint consensus as in "The latest gossip on BFT consensus"
(Buchman, Kwon, Milosevic 2018, Algorithm 1). n validators of equal power, of
which at most f = floor((n-1)/3) are faulty, decide each height in rounds:

    propose    the round's proposer (validators[(h + r) % n]) proposes a block
    prevote    each validator executes it and prevotes it, or nil
    precommit  on a quorum (floor(2n/3)+1) of prevotes for the block, it locks
               on it and precommits it; on a quorum of nil prevotes, nil

A quorum of precommits for a block in any round commits it; the precommits
are its CommitCertificate. A step that does not hear enough in time moves on
to nil, and a round without a decision is followed by the next, with longer
timeouts. Locks (see consensus.rounds) make two commits at one height
impossible while at most f validators are faulty; the timeouts make progress
certain once the network delivers messages in bounded time.

The engine runs on one asyncio event loop, and all of its state changes happen
synchronously inside one callback, so no two handlers ever interleave. It talks
to peers only through `broadcast`, fed from an outbox, and to the ledger only
through the Application (consensus.app). Every input of the current height is
written to the write-ahead log before it takes effect, and every own message
before it is sent; the SignerGuard keeps the key from signing twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from consensus.app import Application
from consensus.messages import (
    NIL,
    PRECOMMIT,
    PREVOTE,
    CommitCertificate,
    DoubleSignEvidence,
    MalformedMessage,
    VerificationError,
    decode_commit_message,
    decode_proposal_message,
    decode_vote,
    encode_commit_message,
    encode_proposal_message,
    short,
)
from consensus.rounds import HeightState, Step
from consensus.signer import DoubleSignRefused, SignerGuard
from consensus.timeouts import TimeoutConfig
from consensus.wal import Entry, WalRecord, WriteAheadLog, parse_timeout_body
from consensus.wal import timeout_body as make_timeout_body
from state.block import Block

Broadcast = Callable[[str, bytes], Awaitable[None]]

# Messages ahead of our round are kept only this far ahead, so a faulty
# validator cannot make us store votes or blocks for unbounded rounds.
MAX_VOTE_ROUNDS_AHEAD = 1000
MAX_PROPOSAL_ROUNDS_AHEAD = 4
# Messages for the next height wait in a bounded buffer until we get there.
MAX_BUFFERED = 2048
MAX_BUFFERED_BYTES = 16 << 20


@dataclass
class Faults:
    """Test-only switches that make this engine misbehave on purpose.

    All are off by default, and nothing outside the test suite sets them.
    drop_outbound_*: sign and record as usual, but never send that message type.
    halt_after_sign: stop dead, as if the process were killed, right after the
    signer guard recorded a signature and before the message reaches the
    write-ahead log or the network.
    """

    drop_outbound_votes: bool = False
    drop_outbound_proposals: bool = False
    drop_outbound_commits: bool = False
    halt_after_sign: bool = False


@dataclass(frozen=True)
class Status:
    height: int
    round: int
    step: str
    locked_round: int
    locked_hash: str
    valid_round: int
    valid_hash: str
    signing: bool
    running: bool


class _Halted(Exception):
    """Raised to unwind a handler after a halt_after_sign fault."""


class ConsensusEngine:
    def __init__(
        self,
        chain_id: str,
        app: Application,
        signer: SignerGuard | None,
        broadcast: Broadcast,
        timeouts: TimeoutConfig,
        wal: WriteAheadLog | None,
        logger: logging.Logger | None = None,
    ):
        self.chain_id = chain_id
        self.app = app
        self.signer = signer
        self.timeouts = timeouts
        self.wal = wal
        self.log = logger or logging.getLogger("consensus")
        self.faults = Faults()
        self._broadcast = broadcast
        self._me = signer.public_key if signer is not None else None
        self._state: HeightState | None = None
        self._running = False
        self._replaying = False
        self._sign_from = 0
        self._timers: set[asyncio.TimerHandle] = set()
        self._outbox: asyncio.Queue[tuple[str, bytes]] | None = None
        self._sender: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_commit: tuple[int, bytes] | None = None
        self._last_commit_at: float | None = None
        self._commit_resent_at = 0.0
        self._future: dict[tuple, tuple[int, str, bytes]] = {}
        self._future_bytes = 0
        self._ahead: dict[bytes, int] = {}
        self._sync_asked: tuple[int, float] = (0, 0.0)
        self._reported: set[tuple[bytes, int, int, int]] = set()
        self._validator_sets: dict[int, list[bytes]] = {}

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, start_height: int | None = None) -> None:
        """Run consensus from the height after the application's last block.

        `start_height` is the first height at which this node may sign; below
        it the node only follows (it commits via certificates and quorums it
        observes). Default: the next height. A node whose signer state was lost
        passes a height its old key cannot have reached.
        """
        if self._running:
            raise RuntimeError("the engine is already running")
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._outbox = asyncio.Queue()
        self._sender = asyncio.create_task(self._send_loop())
        height = self.app.last_height() + 1
        self._sign_from = height if start_height is None else start_height
        records = self.wal.open(height) if self.wal is not None else []
        self._state = self._new_height_state(height)
        self._guarded(self._replay, records)
        self._guarded(self._wait_for_start)

    async def stop(self) -> None:
        """Cancel every timer and the sender; the engine can be discarded."""
        self._halt()
        sender, self._sender = self._sender, None
        if sender is not None:
            try:
                await sender
            except asyncio.CancelledError:
                pass
        if self.wal is not None:
            self.wal.close()

    def _halt(self) -> None:
        self._running = False
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._sender is not None:
            self._sender.cancel()

    def status(self) -> Status:
        s = self._state
        if s is None:
            return Status(0, 0, "stopped", -1, "", -1, "", False, False)
        return Status(
            height=s.height,
            round=s.round,
            step=s.step.name.lower(),
            locked_round=s.locked_round,
            locked_hash=s.locked_hash.hex(),
            valid_round=s.valid_round,
            valid_hash=s.valid_hash.hex(),
            signing=s.signing,
            running=self._running,
        )

    # --- inbound ---------------------------------------------------------------------

    async def on_message(
        self, msg_type: str, payload: bytes, peer: Any = None
    ) -> str | None:
        """Handle one gossip message; return why it was refused, or None.

        A returned reason means the message was malformed, wrongly signed or
        otherwise invalid, and the caller may penalise the peer. Messages that
        are merely stale or early return None.
        """
        if not self._running:
            return None
        handlers = {
            "proposal": self.on_proposal,
            "vote": self.on_vote,
            "commit": self.on_commit,
        }
        handler = handlers.get(msg_type)
        if handler is None:
            return f"unknown message type {msg_type!r}"
        reason = self._guarded(self._handle, handler, payload)
        if reason is not None:
            self.log.debug("refused type=%s peer=%s reason=%s", msg_type, peer, reason)
        return reason

    def _handle(self, handler: Callable[[bytes], str | None], payload: bytes):
        self._catch_up_with_app()
        reason = handler(payload)
        self._advance()
        return reason

    def on_proposal(self, payload: bytes) -> str | None:
        try:
            proposal, block = decode_proposal_message(payload)
        except MalformedMessage as exc:
            return f"malformed proposal: {exc}"
        s = self._state
        if proposal.height < s.height:
            self._resend_commit(proposal.height)
            return None
        validators = self._validators(proposal.height)
        expected = validators[(proposal.height + proposal.round) % len(validators)]
        # Rule: only the round's proposer may propose, and must have signed it.
        if proposal.proposer != expected:
            return f"{proposal.describe()}: not the proposer of that round"
        try:
            proposal.verify(self.chain_id)
        except VerificationError as exc:
            return str(exc)
        if proposal.height > s.height:
            return self._early(
                ("p", proposal.round),
                proposal.proposer,
                proposal.height,
                "proposal",
                payload,
            )
        if proposal.round > s.round + MAX_PROPOSAL_ROUNDS_AHEAD:
            return None
        known = s.proposals.get(proposal.round)
        if known is not None:
            if known[0].block_hash == proposal.block_hash:
                return None
            return f"{proposal.describe()}: the proposer already proposed another block"
        self.log.debug("received %s", proposal.describe())
        self._record_input(Entry.PROPOSAL, payload)
        s.add_proposal(proposal, block)
        self._join()
        return None

    def on_vote(self, payload: bytes) -> str | None:
        try:
            vote = decode_vote(payload)
        except MalformedMessage as exc:
            return f"malformed vote: {exc}"
        s = self._state
        if vote.height < s.height:
            self._resend_commit(vote.height)
            return None
        # Rule: a vote counts only if a validator of its height signed it.
        if vote.validator not in self._validators(vote.height):
            return f"{vote.describe()}: not a validator"
        try:
            vote.verify(self.chain_id)
        except VerificationError as exc:
            return str(exc)
        if vote.height > s.height:
            key = ("v", vote.vote_type, vote.round, vote.validator)
            return self._early(key, vote.validator, vote.height, "vote", payload)
        if vote.round > s.round + MAX_VOTE_ROUNDS_AHEAD:
            return None
        if s.has_vote(vote):
            earlier = s.votes(vote.vote_type, vote.round).votes[vote.validator]
            if earlier.block_hash == vote.block_hash:
                return None
            # Two signed votes of one validator for one step, different blocks.
            self._report(DoubleSignEvidence.from_votes(earlier, vote))
            return f"{vote.describe()}: conflicts with an earlier vote"
        self.log.debug("received %s", vote.describe())
        self._record_input(Entry.VOTE, payload)
        s.add_vote(vote)
        self._join()
        return None

    def on_commit(self, payload: bytes) -> str | None:
        """A peer's commit certificate with its block: a node at that height
        commits it without voting; a node further behind asks for sync."""
        try:
            certificate, block = decode_commit_message(payload)
        except MalformedMessage as exc:
            return f"malformed commit: {exc}"
        s = self._state
        if certificate.height < s.height:
            return None
        try:
            certificate.verify(self.chain_id, self._validators(certificate.height))
        except VerificationError as exc:
            return f"commit h={certificate.height}: {exc}"
        if certificate.height > s.height:
            self._request_sync(certificate.height)
            return None
        reason = self._block_reason(block)
        if reason is not None:
            # A quorum certified a block we find invalid: either our state
            # diverged or more than f validators are faulty. Never commit it.
            self.log.error(
                "certified block rejected height=%d hash=%s reason=%s",
                block.height,
                short(block.hash),
                reason,
            )
            return f"certified block is invalid here: {reason}"
        self.log.debug(
            "commit from certificate height=%d round=%d signers=%d",
            certificate.height,
            certificate.round,
            len(certificate.signatures),
        )
        self.finalize_commit(block, certificate, announce=False)
        return None

    # --- timers ----------------------------------------------------------------------

    def _schedule(self, delay_ms: int, callback: Callable, *args: Any) -> None:
        def fire() -> None:
            self._timers.discard(handle)
            if self._running:
                self._guarded(callback, *args)

        handle = self._loop.call_later(delay_ms / 1000, fire)
        self._timers.add(handle)

    def _schedule_timeout(self, step: Step, round: int) -> None:
        delay = self.timeouts.timeout_ms(step, round)
        self._schedule(delay, self.on_timeout, self._state.height, round, step)

    def on_timeout(self, height: int, round: int, step: Step) -> None:
        self._catch_up_with_app()
        s = self._state
        if (height, round) != (s.height, s.round):
            return
        if step in (Step.PROPOSE, Step.PREVOTE) and s.step != step:
            return
        self._record_input(Entry.TIMEOUT, make_timeout_body(round, step))
        self._apply_timeout(round, step)
        self._advance()

    def _apply_timeout(self, round: int, step: Step) -> None:
        s = self._state
        self.log.debug("timeout height=%d round=%d step=%s", s.height, round, step.name)
        if step == Step.PROPOSE and s.step == Step.PROPOSE:
            # OnTimeoutPropose: no acceptable proposal in time, prevote nil.
            self.enter_prevote(NIL)
        elif step == Step.PREVOTE and s.step == Step.PREVOTE:
            # OnTimeoutPrevote: 2f+1 prevotes but no quorum for one value.
            self.enter_precommit(NIL)
        elif step == Step.PRECOMMIT:
            # OnTimeoutPrecommit: 2f+1 precommits but no decision this round.
            self.enter_propose(round + 1)

    def _rebroadcast(self, height: int) -> None:
        """Re-send own votes of the current round, for peers that missed them."""
        self._catch_up_with_app()
        s = self._state
        if height != s.height:
            return
        if s.signing and s.step != Step.NEW_HEIGHT:
            for vote_type in (PREVOTE, PRECOMMIT):
                vote = s.votes(vote_type, s.round).votes.get(self._me)
                if vote is not None:
                    self._send("vote", vote.encode())
        self._schedule(self.timeouts.rebroadcast_ms, self._rebroadcast, s.height)

    # --- starting a height -----------------------------------------------------------

    def _wait_for_start(self) -> None:
        """Start round 0 once block_interval_ms passed since the last commit and
        there is something to commit: pending transactions or a heartbeat due."""
        s = self._state
        if s.step != Step.NEW_HEIGHT:
            return
        t = self.timeouts
        if self._last_commit_at is not None:
            since_commit = (self._loop.time() - self._last_commit_at) * 1000
            if since_commit < t.block_interval_ms:
                wait = max(1, round(t.block_interval_ms - since_commit))
                self._schedule(wait, self._wait_for_start)
                return
        since_block = self.app.now_ms() - self.app.last_block_time_ms()
        if self.app.has_pending_txs() or since_block >= t.heartbeat_ms:
            self.enter_propose(0)
            self._advance()
            return
        wait = max(1, min(t.idle_poll_ms, t.heartbeat_ms - since_block))
        self._schedule(wait, self._wait_for_start)

    def _join(self) -> None:
        """A valid proposal or vote for our height: join it at once."""
        if self._state.step == Step.NEW_HEIGHT:
            self.enter_propose(0)

    # --- the rules of Algorithm 1 ----------------------------------------------------

    def _advance(self) -> None:
        """Apply the upon-rules until none fires."""
        while self._running and self._apply_one_rule():
            pass

    def _apply_one_rule(self) -> bool:
        s = self._state
        if s.step == Step.NEW_HEIGHT:
            return False
        r = s.round

        # Upon PROPOSAL(h, r', v) and 2f+1 PRECOMMIT(h, r', id(v)), in any
        # round r', with v valid: decide v.
        for pr, (_, block) in sorted(s.proposals.items()):
            if s.count(PRECOMMIT, pr, block.hash) >= s.quorum and self._valid(block):
                votes = s.votes(PRECOMMIT, pr).for_block(block.hash)
                self.finalize_commit(block, CommitCertificate.from_votes(votes))
                return True

        entry = s.proposals.get(r)
        if s.step == Step.PROPOSE and entry is not None:
            proposal, block = entry
            vr = proposal.pol_round
            if vr == -1:
                # Upon PROPOSAL(h, r, v, -1) while propose: prevote v if it is
                # valid, timely and we are not locked on another block.
                ok = (
                    self._valid(block)
                    and self._timely(block)
                    and (s.locked_round == -1 or s.locked_hash == block.hash)
                )
                self.enter_prevote(block.hash if ok else NIL)
                return True
            if s.count(PREVOTE, vr, block.hash) >= s.quorum:
                # Upon PROPOSAL(h, r, v, vr) and 2f+1 PREVOTE(h, vr, id(v)),
                # vr < r, while propose: prevote v if valid and our lock is no
                # newer than vr (or is on v itself).
                ok = self._valid(block) and (
                    s.locked_round <= vr or s.locked_hash == block.hash
                )
                self.enter_prevote(block.hash if ok else NIL)
                return True

        if (
            entry is not None
            and s.step >= Step.PREVOTE
            and r not in s.polka_seen
            and s.count(PREVOTE, r, entry[1].hash) >= s.quorum
            and self._valid(entry[1])
        ):
            # Upon PROPOSAL(h, r, v) and 2f+1 PREVOTE(h, r, id(v)), v valid,
            # step >= prevote, first time: lock and precommit v if still in
            # prevote; either way v becomes the valid value.
            block = entry[1]
            s.polka_seen.add(r)
            if s.step == Step.PREVOTE:
                s.locked_round, s.locked_block = r, block
                self.enter_precommit(block.hash)
            s.valid_round, s.valid_block = r, block
            return True

        if s.step == Step.PREVOTE and s.count(PREVOTE, r, NIL) >= s.quorum:
            # Upon 2f+1 PREVOTE(h, r, nil) while prevote: precommit nil.
            self.enter_precommit(NIL)
            return True

        if (
            s.step == Step.PREVOTE
            and r not in s.prevote_timeout_set
            and s.count(PREVOTE, r, None) >= s.quorum
        ):
            # Upon 2f+1 PREVOTE(h, r, *) while prevote, first time: start
            # timeoutPrevote.
            s.prevote_timeout_set.add(r)
            self._schedule_timeout(Step.PREVOTE, r)
            return True

        if r not in s.precommit_timeout_set and s.count(PRECOMMIT, r, None) >= s.quorum:
            # Upon 2f+1 PRECOMMIT(h, r, *), first time: start timeoutPrecommit.
            s.precommit_timeout_set.add(r)
            self._schedule_timeout(Step.PRECOMMIT, r)
            return True

        target = s.skip_target()
        if target is not None:
            # Upon f+1 messages of a round above ours: at least one honest
            # validator is there, so go to that round now.
            self.log.debug("round skip height=%d from=%d to=%d", s.height, r, target)
            self.enter_propose(target)
            return True
        return False

    # --- steps -----------------------------------------------------------------------

    def enter_propose(self, round: int) -> None:
        """StartRound(round): the proposer proposes; everyone starts
        timeoutPropose (it only acts while still in the propose step)."""
        s = self._state
        s.round, s.step = round, Step.PROPOSE
        s.joined_at = s.joined_at or self._loop.time()
        proposer = s.proposer(round)
        self.log.debug(
            "enter propose height=%d round=%d proposer=%s",
            s.height,
            round,
            proposer[:4].hex(),
        )
        if s.signing and proposer == self._me:
            self._propose(round)
        self._schedule_timeout(Step.PROPOSE, round)
        if round == 0:
            self._schedule(self.timeouts.rebroadcast_ms, self._rebroadcast, s.height)

    def _propose(self, round: int) -> None:
        s = self._state
        own = s.own_proposals.get(round)
        if own is not None:
            proposal, block = own
        else:
            # Re-propose the valid value if there is one; else build a block.
            block, pol_round = s.valid_block, s.valid_round
            if block is None:
                block, pol_round = self._build_block(), -1
                if block is None:
                    return
            proposal = self._sign(
                lambda: self.signer.sign_proposal(
                    self.chain_id, s.height, round, pol_round, block.hash
                )
            )
            if proposal is None:
                return
        payload = encode_proposal_message(proposal, block.encode())
        if own is None:
            self._record_own(Entry.OWN_PROPOSAL, payload)
        s.add_proposal(proposal, block)
        self.log.debug("sent %s txs=%d", proposal.describe(), len(block.txs))
        self._send("proposal", payload)

    def _build_block(self) -> Block | None:
        s = self._state
        time_ms = max(self.app.now_ms(), self.app.last_block_time_ms() + 1)
        try:
            block = self.app.propose_block(s.height, time_ms, self._me)
        except Exception:
            self.log.exception("propose_block failed height=%d", s.height)
            return None
        s.checked[block.hash] = None  # the application just built and executed it
        return block

    def enter_prevote(self, block_hash: bytes) -> None:
        self._state.step = Step.PREVOTE
        self._cast(PREVOTE, block_hash)

    def enter_precommit(self, block_hash: bytes) -> None:
        self._state.step = Step.PRECOMMIT
        self._cast(PRECOMMIT, block_hash)

    def _cast(self, vote_type: int, block_hash: bytes) -> None:
        """Sign, record, count and send our vote for the current round."""
        s = self._state
        if not s.signing:
            return
        vote = s.own_votes.get((vote_type, s.round))
        if vote is None:
            vote = self._sign(
                lambda: self.signer.sign_vote(
                    self.chain_id, vote_type, s.height, s.round, block_hash
                )
            )
            if vote is None:
                return
            self._record_own(Entry.OWN_VOTE, vote.encode())
        s.add_vote(vote)
        self.log.debug("sent %s", vote.describe())
        self._send("vote", vote.encode())

    def _sign(self, make: Callable[[], Any]) -> Any:
        try:
            message = make()
        except DoubleSignRefused as exc:
            self.log.warning("signer refused: %s", exc)
            return None
        if self.faults.halt_after_sign:
            self.log.warning("fault: halting right after signing")
            self._halt()
            raise _Halted
        return message

    def finalize_commit(
        self, block: Block, certificate: CommitCertificate, announce: bool = True
    ) -> None:
        """Commit `block` with `certificate`, announce it, and move to the next
        height."""
        s = self._state
        try:
            self.app.commit_block(block, certificate)
        except Exception:
            self.log.exception("commit_block failed height=%d; halting", s.height)
            self._halt()
            raise _Halted from None
        now = self._loop.time()
        self.log.info(
            "committed height=%d round=%d hash=%s txs=%d ms=%d",
            s.height,
            certificate.round,
            short(block.hash),
            len(block.txs),
            round((now - (s.joined_at or s.started_at)) * 1000),
        )
        self._last_commit_at = now
        payload = encode_commit_message(certificate, block.encode())
        self._last_commit = (s.height, payload)
        if announce:
            self._send("commit", payload)
        self._enter_height(s.height + 1)

    # --- heights ---------------------------------------------------------------------

    def _new_height_state(self, height: int) -> HeightState:
        validators = self._validators(height)
        signing = (
            self.signer is not None
            and height >= self._sign_from
            and self._me in validators
        )
        self._validator_sets = {
            h: v for h, v in self._validator_sets.items() if h >= height
        }
        return HeightState(height, validators, signing, self._loop.time())

    def _enter_height(self, height: int) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self.wal is not None:
            self.wal.rotate(height)
        self._state = self._new_height_state(height)
        self._ahead = {v: h for v, h in self._ahead.items() if h > height + 1}
        buffered = [item for item in self._future.values() if item[0] == height]
        self._future.clear()
        self._future_bytes = 0
        handlers = {"proposal": self.on_proposal, "vote": self.on_vote}
        for _, msg_type, payload in buffered:
            handlers[msg_type](payload)
        self._wait_for_start()

    def _catch_up_with_app(self) -> None:
        """Blocks committed outside consensus (sync) move us to the next height."""
        last = self.app.last_height()
        if last >= self._state.height:
            self.log.info("caught up height=%d", last)
            self._last_commit_at = self._loop.time()
            self._enter_height(last + 1)

    def _early(
        self, key: tuple, validator: bytes, height: int, msg_type: str, payload: bytes
    ) -> None:
        """A valid message for a later height: buffer it if it is for the next
        one; if f+1 validators are further ahead, we fell behind: ask for sync."""
        s = self._state
        if height == s.height + 1:
            key = (height, *key)
            full = (
                len(self._future) >= MAX_BUFFERED
                or self._future_bytes + len(payload) > MAX_BUFFERED_BYTES
            )
            if key not in self._future and not full:
                self._future[key] = (height, msg_type, payload)
                self._future_bytes += len(payload)
            return None
        self._ahead[validator] = max(height, self._ahead.get(validator, 0))
        heights = sorted(
            (h for v, h in self._ahead.items() if v in s.members), reverse=True
        )
        if len(heights) > s.f:
            # One of f+1 validators at these heights is honest, so the height
            # below the (f+1)-th highest is committed.
            self._request_sync(heights[s.f] - 1)
        return None

    def _request_sync(self, target: int) -> None:
        asked, at = self._sync_asked
        now = self._loop.time()
        if target < asked or (target == asked and now - at < self._retry_s()):
            return
        self._sync_asked = (target, now)
        self.log.info("behind height=%d target=%d", self._state.height, target)
        self.app.request_sync(target)

    def _retry_s(self) -> float:
        return self.timeouts.max_timeout_ms / 1000

    def _resend_commit(self, height: int) -> None:
        """A peer still works on the height we just committed: send it the
        certificate again (at most once per rebroadcast period)."""
        if self._last_commit is None or self._last_commit[0] != height:
            return
        now = self._loop.time()
        if now - self._commit_resent_at < self.timeouts.rebroadcast_ms / 1000:
            return
        self._commit_resent_at = now
        self._send("commit", self._last_commit[1])

    # --- checks ----------------------------------------------------------------------

    def _valid(self, block: Block) -> bool:
        return self._block_reason(block) is None

    def _block_reason(self, block: Block) -> str | None:
        """Why `block` may not be the next block (None if it may); executes it
        once per height. Deterministic: the same on every honest node."""
        s = self._state
        if block.hash in s.checked:
            return s.checked[block.hash]
        header = block.header
        if header.chain_id != self.chain_id:
            reason = f"chain id {header.chain_id!r}"
        elif header.height != s.height:
            reason = f"height {header.height} is not {s.height}"
        elif header.time_ms <= self.app.last_block_time_ms():
            reason = "block time is not after the parent's"
        elif header.proposer not in s.members:
            reason = "the proposer field names no validator"
        else:
            try:
                reason = self.app.validate_block(block)
            except Exception as exc:
                self.log.exception("validate_block failed height=%d", s.height)
                reason = f"validation failed: {type(exc).__name__}"
        s.checked[block.hash] = reason
        if reason is not None:
            self.log.info(
                "invalid block height=%d hash=%s reason=%s",
                s.height,
                short(block.hash),
                reason,
            )
        return reason

    def _timely(self, block: Block) -> bool:
        """Rule: prevote nil on a fresh block dated more than max_clock_drift_ms
        ahead of our clock (a proposer cannot push block time into the future)."""
        ahead = block.header.time_ms - self.app.now_ms()
        if ahead > self.timeouts.max_clock_drift_ms:
            self.log.info("untimely block height=%d ahead_ms=%d", block.height, ahead)
            return False
        return True

    def _validators(self, height: int) -> list[bytes]:
        known = self._validator_sets.get(height)
        if known is None:
            known = self._validator_sets[height] = list(self.app.validators(height))
        return known

    def _report(self, evidence: DoubleSignEvidence) -> None:
        a = evidence.vote_a
        key = (a.validator, a.height, a.round, a.vote_type)
        if key in self._reported:
            return
        self._reported.add(key)
        self.log.warning("double signing detected %s", evidence.describe())
        self.app.report_evidence(evidence)

    # --- write-ahead log and outbox --------------------------------------------------

    def _record_input(self, kind: Entry, body: bytes) -> None:
        if self.wal is not None and not self._replaying:
            self.wal.append(kind, self._state.height, body, sync=False)

    def _record_own(self, kind: Entry, body: bytes) -> None:
        # Synced before the message is queued: after a crash, replay knows
        # about everything any peer may have received from us.
        if self.wal is not None:
            self.wal.append(kind, self._state.height, body, sync=True)

    def _replay(self, records: list[WalRecord]) -> None:
        """Re-apply the logged inputs of this height, in order, to restore the
        round state. Own messages are reused, never signed anew."""
        if not records:
            return
        s = self._state
        for record in records:
            if record.kind == Entry.OWN_PROPOSAL:
                proposal, block = decode_proposal_message(record.body)
                s.own_proposals[proposal.round] = (proposal, block)
            elif record.kind == Entry.OWN_VOTE:
                vote = decode_vote(record.body)
                s.own_votes[(vote.vote_type, vote.round)] = vote
        self._replaying = True
        try:
            for record in records:
                self._replay_one(record)
                self._advance()
        finally:
            self._replaying = False
        self.log.info(
            "replayed wal height=%d records=%d round=%d step=%s locked_round=%d",
            s.height,
            len(records),
            s.round,
            s.step.name.lower(),
            s.locked_round,
        )

    def _replay_one(self, record: WalRecord) -> None:
        s = self._state
        if record.kind == Entry.PROPOSAL:
            self.on_proposal(record.body)
        elif record.kind == Entry.VOTE:
            self.on_vote(record.body)
        elif record.kind == Entry.OWN_PROPOSAL:
            self._join()
            proposal, block = decode_proposal_message(record.body)
            if proposal.round not in s.proposals:
                s.add_proposal(proposal, block)
        elif record.kind == Entry.OWN_VOTE:
            self._join()
            vote = decode_vote(record.body)
            if not s.has_vote(vote):
                s.add_vote(vote)
        elif record.kind == Entry.TIMEOUT:
            round, step = parse_timeout_body(record.body)
            if round == s.round:
                self._apply_timeout(round, Step(step))

    def _send(self, msg_type: str, payload: bytes) -> None:
        f = self.faults
        if (
            (msg_type == "vote" and f.drop_outbound_votes)
            or (msg_type == "proposal" and f.drop_outbound_proposals)
            or (msg_type == "commit" and f.drop_outbound_commits)
        ):
            return
        self._outbox.put_nowait((msg_type, payload))

    async def _send_loop(self) -> None:
        while True:
            msg_type, payload = await self._outbox.get()
            try:
                await self._broadcast(msg_type, payload)
            except Exception:
                self.log.exception("broadcast failed type=%s", msg_type)

    def _guarded(self, fn: Callable, *args: Any) -> Any:
        """Run a handler; a halt fault ends it quietly, any other error is
        logged so one bad message cannot stop the engine."""
        if not self._running:
            return None
        try:
            return fn(*args)
        except _Halted:
            return None
        except Exception as exc:
            self.log.exception("consensus handler failed")
            return f"internal error: {type(exc).__name__}"
