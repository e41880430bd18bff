"""The safety checker (tests.harness.safety) finds what it must, and only that.

Every multi-node test ends with this checker, so it must fail on the faults it
exists for: a key that signed two conflicting prevotes, two blocks committed
at one height, a final transaction lost or applied twice. And it must not
blame a key for a message someone forged in its name. The observations here
are made by hand: four test validators sign real votes and certificates over
a short chain of made-up blocks.
"""

from __future__ import annotations

import dataclasses
import hashlib

import nacl.signing
import pytest

from consensus.messages import (
    NIL,
    PRECOMMIT,
    PREVOTE,
    CommitCertificate,
    Proposal,
    Vote,
    proposal_sign_bytes,
)
from state.votes import vote_sign_bytes
from tests.harness.safety import (
    FinalTx,
    Observations,
    RecordedMessage,
    StoredBlock,
    check_safety,
    find_violations,
)

CHAIN = "perk-safety-1"
KEYS = [nacl.signing.SigningKey(bytes([i + 1]) * 32) for i in range(4)]
PUBLIC = [bytes(k.verify_key) for k in KEYS]
HEIGHTS = 5


def digest(*parts: object) -> bytes:
    return hashlib.sha256(repr(parts).encode()).digest()


def sign_vote(signer: int, vote_type: int, height: int, round_: int, block: bytes):
    key = KEYS[signer]
    message = vote_sign_bytes(CHAIN, vote_type, height, round_, block, PUBLIC[signer])
    return Vote(
        vote_type, height, round_, block, PUBLIC[signer], key.sign(message).signature
    )


def sign_proposal(signer: int, height: int, round_: int, block: bytes) -> Proposal:
    message = proposal_sign_bytes(CHAIN, height, round_, -1, block, PUBLIC[signer])
    signature = KEYS[signer].sign(message).signature
    return Proposal(height, round_, -1, block, PUBLIC[signer], signature)


def certificate(height: int, block: bytes, signers=(0, 1, 2), round_: int = 0):
    votes = [sign_vote(i, PRECOMMIT, height, round_, block) for i in signers]
    return CommitCertificate.from_votes(votes)


def make_chain(variant: str = "", txs: dict[int, list[bytes]] | None = None):
    """Blocks 1..HEIGHTS, linked and certified; `variant` makes another chain."""
    blocks, parent = {}, digest("genesis")
    for height in range(1, HEIGHTS + 1):
        block_hash = digest("block", height, variant)
        blocks[height] = StoredBlock(
            height,
            block_hash,
            parent,
            digest("root", height, variant),
            tuple((txs or {}).get(height, [])),
            certificate(height, block_hash).encode(),
        )
        parent = block_hash
    return blocks


def honest_messages() -> list[RecordedMessage]:
    """What a round of each height looks like when every validator is honest."""
    messages = []
    for height, block in make_chain().items():
        proposer = height % 4
        messages.append(
            RecordedMessage(
                "v1",
                "proposal",
                sign_proposal(proposer, height, 0, block.hash).encode(),
            )
        )
        for i in range(4):
            for vote_type in (PREVOTE, PRECOMMIT):
                vote = sign_vote(i, vote_type, height, 0, block.hash)
                messages.append(RecordedMessage(f"v{i + 1}", "vote", vote.encode()))
        messages.append(RecordedMessage("v2", "certificate", block.certificate))
    return messages


def observations(**changes) -> Observations:
    base = Observations(
        CHAIN,
        frozenset(PUBLIC),
        {"v1": make_chain(), "v2": make_chain()},
        honest_messages(),
        [],
    )
    return dataclasses.replace(base, **changes)


def test_an_honest_run_passes():
    report = check_safety(observations())
    assert report.violations == []
    assert report.heights == HEIGHTS
    assert report.unverified == 0
    # 5 proposals, 40 votes, and no precommit counted twice from certificates.
    assert report.statements == 5 + 40


def test_two_validly_signed_conflicting_prevotes_are_a_double_sign():
    messages = honest_messages()
    other_block = digest("another block at height 3")
    messages.append(
        RecordedMessage("v3", "vote", sign_vote(1, PREVOTE, 3, 0, other_block).encode())
    )

    problems = find_violations(observations(messages=messages)).violations
    assert len(problems) == 1, problems
    assert f"double sign by {PUBLIC[1][:4].hex()}: prevote h=3 r=0" in problems[0]
    with pytest.raises(AssertionError, match="double sign"):
        check_safety(observations(messages=messages))


def test_a_nil_prevote_beside_a_block_prevote_is_a_double_sign():
    messages = honest_messages()
    messages.append(
        RecordedMessage("v1", "vote", sign_vote(2, PREVOTE, 4, 0, NIL).encode())
    )
    problems = find_violations(observations(messages=messages)).violations
    assert len(problems) == 1 and "prevote h=4 r=0" in problems[0], problems


def test_a_precommit_in_a_certificate_counts_against_its_key():
    # Key 0 precommitted block 2 in round 0 (the stored certificates say so)
    # and another block in the same round, seen only inside a certificate.
    other = certificate(2, digest("other"), signers=(0,))
    messages = [
        *honest_messages(),
        RecordedMessage("v4", "certificate", other.encode()),
    ]
    problems = find_violations(observations(messages=messages)).violations
    assert any(
        f"double sign by {PUBLIC[0][:4].hex()}: precommit h=2 r=0" in p
        for p in problems
    ), problems


def test_a_forged_conflicting_vote_is_not_held_against_the_key():
    real = sign_vote(1, PREVOTE, 3, 0, digest("forged block"))
    forged = dataclasses.replace(real, signature=bytes(64))
    wrong_chain = Vote(
        PREVOTE,
        3,
        0,
        digest("forged block"),
        PUBLIC[1],
        KEYS[1]
        .sign(vote_sign_bytes("perk-other-1", PREVOTE, 3, 0, digest("x"), PUBLIC[1]))
        .signature,
    )
    messages = [
        *honest_messages(),
        RecordedMessage("v3", "vote", forged.encode()),
        RecordedMessage("v3", "vote", wrong_chain.encode()),
        RecordedMessage("v3", "vote", b"\x96garbage"),
    ]
    report = check_safety(observations(messages=messages))
    assert report.unverified == 2
    assert report.malformed == 1


def test_two_blocks_stored_at_one_height_are_a_fork():
    forked = make_chain()
    block = forked[4]
    other = digest("fork at 4")
    forked[4] = dataclasses.replace(
        block, hash=other, certificate=certificate(4, other, signers=(1, 2, 3)).encode()
    )
    forked[5] = dataclasses.replace(forked[5], parent_hash=other)

    problems = find_violations(observations(blocks={"v1": make_chain(), "v2": forked}))
    text = "\n".join(problems.violations)
    assert "fork at height 4" in text
    # Key 1 and key 2 precommitted both blocks at height 4, round 0.
    assert f"double sign by {PUBLIC[1][:4].hex()}: precommit h=4" in text


def test_a_recorded_quorum_certificate_for_another_block_is_a_fork():
    # No node stores it (say the node that did was wiped), but a quorum
    # certified another block at height 2 in round 1.
    other = certificate(2, digest("lost fork"), signers=(1, 2, 3), round_=1)
    messages = [
        *honest_messages(),
        RecordedMessage("v3", "certificate", other.encode()),
    ]
    problems = find_violations(observations(messages=messages)).violations
    assert any("fork at height 2" in p for p in problems), problems


def test_a_certificate_short_of_a_quorum_proves_no_commit():
    lone = certificate(2, digest("minority"), signers=(3,), round_=1)
    messages = [*honest_messages(), RecordedMessage("v3", "certificate", lone.encode())]
    assert find_violations(observations(messages=messages)).violations == []


def test_state_roots_that_differ_are_reported():
    other = make_chain()
    other[3] = dataclasses.replace(other[3], state_root=digest("diverged"))
    problems = find_violations(observations(blocks={"v1": make_chain(), "v2": other}))
    assert problems.violations == [
        f"state roots differ at height 3: {digest('root', 3, '')[:8].hex()} on v1; "
        f"{digest('diverged')[:8].hex()} on v2"
    ]


def test_a_block_not_linked_to_its_parent_is_reported():
    broken = make_chain()
    broken[3] = dataclasses.replace(broken[3], parent_hash=digest("elsewhere"))
    problems = find_violations(observations(blocks={"v1": broken})).violations
    assert len(problems) == 1 and "v1 height 3: parent" in problems[0], problems


def test_a_final_transaction_missing_from_the_chain_is_lost():
    kept, lost = digest("tx kept"), digest("tx lost")
    chain = make_chain(txs={2: [kept]})
    final = [FinalTx(kept, 2, "v1"), FinalTx(lost, 3, "v2")]

    problems = find_violations(
        observations(blocks={"v1": chain, "v2": chain}, final_txs=final)
    ).violations
    assert problems == [
        f"final tx {lost[:8].hex()} (via v2, height 3): missing from v1's chain",
        f"final tx {lost[:8].hex()} (via v2, height 3): missing from v2's chain",
    ]


def test_a_final_transaction_applied_twice_is_reported():
    tx = digest("tx twice")
    chain = make_chain(txs={2: [tx], 4: [tx]})
    problems = find_violations(
        observations(blocks={"v1": chain}, final_txs=[FinalTx(tx, 2, "v1")])
    ).violations
    assert problems == [
        f"final tx {tx[:8].hex()} (via v1, height 2): v1 holds it at heights [2, 4]"
    ]


def test_a_node_behind_the_final_height_is_not_blamed():
    tx = digest("tx at 5")
    full = make_chain(txs={5: [tx]})
    behind = {h: b for h, b in full.items() if h < 5}
    problems = find_violations(
        observations(
            blocks={"v1": full, "v2": behind}, final_txs=[FinalTx(tx, 5, "v1")]
        )
    ).violations
    assert problems == []
