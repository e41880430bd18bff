"""Validator-set changes and double-sign evidence on a live network.

Four validators run over real TLS in one process (tests.inprocess_cluster).
A fifth node, unknown to the validator set, becomes a validator by an on-chain
vote, signs commits, and is voted out again; the network commits throughout
and never forks. A validator's key signs two conflicting prevotes: the node
that sees both puts the evidence on chain, every node lists it, and no height
has two blocks.
"""

from __future__ import annotations

import logging
import os

import pytest

from client import builders
from consensus.messages import Vote, decode_certificate
from node.views import evidence_view
from state.address import address_of
from state.tx import ValidatorAction
from state.votes import PREVOTE, vote_sign_bytes
from tests.inprocess_cluster import InProcessCluster

log = logging.getLogger("test")
pytestmark = pytest.mark.slow


def signers_at(node, height: int) -> set[bytes]:
    return set(decode_certificate(node.store.commit_bytes(height)).validators)


def assert_no_fork(nodes) -> None:
    common = min(n.store.height for n in nodes)
    for height in range(1, common + 1):
        hashes = {n.store.block_bytes(height) for n in nodes}
        assert len(hashes) == 1, f"nodes disagree at height {height}"


async def vote_all(cluster, voters, action, key, name, effective) -> None:
    for i in voters:
        node, signer = cluster.nodes[i], cluster.keys[i]
        raw = builders.validator_vote(
            signer, cluster.genesis.chain_id, cluster.expiry(), action,
            key.public_key, name, effective,
        )  # fmt: skip
        status = await cluster.submit_final(node, raw)
        assert status.receipt.code == 0, status.receipt


async def test_a_validator_is_voted_in_signs_and_is_voted_out(tmp_path):
    cluster = InProcessCluster(tmp_path, validators=4, spares=1)
    validators, newcomer = cluster.nodes[:4], cluster.nodes[4]
    new_key = cluster.spare_keys[0]
    await cluster.start()
    try:
        await cluster.wait_for_height(2, validators)
        log.info("a node outside the set is refused by the validators")
        assert new_key.public_key not in validators[0].network.connected_peers()

        effective = validators[0].store.height + 8
        log.info("three of four vote it in from height %d", effective)
        await vote_all(
            cluster, [0, 1, 2], ValidatorAction.ADD, new_key, "n5", effective
        )
        await cluster.wait_for_height(effective + 3, validators)
        assert validators[0].store.validators[-1] == ["n5", new_key.public_key]

        log.info("it connects, syncs and signs commits")
        await cluster.wait_for(
            lambda: (
                newcomer.store.height >= effective
                and any(
                    new_key.public_key in signers_at(validators[0], h)
                    for h in range(effective, validators[0].store.height + 1)
                )
            ),
            60,
            "the new validator to sign a commit",
        )

        removal = validators[0].store.height + 8
        log.info("four of five vote it out from height %d", removal)
        await vote_all(
            cluster, [0, 1, 2, 3], ValidatorAction.REMOVE, new_key, "", removal
        )
        await cluster.wait_for_height(removal + 3, validators)
        assert new_key.public_key not in [k for _, k in validators[0].store.validators]
        for h in range(removal, validators[0].store.height + 1):
            assert new_key.public_key not in signers_at(validators[0], h)
        await cluster.wait_for(
            lambda: new_key.public_key not in validators[0].network.connected_peers(),
            15,
            "the removed validator's connection to be dropped",
        )

        log.info("the rest commit on, with one history")
        height = validators[0].store.height
        await cluster.wait_for_height(height + 2, validators)
        assert_no_fork(cluster.nodes)
    finally:
        await cluster.stop()


async def test_double_signing_is_recorded_on_chain(tmp_path):
    cluster = InProcessCluster(tmp_path, validators=4)
    await cluster.start()
    try:
        await cluster.wait_for_height(2)
        culprit = cluster.keys[2]
        observer = cluster.nodes[0]
        chain_id = cluster.genesis.chain_id

        log.info("validator 3's key signs two different prevotes in one round")
        for _ in range(20):
            status = observer.engine.status()
            votes = []
            for block_hash in sorted([os.urandom(32), os.urandom(32)]):
                message = vote_sign_bytes(
                    chain_id, PREVOTE, status.height, status.round, block_hash,
                    culprit.public_key,
                )  # fmt: skip
                votes.append(
                    Vote(PREVOTE, status.height, status.round, block_hash,
                         culprit.public_key, culprit.sign(message))
                )  # fmt: skip
            for vote in votes:
                await observer.engine.on_message("vote", vote.encode())
            if observer.engine.status().height == status.height:
                break

        log.info("the evidence is committed and every node lists it")
        await cluster.wait_for(
            lambda: all(evidence_view(n.store)["evidence"] for n in cluster.nodes),
            30,
            "evidence on every node",
        )
        (item,) = evidence_view(cluster.nodes[3].store)["evidence"]
        assert item["validator"] == address_of(culprit.public_key)
        assert item["reported_by"] == address_of(cluster.keys[0].public_key)

        height = observer.store.height
        await cluster.wait_for_height(height + 2)
        assert_no_fork(cluster.nodes)
    finally:
        await cluster.stop()
