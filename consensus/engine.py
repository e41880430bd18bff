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
certain once the network delivers messages in bounded time. The rules
themselves are in consensus.rules; this module performs them.

The engine runs on one asyncio event loop, and every state change happens
synchronously inside one callback, so no two handlers ever interleave. It talks
to peers only through `broadcast`, fed from an outbox, and to the ledger only
through the Application (consensus.app). Every input of the current height is
written to the write-ahead log before it takes effect, and every own message
before it is sent; the SignerGuard keeps the key from signing twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from consensus.app import Application
from consensus.catchup import CatchUp
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
from consensus.outbox import Broadcast, Faults, Outbox
from consensus.rounds import HeightState, Status, Step
from consensus.rules import (
    Action,
    Decide,
    Polka,
    Precommit,
    Prevote,
    SkipRound,
    StartTimeout,
    next_action,
)
from consensus.signer import DoubleSignRefused, SignerGuard
from consensus.timeouts import TimeoutConfig, Timers
from consensus.validity import block_problem, is_timely
from consensus.wal import (
    Entry,
    WalRecord,
    WriteAheadLog,
    parse_timeout_body,
    timeout_body,
)
from state.block import Block

# Messages ahead of our round are kept only this far ahead, so a faulty
# validator cannot make us store votes or blocks for unbounded rounds.
MAX_VOTE_ROUNDS_AHEAD = 1000
MAX_PROPOSAL_ROUNDS_AHEAD = 4


class _Halted(Exception):
    """Unwinds a handler after the engine halted (a halt fault, a failed commit)."""


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
        faults: Faults | None = None,
    ):
        self.chain_id = chain_id
        self.app = app
        self.signer = signer
        self.timeouts = timeouts
        self.wal = wal
        self.log = logger or logging.getLogger("consensus")
        self.faults = faults or Faults()  # test-only switches, see consensus.outbox
        self._outbox = Outbox(broadcast, self.faults, self.log)
        self._me = signer.public_key if signer is not None else None
        self._state: HeightState | None = None
        self._running = False
        self._replaying = False
        self._sign_from = 0
        self._timers = Timers()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._last_start_at: float | None = None
        self._last_commit_at: float | None = None
        self._reported: set[tuple[bytes, int, int, int]] = set()
        # The highest height of a verified message each key signed, as heard
        # here: a validator that lost its signer record asks for it.
        self._heard_from: dict[bytes, int] = {}
        self._validator_sets: dict[int, list[bytes]] = {}
        self._catchup = CatchUp(
            app,
            self._now,
            sync_retry_s=timeouts.max_timeout_ms / 1000,
            resend_s=timeouts.rebroadcast_ms / 1000,
            log=self.log,
        )

    # --- lifecycle -------------------------------------------------------------------

    async def start(self, start_height: int | None = None) -> None:
        """Run consensus from the height after the application's last block.

        `start_height` is the first height at which this node may sign; below
        it the node only follows (it commits via certificates and the quorums it
        observes). Default: the next height. A node whose signer state was lost
        passes a height its old key cannot have reached.
        """
        if self._running:
            raise RuntimeError("the engine is already running")
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._outbox.start()
        height = self.app.last_height() + 1
        self._sign_from = height if start_height is None else start_height
        records = self.wal.open(height) if self.wal is not None else []
        self._state = self._new_height_state(height)
        self._guarded(self._replay, records)
        self._guarded(self._wait_for_start)

    async def stop(self) -> None:
        """Cancel every timer and the sender; the engine can then be discarded."""
        self._halt()
        await self._outbox.stop()
        if self.wal is not None:
            self.wal.close()

    def _halt(self) -> None:
        self._running = False
        self._timers.cancel_all()
        self._outbox.cancel()

    def highest_signed_by(self, key: bytes) -> int:
        """The highest height at which this node heard a proposal, vote or
        commit signature of `key` (0 if none): where that key may not sign
        again after it lost its signer record."""
        return self._heard_from.get(key, 0)

    def _heard(self, key: bytes, height: int) -> None:
        if height > self._heard_from.get(key, 0):
            self._heard_from[key] = height

    def status(self) -> Status:
        """Where consensus stands, for the node's API and health checks."""
        if self._state is None:
            return Status(0, 0, "stopped", -1, "", -1, "", False, False)
        return self._state.status(self._running)

    # --- inbound ---------------------------------------------------------------------

    async def on_message(
        self, msg_type: str, payload: bytes, peer: Any = None
    ) -> str | None:
        """Handle one gossip message; return why it was refused, or None.

        A reason means the message was malformed, wrongly signed or otherwise
        invalid, and the caller may penalise the peer that sent it. Messages
        that are merely stale, early or repeated return None.
        """
        if not self._running:
            return None
        handler = {
            "proposal": self.on_proposal,
            "vote": self.on_vote,
            "commit": self.on_commit,
        }.get(msg_type)
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
            self._help_peer_behind(proposal.height)
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
        self._heard(proposal.proposer, proposal.height)
        if proposal.height > s.height:
            key = ("proposal", proposal.round)
            self._early(proposal.height, proposal.proposer, key, "proposal", payload)
            return None
        if proposal.round > s.round + MAX_PROPOSAL_ROUNDS_AHEAD:
            return None
        known = s.proposals.get(proposal.round)
        if known is not None:
            if known[0].block_hash == proposal.block_hash:
                return None
            return f"{proposal.describe()}: the proposer proposed another block"
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
            self._help_peer_behind(vote.height)
            return None
        # Rule: a vote counts only if a validator of its height signed it.
        if vote.validator not in self._validators(vote.height):
            return f"{vote.describe()}: not a validator"
        try:
            vote.verify(self.chain_id)
        except VerificationError as exc:
            return str(exc)
        self._heard(vote.validator, vote.height)
        if vote.height > s.height:
            key = ("vote", vote.vote_type, vote.round, vote.validator)
            self._early(vote.height, vote.validator, key, "vote", payload)
            return None
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
        """A commit certificate with its block: a node at that height commits
        it without voting; a node further behind asks for sync."""
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
        for key in certificate.validators:
            self._heard(key, certificate.height)
        if certificate.height > s.height:
            self._catchup.request_sync(s.height, certificate.height)
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
        """Run callback(*args) later, unless the height changed meanwhile."""
        height = self._state.height
        fire = partial(self._guarded, self._on_timer, height, callback, args)
        self._timers.call_later(delay_ms, fire)

    def _on_timer(self, height: int, callback: Callable, args: tuple) -> None:
        self._catch_up_with_app()
        if self._state.height == height:
            callback(*args)

    def _schedule_timeout(self, step: Step, round: int) -> None:
        delay = self.timeouts.timeout_ms(step, round)
        self._schedule(delay, self.on_timeout, self._state.height, round, step)

    def on_timeout(self, height: int, round: int, step: Step) -> None:
        s = self._state
        if (height, round) != (s.height, s.round):
            return
        if step in (Step.PROPOSE, Step.PREVOTE) and s.step != step:
            return
        self._record_input(Entry.TIMEOUT, timeout_body(round, step))
        self._apply_timeout(round, step)
        self._advance()

    def _apply_timeout(self, round: int, step: Step) -> None:
        s = self._state
        self.log.debug("timeout height=%d round=%d step=%s", s.height, round, step.name)
        if step == Step.PROPOSE and s.step == Step.PROPOSE:
            # OnTimeoutPropose: no acceptable proposal in time, prevote nil.
            self.enter_prevote(NIL)
        elif step == Step.PREVOTE and s.step == Step.PREVOTE:
            # OnTimeoutPrevote: 2f+1 prevotes, but no quorum for one value.
            self.enter_precommit(NIL)
        elif step == Step.PRECOMMIT:
            # OnTimeoutPrecommit: 2f+1 precommits, but no decision this round.
            self.enter_propose(round + 1)

    def _rebroadcast(self) -> None:
        """Re-send own votes of this round, and the prevotes that justify our
        valid value, for peers that missed them (restarted, packets lost)."""
        s = self._state
        if s.signing and s.step != Step.NEW_HEIGHT:
            for vote_type in (PREVOTE, PRECOMMIT):
                vote = s.votes(vote_type, s.round).votes.get(self._me)
                if vote is not None:
                    self._send("vote", vote.encode())
        if 0 <= s.valid_round < s.round:
            for vote in s.votes(PREVOTE, s.valid_round).for_block(s.valid_hash):
                self._send("vote", vote.encode())
        self._schedule(self.timeouts.rebroadcast_ms, self._rebroadcast)

    # --- starting a height -----------------------------------------------------------

    def _wait_for_start(self) -> None:
        """Start round 0 when TimeoutConfig.start_delay_ms says so."""
        if self._state.step != Step.NEW_HEIGHT:
            return
        since_start = None
        if self._last_start_at is not None:
            since_start = (self._now() - self._last_start_at) * 1000
        since_block = self.app.now_ms() - self.app.last_block_time_ms()
        if self._last_commit_at is not None:
            # A clock running behind the proposer's that dated the last block
            # would put the heartbeat off by as much, and this node would start
            # late, after the others' propose timeout when it is the proposer.
            # Time since the local commit, a moment after the block's time,
            # bounds the wait by what the others see.
            since_commit = round((self._now() - self._last_commit_at) * 1000)
            since_block = max(since_block, since_commit)
        pending = self.app.has_pending_txs()
        delay = self.timeouts.start_delay_ms(since_start, since_block, pending)
        if delay > 0:
            self._schedule(delay, self._wait_for_start)
            return
        self.enter_propose(0)
        self._advance()

    def _join(self) -> None:
        """A valid proposal or vote for our height: join it at once."""
        if self._state.step == Step.NEW_HEIGHT:
            self.enter_propose(0)

    # --- performing the rules --------------------------------------------------------

    def _advance(self) -> None:
        """Perform the upon-rules of consensus.rules until none fires."""
        while self._running:
            action = next_action(self._state, self._valid, self._timely)
            if action is None:
                return
            self._perform(action)

    def _perform(self, action: Action) -> None:
        s = self._state
        match action:
            case Decide(round=r, block=block):
                votes = s.votes(PRECOMMIT, r).for_block(block.hash)
                self.finalize_commit(block, CommitCertificate.from_votes(votes))
            case Prevote(block_hash=block_hash):
                self.enter_prevote(block_hash)
            case Polka(round=r, block=block):
                s.polka_seen.add(r)
                if s.step == Step.PREVOTE:
                    s.locked_round, s.locked_block = r, block
                    self.enter_precommit(block.hash)
                s.valid_round, s.valid_block = r, block
            case Precommit(block_hash=block_hash):
                self.enter_precommit(block_hash)
            case StartTimeout(step=step, round=r):
                flags = (
                    s.prevote_timeout_set
                    if step == Step.PREVOTE
                    else s.precommit_timeout_set
                )
                flags.add(r)
                self._schedule_timeout(step, r)
            case SkipRound(round=r):
                self.log.debug(
                    "round skip height=%d from=%d to=%d", s.height, s.round, r
                )
                self.enter_propose(r)

    def enter_propose(self, round: int) -> None:
        """StartRound(round): the proposer proposes; everyone starts
        timeoutPropose (it acts only if still in the propose step)."""
        s = self._state
        first = s.step == Step.NEW_HEIGHT
        s.round, s.step = round, Step.PROPOSE
        if first:
            s.joined_at = self._now()
            self._schedule(self.timeouts.rebroadcast_ms, self._rebroadcast)
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
        """Sign, record, count and send our vote of the current round. A vote
        restored from the write-ahead log is sent as it was, never re-signed."""
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
        if self.faults.on_signed is not None:
            self.faults.on_signed(message)
        if self.faults.halt_after_sign:
            self.log.warning("fault: halting right after signing")
            self._halt()
            raise _Halted
        return message

    def finalize_commit(
        self, block: Block, certificate: CommitCertificate, announce: bool = True
    ) -> None:
        """Commit `block` with `certificate`, announce it, go to the next height."""
        s = self._state
        try:
            self.app.commit_block(block, certificate)
        except Exception:
            self.log.exception("commit_block failed height=%d; halting", s.height)
            self._halt()
            raise _Halted from None
        now = self._now()
        self.log.info(
            "committed height=%d round=%d hash=%s txs=%d ms=%d",
            s.height,
            certificate.round,
            short(block.hash),
            len(block.txs),
            round((now - (s.joined_at or s.started_at)) * 1000),
        )
        # Blocks are spaced block_interval_ms from the start of one height to
        # the start of the next, so time spent executing and committing a
        # large block counts towards the interval instead of adding to it.
        self._last_start_at = s.joined_at or s.started_at
        self._last_commit_at = now
        payload = encode_commit_message(certificate, block.encode())
        self._catchup.committed(s.height, payload)
        if announce:
            self._send("commit", payload)
        self._enter_height(s.height + 1)

    # --- heights ---------------------------------------------------------------------

    def _new_height_state(self, height: int) -> HeightState:
        self._validator_sets = {
            h: v for h, v in self._validator_sets.items() if h >= height
        }
        validators = self._validators(height)
        signing = (
            self.signer is not None
            and height >= self._sign_from
            and self._me in validators
        )
        return HeightState(height, validators, signing, self._now())

    def _enter_height(self, height: int) -> None:
        self._timers.cancel_all()
        if self.wal is not None:
            self.wal.rotate(height)
        self._state = self._new_height_state(height)
        handlers = {"proposal": self.on_proposal, "vote": self.on_vote}
        for msg_type, payload in self._catchup.take(height):
            handlers[msg_type](payload)
        self._wait_for_start()

    def _catch_up_with_app(self) -> None:
        """Blocks committed outside consensus (by sync) move us past them."""
        last = self.app.last_height()
        if last >= self._state.height:
            self.log.info("caught up height=%d", last)
            self._last_start_at = self._last_commit_at = self._now()
            self._enter_height(last + 1)

    def _early(
        self, height: int, validator: bytes, key: tuple, msg_type: str, payload: bytes
    ) -> None:
        s = self._state
        if height == s.height + 1:
            self._catchup.buffer(height, key, msg_type, payload)
        else:
            self._catchup.seen_ahead(validator, height, s.height, s.members, s.f)

    def _help_peer_behind(self, height: int) -> None:
        payload = self._catchup.commit_for_peer(height)
        if payload is not None:
            self._send("commit", payload)

    # --- checks ----------------------------------------------------------------------

    def _valid(self, block: Block) -> bool:
        return self._block_reason(block) is None

    def _block_reason(self, block: Block) -> str | None:
        """Why `block` may not be the next block (None if it may), once per block."""
        s = self._state
        if block.hash not in s.checked:
            s.checked[block.hash] = block_problem(
                block, self.chain_id, s.height, s.members, self.app, self.log
            )
        return s.checked[block.hash]

    def _timely(self, block: Block) -> bool:
        drift = self.timeouts.max_clock_drift_ms
        return is_timely(block, self.app.now_ms(), drift, self.log)

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
        # everything any peer may have received from us.
        if self.wal is not None:
            self.wal.append(kind, self._state.height, body, sync=True)

    def _replay(self, records: list[WalRecord]) -> None:
        """Feed the logged inputs of this height through the handlers again, in
        order, to restore the round state. Own messages come back as received
        ones; the steps that made them reuse them instead of signing anew."""
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
                if record.kind in (Entry.PROPOSAL, Entry.OWN_PROPOSAL):
                    self.on_proposal(record.body)
                elif record.kind in (Entry.VOTE, Entry.OWN_VOTE):
                    self.on_vote(record.body)
                elif record.kind == Entry.TIMEOUT:
                    round, step = parse_timeout_body(record.body)
                    self.on_timeout(s.height, round, Step(step))
                self._advance()
                if self._state is not s:
                    break  # the logged inputs completed the height
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

    def _send(self, msg_type: str, payload: bytes) -> None:
        self._outbox.send(msg_type, payload)

    def _now(self) -> float:
        return self._loop.time()

    def _guarded(self, fn: Callable, *args: Any) -> Any:
        """Run a handler. A halt ends it quietly; any other error is logged and
        reported, so one bad message or a bug in one path cannot stop the loop."""
        if not self._running:
            return None
        try:
            return fn(*args)
        except _Halted:
            return None
        except Exception as exc:
            self.log.exception("consensus handler failed")
            return f"internal error: {type(exc).__name__}"
