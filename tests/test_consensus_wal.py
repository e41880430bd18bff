"""The write-ahead log, and validators restarted in the middle of a height."""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict

import pytest

from consensus.messages import PRECOMMIT, PREVOTE, Vote
from consensus.wal import MAX_RECORD_BYTES, Entry, WriteAheadLog, read_records
from tests.test_consensus_harness import Cluster, is_vote


@pytest.fixture
def wal(tmp_path):
    log = WriteAheadLog(tmp_path / "cs" / "consensus.wal")
    yield log
    log.close()


def test_records_come_back_in_order(wal):
    assert wal.open(3) == []
    wal.append(Entry.PROPOSAL, 3, b"p" * 10, sync=False)
    wal.append(Entry.OWN_VOTE, 3, b"v", sync=True)
    wal.append(Entry.TIMEOUT, 3, b"\x00\x00\x00\x01\x02", sync=False)
    wal.close()
    records = wal.open(3)
    assert [(r.kind, r.height, r.body) for r in records] == [
        (Entry.PROPOSAL, 3, b"p" * 10),
        (Entry.OWN_VOTE, 3, b"v"),
        (Entry.TIMEOUT, 3, b"\x00\x00\x00\x01\x02"),
    ]


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 12])
def test_a_torn_last_record_is_ignored_and_overwritten(wal, cut):
    wal.open(3)
    wal.append(Entry.VOTE, 3, b"first", sync=False)
    wal.append(Entry.VOTE, 3, b"second", sync=False)
    wal.close()
    size = wal.path.stat().st_size
    os.truncate(wal.path, size - cut)

    assert [r.body for r in wal.open(3)] == [b"first"]
    wal.append(Entry.VOTE, 3, b"third", sync=True)
    wal.close()
    assert [r.body for r in wal.open(3)] == [b"first", b"third"]


def test_a_record_with_a_bad_checksum_ends_the_log(wal):
    wal.open(3)
    wal.append(Entry.VOTE, 3, b"first", sync=False)
    wal.append(Entry.VOTE, 3, b"second", sync=False)
    wal.close()
    data = bytearray(wal.path.read_bytes())
    data[-1] ^= 0xFF
    wal.path.write_bytes(bytes(data))
    assert [r.body for r in wal.open(3)] == [b"first"]


def test_a_log_of_another_height_is_replaced(wal):
    wal.open(3)
    wal.append(Entry.VOTE, 3, b"old", sync=True)
    wal.close()
    assert wal.open(4) == []
    records, _ = read_records(wal.path)
    assert [(r.kind, r.height) for r in records] == [(Entry.HEIGHT, 4)]


def test_rotation_starts_an_empty_log(wal):
    wal.open(3)
    wal.append(Entry.VOTE, 3, b"x", sync=True)
    wal.rotate(4)
    wal.append(Entry.VOTE, 4, b"y", sync=True)
    wal.close()
    assert [r.body for r in wal.open(4)] == [b"y"]


def test_records_up_to_a_full_proposal_fit_and_larger_are_refused(wal):
    wal.open(1)
    body = os.urandom(3 << 19)
    wal.append(Entry.PROPOSAL, 1, body, sync=True)
    with pytest.raises(ValueError):
        wal.append(Entry.PROPOSAL, 1, bytes(MAX_RECORD_BYTES), sync=True)
    wal.close()
    assert [r.body for r in wal.open(1)] == [body]


def test_garbage_file_is_an_empty_log(wal):
    wal.path.write_bytes(b"\xff" * 100)
    assert wal.open(1) == []
    assert read_records(wal.path)[0][0].kind == Entry.HEIGHT


# --- restarts --------------------------------------------------------------------


async def wait_for(condition, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.005)


def assert_one_vote_per_step(votes: list[Vote]) -> None:
    seen: dict[tuple, set[bytes]] = defaultdict(set)
    for vote in votes:
        seen[(vote.height, vote.round, vote.vote_type)].add(vote.block_hash)
    assert all(len(hashes) == 1 for hashes in seen.values()), seen


async def test_restarted_validator_keeps_its_lock(tmp_path):
    async with Cluster(tmp_path, n=4) as cluster:
        # Nobody hears a precommit: everyone locks in round 0, nothing commits.
        cluster.network.filters.append(is_vote(PRECOMMIT))
        await cluster.start()
        node = cluster.nodes[0]
        await wait_for(lambda: node.engine.status().locked_round == 0)
        locked = node.engine.status().locked_hash

        # Killed mid-height, then started on the same store, WAL and signer.
        await node.stop()
        await node.start()
        status = node.engine.status()
        assert (status.height, status.round, status.step) == (1, 0, "precommit")
        assert (status.locked_round, status.locked_hash) == (0, locked)
        assert (status.valid_round, status.valid_hash) == (0, locked)

        cluster.network.heal()
        await cluster.wait_height(2)
        cluster.assert_no_fork()
        assert cluster.block(0, 1).hash.hex() == locked
        assert_one_vote_per_step(cluster.network.votes_by(0))
        cluster.assert_no_errors()


async def test_validator_killed_between_signing_and_sending(tmp_path):
    async with Cluster(tmp_path, n=4) as cluster:
        node = cluster.nodes[0]
        node.faults.halt_after_sign = True
        await cluster.start()
        await wait_for(lambda: not node.engine.status().running)
        signed = node.signer.last
        assert signed is not None and signed.height == 1
        # The signature never left: not in the WAL, not on the network.
        assert not cluster.network.votes_by(0)

        await node.stop()
        node.faults.halt_after_sign = False
        await node.start()
        await cluster.wait_height(3)
        cluster.assert_no_fork()

        # Replay re-derived the same vote; the guard handed back the same
        # signature, and nothing conflicting was ever signed.
        votes = cluster.network.votes_by(0)
        same_step = [
            v
            for v in votes
            if (v.height, v.round, v.vote_type)
            == (signed.height, signed.round, PREVOTE)
        ]
        assert [v.signature for v in same_step][:1] == [signed.signature]
        assert_one_vote_per_step(votes)
        cluster.assert_no_errors()


async def test_restart_after_commit_starts_the_next_height(tmp_path):
    async with Cluster(tmp_path, n=4) as cluster:
        await cluster.start()
        await cluster.wait_height(3)
        node = cluster.nodes[2]
        await node.stop()
        height = node.height
        await node.start()
        assert node.engine.status().height == height + 1
        await cluster.wait_height(height + 3)
        cluster.assert_no_fork()
        for i in range(4):
            assert_one_vote_per_step(cluster.network.votes_by(i))
        cluster.assert_no_errors()
