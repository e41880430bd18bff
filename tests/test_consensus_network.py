"""Validators over the real ledger agree on blocks, and keep agreeing under faults.

Every scenario ends with the same safety check: no height has two different
blocks on any two nodes, every stored certificate verifies, and nodes at the
same height have the same state root.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import defaultdict

from consensus.messages import (
    NIL,
    PRECOMMIT,
    PREVOTE,
    DoubleSignEvidence,
    Vote,
    decode_vote,
    vote_sign_bytes,
)
from consensus.timeouts import TimeoutConfig
from state.block import Block, decode_receipts
from state.codes import Code
from state.ledger import account_key
from tests.test_consensus_harness import (
    CHAIN,
    FAST,
    VALIDATOR_KEYS,
    Cluster,
    award,
    is_vote,
)


def assert_one_vote_per_step(votes: list[Vote]) -> None:
    seen: dict[tuple, set[bytes]] = defaultdict(set)
    for vote in votes:
        seen[(vote.height, vote.round, vote.vote_type)].add(vote.block_hash)
    conflicts = {k: v for k, v in seen.items() if len(v) > 1}
    assert not conflicts, conflicts


async def test_four_validators_commit_twenty_heights(tmp_path):
    async with Cluster(tmp_path, n=4) as cluster:
        await cluster.start()
        await cluster.wait_height(20)
        assert cluster.assert_no_fork() >= 20
        # Compared at one height: the nodes go on committing meanwhile.
        hashes = {cluster.block(i, 20).hash for i in range(4)}
        roots = {cluster.block(i, 20).header.state_root for i in range(4)}
        assert len(roots) == 1 and len(hashes) == 1
        cluster.assert_no_errors()


async def test_transactions_are_committed_and_idle_chain_waits(tmp_path):
    # With a long heartbeat, blocks are made only when there is something to do.
    timeouts = dataclasses.replace(FAST, heartbeat_ms=60_000)
    async with Cluster(tmp_path, n=4, timeouts=timeouts) as cluster:
        await cluster.start()
        await asyncio.sleep(0.3)
        assert all(node.height == 0 for node in cluster.nodes)

        raws = [award(order) for order in range(30)]
        for raw in raws:
            cluster.submit(raw)
        await cluster.wait_height(1)
        deadline = asyncio.get_running_loop().time() + 10
        while any(node.app.mempool for node in cluster.nodes):
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        top = cluster.assert_no_fork()

        txs, codes = [], []
        for height in range(1, top + 1):
            txs += cluster.block(0, height).txs
            receipts = cluster.nodes[0].store.receipts_bytes(height)
            codes += [r.code for r in decode_receipts(receipts)]
        assert sorted(txs) == sorted(raws)
        assert codes == [Code.OK] * len(raws)
        # Every node credited the same coins to the same customers.
        for node in cluster.nodes[1:]:
            for raw in raws:
                customer = node.app.executor.signatures.decode(raw).payload.customer
                key = account_key(customer)
                assert node.store.get_state(key) == cluster.nodes[0].store.get_state(
                    key
                )
        assert all(node.height == top for node in cluster.nodes)
        cluster.assert_no_errors()


async def test_heartbeat_makes_empty_blocks_no_faster_than_it(tmp_path):
    timeouts = dataclasses.replace(FAST, heartbeat_ms=250)
    async with Cluster(tmp_path, n=4, timeouts=timeouts) as cluster:
        await cluster.start()
        await cluster.wait_height(3)
        times = [cluster.block(0, h).header.time_ms for h in range(1, 4)]
        assert all(b - a >= 250 for a, b in zip(times, times[1:], strict=False))
        assert all(not cluster.block(0, h).txs for h in range(1, 4))


async def test_one_silent_validator_does_not_stop_the_others(tmp_path):
    async with Cluster(tmp_path, n=4) as cluster:
        await cluster.start([0, 1, 2])
        await cluster.wait_height(8, [0, 1, 2])
        cluster.assert_no_fork()
        # Validator 3 proposes round 0 of heights 3 and 7: those took round 1.
        assert cluster.certificate(0, 3).round == 1
        assert cluster.certificate(0, 7).round == 1
        assert cluster.certificate(0, 4).round == 0
        cluster.assert_no_errors()


async def test_two_silent_validators_stop_commits_until_one_returns(tmp_path):
    async with Cluster(tmp_path, n=4) as cluster:
        await cluster.start([0, 1])
        await asyncio.sleep(0.8)
        assert all(node.height == 0 for node in cluster.nodes)

        await cluster.start([2])
        await cluster.wait_height(4, [0, 1, 2])
        cluster.assert_no_fork()
        assert cluster.nodes[3].height == 0
        cluster.assert_no_errors()


async def test_silent_proposer_means_round_one_commits(tmp_path):
    async with Cluster(tmp_path, n=4) as cluster:
        # Validator 1 proposes round 0 of height 1: (1 + 0) % 4.
        await cluster.start([0, 2, 3])
        await cluster.wait_height(1, [0, 2, 3])
        certificate = cluster.certificate(0, 1)
        assert certificate.round == 1
        assert cluster.block(0, 1).header.proposer == VALIDATOR_KEYS[2].public_key
        cluster.assert_no_errors()


async def test_invalid_proposal_gets_nil_prevotes_and_the_round_moves_on(tmp_path):
    async with Cluster(tmp_path, n=4) as cluster:
        liar = cluster.nodes[1].app  # proposer of (1, 0)
        honest_propose = liar.propose_block
        bad_hashes = []

        def propose_wrong_root(height: int, time_ms: int, proposer: bytes) -> Block:
            block = honest_propose(height, time_ms, proposer)
            if bad_hashes:
                return block
            header = dataclasses.replace(block.header, state_root=b"\x07" * 32)
            bad = Block(header, block.txs)
            liar.results[bad.hash] = liar.results[block.hash]
            bad_hashes.append(bad.hash)
            return bad

        liar.propose_block = propose_wrong_root
        await cluster.start()
        await cluster.wait_height(2)
        cluster.assert_no_fork()

        assert cluster.block(0, 1).hash != bad_hashes[0]
        assert cluster.certificate(0, 1).round >= 1
        for i in (0, 2, 3):
            round0 = [
                v
                for v in cluster.network.votes_by(i)
                if v.vote_type == PREVOTE and (v.height, v.round) == (1, 0)
            ]
            assert {v.block_hash for v in round0} == {NIL}
        cluster.assert_no_errors()


async def test_proposal_dated_too_far_ahead_gets_nil_prevotes(tmp_path):
    # Validator 1's clock runs 10 s fast; the others allow 5 s of drift.
    async with Cluster(tmp_path, n=4, skews={1: 10_000}) as cluster:
        await cluster.start()
        await cluster.wait_height(2)
        cluster.assert_no_fork()
        assert cluster.certificate(0, 1).round == 1
        assert cluster.block(0, 1).header.proposer == VALIDATOR_KEYS[2].public_key
        for i in (0, 2, 3):
            round0 = [
                v
                for v in cluster.network.votes_by(i)
                if v.vote_type == PREVOTE and (v.height, v.round) == (1, 0)
            ]
            assert {v.block_hash for v in round0} == {NIL}
        cluster.assert_no_errors()


async def test_fault_switches_drop_outbound_votes_and_proposals(tmp_path):
    async with Cluster(tmp_path, n=4) as cluster:
        # Validator 3 votes but nobody hears it; validator 1, proposer of
        # (1, 0), proposes but nobody hears that either.
        cluster.nodes[3].faults.drop_outbound_votes = True
        cluster.nodes[1].faults.drop_outbound_proposals = True
        await cluster.start()
        await cluster.wait_height(3)
        cluster.assert_no_fork()
        assert not cluster.network.votes_by(3)
        assert not [s for s, t, _ in cluster.network.sent if s == 1 and t == "proposal"]
        assert cluster.certificate(0, 1).round == 1
        silent = VALIDATOR_KEYS[3].public_key
        for height in range(1, 4):
            assert silent not in cluster.certificate(0, height).validators
        cluster.assert_no_errors()


async def test_double_signing_is_reported_and_no_fork(tmp_path):
    async with Cluster(tmp_path, n=4) as cluster:
        byzantine = VALIDATOR_KEYS[0]

        def equivocate(msg_type: str, payload: bytes):
            # Its guard signs one prevote; it signs a second one with the raw
            # key and shows each to a different part of the network.
            if msg_type != "vote" or decode_vote(payload).vote_type != PREVOTE:
                return [([1, 2, 3], msg_type, payload)]
            vote = decode_vote(payload)
            other = b"\x99" * 32 if vote.is_nil else NIL
            fake = dataclasses.replace(
                vote,
                block_hash=other,
                signature=byzantine.sign(
                    vote_sign_bytes(
                        CHAIN, PREVOTE, vote.height, vote.round, other, vote.validator
                    )
                ),
            )
            return [([1, 2], "vote", payload), ([2, 3], "vote", fake.encode())]

        cluster.network.rewrite[0] = equivocate
        await cluster.start()
        await cluster.wait_height(6)
        cluster.assert_no_fork()

        evidence = cluster.nodes[2].app.evidence
        assert evidence
        for item in evidence:
            assert isinstance(item, DoubleSignEvidence)
            assert item.validator == byzantine.public_key
            item.verify(CHAIN, [k.public_key for k in VALIDATOR_KEYS[:4]])
        assert not cluster.nodes[0].app.evidence
        cluster.assert_no_errors()


async def test_lagging_validator_catches_up_through_commit_messages(tmp_path):
    async with Cluster(tmp_path, n=4) as cluster:
        # Validator 3 hears nothing for a while; the other three go on.
        cluster.network.cut |= {(i, 3) for i in range(3)}
        await cluster.start()
        await cluster.wait_height(6, [0, 1, 2])
        assert cluster.nodes[3].height == 0

        cluster.network.heal()
        top = max(node.height for node in cluster.nodes)
        await cluster.wait_height(top + 3)
        cluster.assert_no_fork()
        assert cluster.nodes[3].app.sync_requests
        # Back in step: it votes on new heights again.
        late = [v for v in cluster.network.votes_by(3) if v.height > top + 1]
        assert late
        cluster.assert_no_errors()


async def test_node_that_misses_precommits_commits_from_certificates(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="consensus.n3")
    async with Cluster(tmp_path, n=4) as cluster:
        # Validator 3 never hears a precommit, so it can only finish a height
        # with the certificate another validator broadcasts after committing.
        precommit = is_vote(PRECOMMIT)
        cluster.network.filters.append(
            lambda src, dst, t, p: dst == 3 and precommit(src, dst, t, p)
        )
        await cluster.start()
        await cluster.wait_height(5)
        cluster.assert_no_fork()
        from_certificates = [
            r
            for r in caplog.records
            if r.name == "consensus.n3" and "from certificate" in r.getMessage()
        ]
        assert len(from_certificates) >= 5
        cluster.assert_no_errors()


async def test_read_only_follower_commits_without_voting(tmp_path):
    async with Cluster(tmp_path, n=4, followers=1) as cluster:
        await cluster.start()
        await cluster.wait_height(8)
        cluster.assert_no_fork()
        assert not [s for s, t, _ in cluster.network.sent if s == 4 and t != "commit"]
        assert cluster.nodes[4].engine.status().signing is False
        cluster.assert_no_errors()


async def test_validator_signs_only_from_its_start_height(tmp_path):
    async with Cluster(tmp_path, n=4) as cluster:
        await cluster.start([0, 1, 2])
        # As after losing its signer state: follow first, sign from height 3.
        await cluster.nodes[3].start(start_height=3)
        await cluster.wait_height(5)
        cluster.assert_no_fork()
        heights = {v.height for v in cluster.network.votes_by(3)}
        assert heights and min(heights) >= 3
        assert not [
            p
            for p in cluster.network.proposals()
            if p.height < 3 and p.proposer == VALIDATOR_KEYS[3].public_key
        ]
        cluster.assert_no_errors()


async def test_single_validator_chain(tmp_path):
    async with Cluster(tmp_path, n=1) as cluster:
        await cluster.start()
        await cluster.wait_height(5)
        cluster.assert_no_fork()


async def test_timeouts_never_exceed_the_cap_and_rounds_recover(tmp_path):
    scheduled: list[int] = []

    class Recording(TimeoutConfig):
        def timeout_ms(self, step: int, round: int) -> int:
            value = super().timeout_ms(step, round)
            scheduled.append(value)
            return value

    fields = {f.name: getattr(FAST, f.name) for f in dataclasses.fields(FAST)}
    short = {
        "propose_ms": 20,
        "propose_delta_ms": 40,
        "prevote_ms": 10,
        "prevote_delta_ms": 30,
        "precommit_ms": 10,
        "precommit_delta_ms": 30,
        "max_timeout_ms": 120,
    }
    timeouts = Recording(**{**fields, **short})
    async with Cluster(tmp_path, n=4, timeouts=timeouts) as cluster:
        # No proposal arrives anywhere: every round fails, timeouts grow.
        cluster.network.filters.append(lambda s, d, t, p: t == "proposal")
        await cluster.start()
        deadline = asyncio.get_running_loop().time() + 10
        while min(node.engine.status().round for node in cluster.nodes) < 5:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
        assert all(node.height == 0 for node in cluster.nodes)
        assert max(scheduled) == 120

        cluster.network.heal()
        await cluster.wait_height(2)
        cluster.assert_no_fork()
        assert max(scheduled) <= 120
        for node in cluster.nodes:
            assert_one_vote_per_step(cluster.network.votes_by(node.index))
        cluster.assert_no_errors()


async def test_a_validator_with_a_slow_clock_still_proposes_on_an_idle_chain(
    tmp_path,
):
    # Validator 1's clock is 3 s behind, beyond the 1 s drift allowed. On an
    # idle chain a height starts a heartbeat after the last block; by its own
    # clock that would be 3 s late, long after the others' propose timeout.
    # It counts from its own commit instead, so its turns still succeed.
    timeouts = dataclasses.replace(FAST, heartbeat_ms=300, max_clock_drift_ms=1_000)
    async with Cluster(tmp_path, n=4, timeouts=timeouts, skews={1: -3_000}) as cluster:
        await cluster.start()
        await cluster.wait_height(10)
        cluster.assert_no_fork()
        slow = VALIDATOR_KEYS[1].public_key
        for height in (5, 9):
            assert cluster.certificate(0, height).round == 0, height
            assert cluster.block(0, height).header.proposer == slow
        cluster.assert_no_errors()
