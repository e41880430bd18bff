"""What a validator knows about the height it is deciding: its round state.

For one height the engine keeps the proposals and votes received in every
round, the current round and step, and the two values that carry over between
rounds (Buchman, Kwon, Milosevic 2018, Algorithm 1):

- locked value/round: the block this validator precommitted last. It prevotes
  no other block in later rounds unless shown a quorum of prevotes for that
  block from a round at or after its lock (a proof of lock change). This is
  what keeps two quorums of precommits, in different rounds, from naming
  different blocks.
- valid value/round: the last block it saw a quorum prevote for. A proposer
  re-proposes it, so a block that almost made it is not lost.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import IntEnum

from consensus.messages import NIL, PREVOTE, Proposal, Vote, max_faulty, quorum
from state.block import Block


class Step(IntEnum):
    NEW_HEIGHT = 0  # waiting to start round 0
    PROPOSE = 1
    PREVOTE = 2
    PRECOMMIT = 3


@dataclass(frozen=True)
class Status:
    """Where consensus stands: height, round, step, lock and valid value."""

    height: int
    round: int
    step: str
    locked_round: int
    locked_hash: str
    valid_round: int
    valid_hash: str
    signing: bool
    running: bool


class VoteSet:
    """The votes of one type in one round: the first one of each validator."""

    def __init__(self) -> None:
        self.votes: dict[bytes, Vote] = {}
        self._tally: Counter[bytes] = Counter()

    def add(self, vote: Vote) -> Vote | None:
        """Count `vote` unless its validator already voted; return that earlier
        vote when it names a different block (a double sign), else None."""
        earlier = self.votes.get(vote.validator)
        if earlier is not None:
            return earlier if earlier.block_hash != vote.block_hash else None
        self.votes[vote.validator] = vote
        self._tally[vote.block_hash] += 1
        return None

    def count(self, block_hash: bytes) -> int:
        return self._tally[block_hash]

    def total(self) -> int:
        return len(self.votes)

    def quorum_for(self, quorum: int) -> bytes | None:
        """The block (not nil) that `quorum` validators voted for, if any."""
        for block_hash, count in self._tally.items():
            if count >= quorum and block_hash != NIL:
                return block_hash
        return None

    def for_block(self, block_hash: bytes) -> list[Vote]:
        return [v for v in self.votes.values() if v.block_hash == block_hash]


@dataclass
class HeightState:
    height: int
    validators: list[bytes]
    # True when this node signs at this height (a validator, past start_height).
    signing: bool
    started_at: float
    round: int = 0
    step: Step = Step.NEW_HEIGHT
    locked_round: int = -1
    locked_block: Block | None = None
    valid_round: int = -1
    valid_block: Block | None = None
    proposals: dict[int, tuple[Proposal, Block]] = field(default_factory=dict)
    prevotes: dict[int, VoteSet] = field(default_factory=dict)
    precommits: dict[int, VoteSet] = field(default_factory=dict)
    # Distinct validators heard from per round, for round skipping.
    senders: dict[int, set[bytes]] = field(default_factory=dict)
    # Block hash -> None if valid, else the reason; each block executes once.
    checked: dict[bytes, str | None] = field(default_factory=dict)
    # "For the first time" flags of Algorithm 1, per round.
    prevote_timeout_set: set[int] = field(default_factory=set)
    precommit_timeout_set: set[int] = field(default_factory=set)
    polka_seen: set[int] = field(default_factory=set)
    # Own messages restored from the write-ahead log, reused instead of re-signed.
    own_proposals: dict[int, tuple[Proposal, Block]] = field(default_factory=dict)
    own_votes: dict[tuple[int, int], Vote] = field(default_factory=dict)
    joined_at: float | None = None

    def __post_init__(self) -> None:
        self.members = frozenset(self.validators)
        self.f = max_faulty(len(self.validators))
        self.quorum = quorum(len(self.validators))

    def proposer(self, round: int) -> bytes:
        """Rotation: the proposer of (h, r) is validators[(h + r) % n]."""
        return self.validators[(self.height + round) % len(self.validators)]

    def votes(self, vote_type: int, round: int) -> VoteSet:
        table = self.prevotes if vote_type == PREVOTE else self.precommits
        vote_set = table.get(round)
        if vote_set is None:
            vote_set = table[round] = VoteSet()
        return vote_set

    def count(self, vote_type: int, round: int, block_hash: bytes | None) -> int:
        """Votes for `block_hash` (None: for anything) in `round`."""
        table = self.prevotes if vote_type == PREVOTE else self.precommits
        vote_set = table.get(round)
        if vote_set is None:
            return 0
        return vote_set.total() if block_hash is None else vote_set.count(block_hash)

    def add_vote(self, vote: Vote) -> Vote | None:
        """Record `vote`; return an earlier conflicting vote of its validator."""
        earlier = self.votes(vote.vote_type, vote.round).add(vote)
        if earlier is None:
            self.senders.setdefault(vote.round, set()).add(vote.validator)
        return earlier

    def has_vote(self, vote: Vote) -> bool:
        table = self.prevotes if vote.vote_type == PREVOTE else self.precommits
        vote_set = table.get(vote.round)
        return vote_set is not None and vote.validator in vote_set.votes

    def add_proposal(self, proposal: Proposal, block: Block) -> None:
        self.proposals[proposal.round] = (proposal, block)
        self.senders.setdefault(proposal.round, set()).add(proposal.proposer)

    def skip_target(self) -> int | None:
        """The highest round above ours that f+1 validators already speak in."""
        higher = [
            r
            for r, who in self.senders.items()
            if r > self.round and len(who) >= self.f + 1
        ]
        return max(higher) if higher else None

    @property
    def locked_hash(self) -> bytes:
        return self.locked_block.hash if self.locked_block is not None else NIL

    @property
    def valid_hash(self) -> bytes:
        return self.valid_block.hash if self.valid_block is not None else NIL

    def status(self, running: bool) -> Status:
        return Status(
            height=self.height,
            round=self.round,
            step=self.step.name.lower(),
            locked_round=self.locked_round,
            locked_hash=self.locked_hash.hex(),
            valid_round=self.valid_round,
            valid_hash=self.valid_hash.hex(),
            signing=self.signing,
            running=running,
        )
