"""One engine at a time: what it refuses, what it reports, how it times out."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.keys import Keypair
from consensus.messages import (
    NIL,
    PRECOMMIT,
    PREVOTE,
    CommitCertificate,
    Proposal,
    Vote,
    encode_commit_message,
    encode_proposal_message,
    proposal_sign_bytes,
    vote_sign_bytes,
)
from consensus.signer import STEP_PRECOMMIT, STEP_PREVOTE, STEP_PROPOSE
from consensus.timeouts import TimeoutConfig
from state.block import Block, Header
from tests.test_consensus_harness import (
    CHAIN,
    FAST,
    GENESIS_MS,
    VALIDATOR_KEYS,
    Cluster,
)

OUTSIDER = Keypair.from_seed(bytes([77]) * 32)
SOME_HASH = b"\x42" * 32


def signed_vote(
    key: Keypair, height=1, round=0, block_hash=SOME_HASH, vote_type=PREVOTE
):
    message = vote_sign_bytes(
        CHAIN, vote_type, height, round, block_hash, key.public_key
    )
    return Vote(vote_type, height, round, block_hash, key.public_key, key.sign(message))


def fake_block(height: int, proposer: bytes) -> Block:
    header = Header(
        chain_id=CHAIN,
        height=height,
        time_ms=GENESIS_MS + height,
        parent_hash=b"\x01" * 32,
        tx_root=b"\x02" * 32,
        state_root=b"\x03" * 32,
        results_root=b"\x04" * 32,
        validators_hash=b"\x05" * 32,
        proposer=proposer,
    )
    return Block(header, ())


def signed_proposal(key: Keypair, block: Block, round=0) -> bytes:
    message = proposal_sign_bytes(
        CHAIN, block.height, round, -1, block.hash, key.public_key
    )
    proposal = Proposal(
        block.height, round, -1, block.hash, key.public_key, key.sign(message)
    )
    return encode_proposal_message(proposal, block.encode())


@pytest.fixture
async def lone(tmp_path):
    """Validator 0 of four, running alone: the others are driven by the test."""
    timeouts = dataclasses.replace(FAST, heartbeat_ms=60_000)
    cluster = Cluster(tmp_path, n=4, timeouts=timeouts)
    await cluster.start([0])
    yield cluster.nodes[0]
    await cluster.close()


async def test_invalid_messages_are_refused_with_a_reason(lone):
    engine = lone.engine
    assert "unknown message type" in await engine.on_message("gossip", b"")
    assert "malformed vote" in await engine.on_message("vote", b"\x00")
    assert "malformed proposal" in await engine.on_message("proposal", b"\x92")
    assert "malformed commit" in await engine.on_message("commit", b"")

    outsider = signed_vote(OUTSIDER)
    assert "not a validator" in await engine.on_message("vote", outsider.encode())

    forged = dataclasses.replace(signed_vote(VALIDATOR_KEYS[1]), round=1)
    assert "does not verify" in await engine.on_message("vote", forged.encode())

    # (1 + 0) % 4 = 1: validator 2 may not propose round 0 of height 1.
    block = fake_block(1, VALIDATOR_KEYS[2].public_key)
    wrong = signed_proposal(VALIDATOR_KEYS[2], block)
    assert "not the proposer" in await engine.on_message("proposal", wrong)

    weak = CommitCertificate.from_votes(
        [
            signed_vote(VALIDATOR_KEYS[i], block_hash=block.hash, vote_type=PRECOMMIT)
            for i in (1, 2)
        ]
    )
    payload = encode_commit_message(weak, block.encode())
    assert "quorum" in await engine.on_message("commit", payload)
    assert lone.height == 0


async def test_a_valid_vote_joins_the_height_at_once(lone):
    engine = lone.engine
    assert engine.status().step == "new_height"
    vote = signed_vote(VALIDATOR_KEYS[1], block_hash=NIL)
    assert await engine.on_message("vote", vote.encode()) is None
    status = engine.status()
    assert (status.height, status.round, status.step) == (1, 0, "propose")
    # Duplicates are harmless.
    assert await engine.on_message("vote", vote.encode()) is None


async def test_conflicting_votes_are_reported_once(lone):
    engine = lone.engine
    first = signed_vote(VALIDATOR_KEYS[3], block_hash=SOME_HASH)
    second = signed_vote(VALIDATOR_KEYS[3], block_hash=NIL)
    third = signed_vote(VALIDATOR_KEYS[3], block_hash=b"\x43" * 32)
    assert await engine.on_message("vote", first.encode()) is None
    assert "conflicts" in await engine.on_message("vote", second.encode())
    assert "conflicts" in await engine.on_message("vote", third.encode())
    assert len(lone.app.evidence) == 1
    evidence = lone.app.evidence[0]
    assert {evidence.vote_a.block_hash, evidence.vote_b.block_hash} == {SOME_HASH, NIL}
    evidence.verify(CHAIN)


async def test_a_certificate_ahead_asks_for_sync(lone):
    block = fake_block(5, VALIDATOR_KEYS[1].public_key)
    certificate = CommitCertificate.from_votes(
        signed_vote(
            VALIDATOR_KEYS[i], height=5, block_hash=block.hash, vote_type=PRECOMMIT
        )
        for i in (1, 2, 3)
    )
    payload = encode_commit_message(certificate, block.encode())
    assert await lone.engine.on_message("commit", payload) is None
    assert lone.app.sync_requests == [5]
    assert lone.height == 0


async def test_votes_far_ahead_ask_for_sync_once_f_plus_one_send_them(lone):
    engine = lone.engine
    await engine.on_message("vote", signed_vote(VALIDATOR_KEYS[1], height=9).encode())
    assert lone.app.sync_requests == []  # one validator may be lying
    await engine.on_message("vote", signed_vote(VALIDATOR_KEYS[2], height=8).encode())
    # One of the two is honest, so height 7 is committed somewhere.
    assert lone.app.sync_requests == [7]


async def test_f_plus_one_votes_of_a_later_round_skip_to_it(lone):
    engine = lone.engine
    for i in (1, 2):
        vote = signed_vote(VALIDATOR_KEYS[i], round=5, block_hash=NIL)
        await engine.on_message("vote", vote.encode())
    status = engine.status()
    assert (status.round, status.step) == (5, "propose")


async def test_an_invalid_block_gets_a_nil_prevote(lone):
    engine = lone.engine
    block = fake_block(1, VALIDATOR_KEYS[1].public_key)  # wrong parent, roots
    payload = signed_proposal(VALIDATOR_KEYS[1], block)
    assert await engine.on_message("proposal", payload) is None
    assert engine.status().step == "prevote"
    assert lone.signer.last.order == (1, 0, STEP_PREVOTE)
    assert lone.signer.last.block_hash == NIL


async def test_stop_cancels_everything(lone):
    engine = lone.engine
    await engine.on_message("vote", signed_vote(VALIDATOR_KEYS[1]).encode())
    assert engine._timers
    await engine.stop()
    assert not engine._timers
    assert engine.status().running is False
    assert await engine.on_message("vote", b"\x00") is None


async def test_a_read_only_engine_never_signs(tmp_path):
    async with Cluster(tmp_path, n=4, followers=1) as cluster:
        await cluster.start([4])
        follower = cluster.nodes[4]
        vote = signed_vote(VALIDATOR_KEYS[1], block_hash=NIL)
        assert await follower.engine.on_message("vote", vote.encode()) is None
        await asyncio.sleep(0.3)  # past the propose timeout
        assert follower.engine.status().step == "prevote"
        assert not cluster.network.sent


# --- timeouts --------------------------------------------------------------------


@given(
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.integers(1, 60_000),
    st.sampled_from([STEP_PROPOSE, STEP_PREVOTE, STEP_PRECOMMIT]),
    st.integers(0, 2**31 - 1),
)
def test_timeouts_grow_with_the_round_and_never_pass_the_cap(
    base, delta, cap, step, round
):
    config = TimeoutConfig(
        propose_ms=base,
        propose_delta_ms=delta,
        prevote_ms=base,
        prevote_delta_ms=delta,
        precommit_ms=base,
        precommit_delta_ms=delta,
        max_timeout_ms=cap,
    )
    value = config.timeout_ms(step, round)
    assert value <= cap
    assert value == min(cap, base + delta * round)
    assert config.timeout_ms(step, round + 1) >= value


def test_timeout_config_is_checked():
    with pytest.raises(ValueError):
        TimeoutConfig(propose_ms=-1)
    with pytest.raises(ValueError):
        TimeoutConfig(max_timeout_ms=0)
    with pytest.raises(ValueError):
        TimeoutConfig().timeout_ms(STEP_PROPOSE, -1)
