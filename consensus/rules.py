"""The upon-rules of Algorithm 1: what a validator must do next at its height.

Tendermint consensus is written as a set of rules "upon <messages seen> while
<step>: <act>". `next_action` reads the round state (consensus.rounds) and
returns the first rule that fires, as an Action; the engine performs it and
asks again, until no rule fires. Keeping the rules apart from the engine keeps
each of them next to the line of the paper it implements, and free of I/O.

`valid(block)` is the deterministic validity check (the block executes on the
last committed state); `timely(block)` is the local clock check applied only
to fresh proposals before prevoting them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from consensus.messages import NIL, PRECOMMIT, PREVOTE
from consensus.rounds import HeightState, Step
from state.block import Block


@dataclass(frozen=True)
class Decide:
    """A quorum precommitted `block` in `round`: commit it."""

    round: int
    block: Block


@dataclass(frozen=True)
class Prevote:
    block_hash: bytes


@dataclass(frozen=True)
class Polka:
    """A quorum prevoted `block` in `round` (first time): lock on it and
    precommit it if still in prevote; either way it becomes the valid value."""

    round: int
    block: Block


@dataclass(frozen=True)
class Precommit:
    block_hash: bytes


@dataclass(frozen=True)
class StartTimeout:
    step: Step
    round: int


@dataclass(frozen=True)
class SkipRound:
    round: int


Action = Decide | Prevote | Polka | Precommit | StartTimeout | SkipRound


def next_action(
    s: HeightState,
    valid: Callable[[Block], bool],
    timely: Callable[[Block], bool],
) -> Action | None:
    if s.step == Step.NEW_HEIGHT:
        return None
    r = s.round

    # Upon PROPOSAL(h, r', v) and 2f+1 PRECOMMIT(h, r', id(v)), in any round
    # r', with v valid: decide v. The block may come from the proposal of any
    # round (a re-proposal carries the same block), since the precommits alone
    # make it final.
    blocks = {block.hash: block for _, block in s.proposals.values()}
    for pr, precommits in sorted(s.precommits.items()):
        decided = precommits.quorum_for(s.quorum)
        if decided in blocks and valid(blocks[decided]):
            return Decide(pr, blocks[decided])

    entry = s.proposals.get(r)
    if s.step == Step.PROPOSE and entry is not None:
        proposal, block = entry
        vr = proposal.pol_round
        if vr == -1:
            # Upon PROPOSAL(h, r, v, -1) while propose: prevote v if it is
            # valid and timely and we are not locked on another block.
            unlocked = s.locked_round == -1 or s.locked_hash == block.hash
            ok = valid(block) and timely(block) and unlocked
            return Prevote(block.hash if ok else NIL)
        if s.count(PREVOTE, vr, block.hash) >= s.quorum:
            # Upon PROPOSAL(h, r, v, vr) and 2f+1 PREVOTE(h, vr, id(v)), vr < r,
            # while propose: prevote v if valid and our lock is no newer than
            # vr, or is on v itself.
            free = s.locked_round <= vr or s.locked_hash == block.hash
            return Prevote(block.hash if valid(block) and free else NIL)

    if (
        entry is not None
        and s.step >= Step.PREVOTE
        and r not in s.polka_seen
        and s.count(PREVOTE, r, entry[1].hash) >= s.quorum
        and valid(entry[1])
    ):
        # Upon PROPOSAL(h, r, v) and 2f+1 PREVOTE(h, r, id(v)), v valid,
        # step >= prevote, for the first time.
        return Polka(r, entry[1])

    if s.step == Step.PREVOTE and s.count(PREVOTE, r, NIL) >= s.quorum:
        # Upon 2f+1 PREVOTE(h, r, nil) while prevote: precommit nil.
        return Precommit(NIL)

    if (
        s.step == Step.PREVOTE
        and r not in s.prevote_timeout_set
        and s.count(PREVOTE, r, None) >= s.quorum
    ):
        # Upon 2f+1 PREVOTE(h, r, *) while prevote, first time: timeoutPrevote.
        return StartTimeout(Step.PREVOTE, r)

    if r not in s.precommit_timeout_set and s.count(PRECOMMIT, r, None) >= s.quorum:
        # Upon 2f+1 PRECOMMIT(h, r, *), first time: timeoutPrecommit.
        return StartTimeout(Step.PRECOMMIT, r)

    target = s.skip_target()
    if target is not None:
        # Upon f+1 messages of a round above ours: at least one honest
        # validator is there already, so go there now.
        return SkipRound(target)
    return None
