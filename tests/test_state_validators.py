"""Validator-set changes by on-chain vote, and evidence of double signing.

A change needs more than two thirds of the current validators, takes effect at
the height it names (at least two above the block that approves it), and can
never shrink the set below the genesis minimum. Evidence is two conflicting
votes signed by one (current or past) validator; it is recorded once.
"""

from __future__ import annotations

import pytest

from client import builders
from client.keys import Keypair
from consensus.messages import DoubleSignEvidence, Vote
from state.block import decode_block
from state.codes import Code
from state.genesis import parse_genesis
from state.ledger import KEY_PENDING_CHANGES
from state.store import validators_hash
from state.tx import ValidatorAction
from state.votes import PREVOTE, vote_sign_bytes
from tests.state_helpers import ADMIN, GENESIS_MS, VALIDATOR, Chain, codes

V1 = VALIDATOR
V2, V3, V4, V5 = (Keypair.from_seed(bytes([n]) * 32) for n in (40, 41, 42, 43))
OUTSIDER = Keypair.from_seed(bytes([44]) * 32)
CHAIN_ID = "perk-test-1"
ADD, REMOVE = ValidatorAction.ADD, ValidatorAction.REMOVE


def four_validator_genesis(min_validators: int = 3):
    return parse_genesis(
        {
            "chain_id": CHAIN_ID,
            "genesis_time_ms": GENESIS_MS,
            "validators": [
                {"name": f"v{i}", "key": k.address}
                for i, k in enumerate((V1, V2, V3, V4), 1)
            ],
            "admins": [ADMIN.address],
            "program": {"min_validators": min_validators},
        }
    )


@pytest.fixture
def chain(tmp_path):
    c = Chain(tmp_path / "db", four_validator_genesis())
    yield c
    c.close()


def vote(chain: Chain, key: Keypair, action, who: Keypair, name: str, at: int, n=0):
    return builders.validator_vote(
        key, chain.chain_id, chain.exp + n, action, who.public_key, name, at
    )


def keys_of(chain: Chain) -> list[bytes]:
    return [key for _, key in chain.store.validators]


def test_a_validator_is_added_by_more_than_two_thirds_at_the_stated_height(chain):
    effective = chain.store.height + 6
    assert chain.run([vote(chain, V1, ADD, V5, "v5", effective)]) == [Code.OK]
    assert chain.run([vote(chain, V2, ADD, V5, "v5", effective)]) == [Code.OK]
    assert V5.public_key not in keys_of(chain)  # two of four is not enough

    result = chain.block([vote(chain, V3, ADD, V5, "v5", effective)])
    assert codes(result) == [Code.OK]
    assert ("validator_change_approved", V5.public_key, 0) in result.receipts[0].events
    assert V5.public_key not in keys_of(chain)  # approved, not yet in effect

    old_hash = chain.store.validators_hash
    while chain.store.height < effective - 1:
        chain.block([])
    assert keys_of(chain) == [k.public_key for k in (V1, V2, V3, V4, V5)]
    assert chain.store.validators_hash == validators_hash(chain.store.validators)
    assert chain.store.validators_hash != old_hash
    block, _ = chain.build([])
    assert block.height == effective
    assert block.header.validators_hash == chain.store.validators_hash


def test_votes_are_refused_with_their_reason(chain):
    at = chain.store.height + 5
    too_soon = chain.store.height + 2  # the vote's block is height + 1
    cases = [
        (vote(chain, OUTSIDER, ADD, V5, "v5", at), Code.UNAUTHORISED),
        (vote(chain, V1, ADD, V5, "v5", too_soon), Code.INVALID_VALIDATOR_CHANGE),
        (vote(chain, V1, ADD, V2, "v2", at), Code.INVALID_VALIDATOR_CHANGE),
        (vote(chain, V1, ADD, V5, "", at), Code.INVALID_VALIDATOR_CHANGE),
        (vote(chain, V1, REMOVE, V5, "", at), Code.INVALID_VALIDATOR_CHANGE),
    ]  # fmt: skip
    before = chain.state()
    assert chain.run([raw for raw, _ in cases]) == [code for _, code in cases]
    assert chain.state() == before

    assert chain.run([vote(chain, V1, ADD, V5, "v5", at)]) == [Code.OK]
    again = vote(chain, V1, ADD, V5, "v5", at, n=1)
    assert chain.run([again]) == [Code.ALREADY_VOTED]


def test_the_set_never_shrinks_below_the_minimum(chain):
    at = chain.store.height + 5
    removals = [vote(chain, k, REMOVE, V4, "", at) for k in (V1, V2, V3)]
    assert chain.run(removals) == [Code.OK] * 3
    # With V4's removal approved, removing another would leave 2 < 3.
    refused = vote(chain, V1, REMOVE, V3, "", at + 1)
    assert chain.run([refused]) == [Code.VALIDATOR_SET_LIMIT]
    # A second vote on an already approved change is refused too.
    assert chain.run([vote(chain, V4, REMOVE, V4, "", at)]) == [
        Code.INVALID_VALIDATOR_CHANGE
    ]
    while chain.store.height < at:
        chain.block([])
    assert keys_of(chain) == [k.public_key for k in (V1, V2, V3)]
    assert chain.store.get_state(KEY_PENDING_CHANGES) is None


def test_changes_replay_to_the_same_roots(tmp_path, chain):
    at = chain.store.height + 3
    chain.block([vote(chain, k, ADD, V5, "v5", at) for k in (V1, V2, V3)])
    for _ in range(3):
        chain.block([])
    other = Chain(tmp_path / "replay", four_validator_genesis())
    try:
        for height in range(1, chain.store.height + 1):
            block = decode_block(chain.store.block_bytes(height))
            result = other.executor.execute_block(block)
            other.store.commit_block(block, b"", result)
            assert other.store.state_root == result.state_root
        assert other.store.validators == chain.store.validators
    finally:
        other.close()


# --- evidence -----------------------------------------------------------------------


def signed_vote(key: Keypair, height: int, block_hash: bytes) -> Vote:
    message = vote_sign_bytes(CHAIN_ID, PREVOTE, height, 0, block_hash, key.public_key)
    return Vote(PREVOTE, height, 0, block_hash, key.public_key, key.sign(message))


def double_sign(key: Keypair, height: int = 7) -> bytes:
    a = signed_vote(key, height, b"\x01" * 32)
    b = signed_vote(key, height, b"\x02" * 32)
    return DoubleSignEvidence.from_votes(a, b).encode()


def report(chain: Chain, evidence: bytes, n: int = 0) -> bytes:
    return builders.report_evidence(ADMIN, chain.chain_id, chain.exp + n, evidence)


def test_evidence_of_double_signing_is_recorded_once(chain):
    evidence = double_sign(V2)
    result = chain.block([report(chain, evidence)])
    assert codes(result) == [Code.OK]
    assert result.receipts[0].events == (("double_sign", V2.public_key, 0),)
    assert chain.run([report(chain, evidence, n=1)]) == [Code.EVIDENCE_EXISTS]


def test_evidence_that_proves_nothing_is_refused(chain):
    a = signed_vote(V2, 7, b"\x01" * 32)
    forged = Vote(
        a.vote_type, a.height, a.round, b"\x02" * 32, a.validator, a.signature
    )
    same = DoubleSignEvidence(a, a).encode()
    bad_signature = DoubleSignEvidence.from_votes(a, forged).encode()
    not_validator = double_sign(OUTSIDER)
    before = chain.state()
    raws = [
        report(chain, e, n) for n, e in enumerate((same, bad_signature, not_validator))
    ]
    assert chain.run(raws) == [Code.INVALID_EVIDENCE] * 3
    assert chain.run([report(chain, b"\x00", n=5)]) == [Code.INVALID_EVIDENCE]
    assert chain.state() == before
