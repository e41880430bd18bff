"""Consensus messages: canonical round trips, signatures, certificates, evidence,
and decoders that refuse every malformed input with one error type."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client.keys import Keypair
from consensus.messages import (
    NIL,
    PRECOMMIT,
    PREVOTE,
    CommitCertificate,
    DoubleSignEvidence,
    MalformedMessage,
    Proposal,
    VerificationError,
    Vote,
    decode_certificate,
    decode_commit_message,
    decode_evidence,
    decode_proposal,
    decode_proposal_message,
    decode_vote,
    encode_commit_message,
    encode_proposal_message,
    max_faulty,
    proposal_sign_bytes,
    quorum,
    vote_sign_bytes,
)
from state.block import Block, Header
from state.codec import DecodeError, encode

CHAIN = "perk-test-1"
KEYS = [Keypair.from_seed(bytes([50 + i]) * 32) for i in range(4)]
VALIDATORS = [k.public_key for k in KEYS]
OUTSIDER = Keypair.from_seed(bytes([99]) * 32)
BLOCK_HASH = bytes(range(32))


def vote(
    key: Keypair,
    vote_type: int = PRECOMMIT,
    height: int = 7,
    round: int = 2,
    block_hash: bytes = BLOCK_HASH,
    chain_id: str = CHAIN,
) -> Vote:
    message = vote_sign_bytes(
        chain_id, vote_type, height, round, block_hash, key.public_key
    )
    return Vote(vote_type, height, round, block_hash, key.public_key, key.sign(message))


def proposal(key: Keypair, height=7, round=2, pol_round=-1) -> Proposal:
    message = proposal_sign_bytes(
        CHAIN, height, round, pol_round, BLOCK_HASH, key.public_key
    )
    return Proposal(
        height, round, pol_round, BLOCK_HASH, key.public_key, key.sign(message)
    )


def certificate(keys=KEYS[:3], **kw) -> CommitCertificate:
    return CommitCertificate.from_votes(vote(k, **kw) for k in keys)


def sample_block(height: int = 7, txs: tuple[bytes, ...] = ()) -> Block:
    header = Header(
        chain_id=CHAIN,
        height=height,
        time_ms=1_750_000_000_000,
        parent_hash=b"\x01" * 32,
        tx_root=b"\x02" * 32,
        state_root=b"\x03" * 32,
        results_root=b"\x04" * 32,
        validators_hash=b"\x05" * 32,
        proposer=VALIDATORS[0],
    )
    return Block(header, txs)


# --- arithmetic ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "f", "q"), [(1, 0, 1), (3, 0, 3), (4, 1, 3), (6, 1, 5), (7, 2, 5), (10, 3, 7)]
)
def test_quorum_and_max_faulty(n, f, q):
    assert max_faulty(n) == f
    assert quorum(n) == q
    # Two quorums always share an honest validator.
    assert 2 * q - n > f


# --- votes and proposals -------------------------------------------------------------


def test_vote_round_trip_and_signature():
    v = vote(KEYS[0], PREVOTE, block_hash=NIL)
    assert decode_vote(v.encode()) == v
    assert v.is_nil
    v.verify(CHAIN)
    with pytest.raises(VerificationError):
        v.verify("perk-other-1")
    with pytest.raises(VerificationError):
        dataclasses.replace(v, round=3).verify(CHAIN)
    with pytest.raises(VerificationError):
        dataclasses.replace(v, vote_type=PRECOMMIT).verify(CHAIN)


def test_sign_bytes_are_domain_separated():
    v = vote_sign_bytes(CHAIN, PREVOTE, 1, 0, BLOCK_HASH, VALIDATORS[0])
    p = proposal_sign_bytes(CHAIN, 1, 0, -1, BLOCK_HASH, VALIDATORS[0])
    assert v.startswith(b"perkchain/vote/v1\x00")
    assert p.startswith(b"perkchain/proposal/v1\x00")
    assert v[len(b"perkchain/vote/v1\x00") :] == encode(
        [CHAIN, PREVOTE, 1, 0, BLOCK_HASH, VALIDATORS[0]]
    )


def test_proposal_round_trip_and_pol_round_rule():
    p = proposal(KEYS[1], round=3, pol_round=1)
    assert decode_proposal(p.encode()) == p
    p.verify(CHAIN)
    with pytest.raises(VerificationError):
        dataclasses.replace(p, pol_round=2).verify(CHAIN)
    # A proof-of-lock round must be before the proposal's round.
    with pytest.raises(MalformedMessage):
        decode_proposal(dataclasses.replace(p, pol_round=3).encode())
    with pytest.raises(MalformedMessage):
        decode_proposal(dataclasses.replace(p, pol_round=-2).encode())
    # A proposal names a block; nil is only for votes.
    with pytest.raises(MalformedMessage):
        decode_proposal(dataclasses.replace(p, block_hash=NIL).encode())


@pytest.mark.parametrize(
    "wire",
    [
        [3, 7, 2, BLOCK_HASH, VALIDATORS[0], b"\x00" * 64],  # unknown type
        [1, 0, 2, BLOCK_HASH, VALIDATORS[0], b"\x00" * 64],  # height 0
        [1, 7, 2, b"\x00" * 31, VALIDATORS[0], b"\x00" * 64],  # short hash
        [1, 7, 2, BLOCK_HASH, VALIDATORS[0][:31], b"\x00" * 64],  # short key
        [1, 7, 2, BLOCK_HASH, VALIDATORS[0], b"\x00" * 63],  # short signature
        [1, 7, -1, BLOCK_HASH, VALIDATORS[0], b"\x00" * 64],  # negative round
        [True, 7, 2, BLOCK_HASH, VALIDATORS[0], b"\x00" * 64],  # bool type
        [1, 7, 2, "nil", VALIDATORS[0], b"\x00" * 64],  # text hash
        [1, 7, 2, BLOCK_HASH, VALIDATORS[0]],  # missing field
    ],
)
def test_malformed_votes_are_refused(wire):
    with pytest.raises(MalformedMessage):
        decode_vote(encode(wire))


def test_malformed_message_is_a_decode_error():
    assert issubclass(MalformedMessage, DecodeError)


# --- certificates ------------------------------------------------------------------


def test_certificate_verifies_with_a_quorum():
    cert = certificate()
    cert.verify(CHAIN, VALIDATORS)
    assert decode_certificate(cert.encode()) == cert
    assert cert.validators == sorted(cert.validators)
    certificate(KEYS).verify(CHAIN, VALIDATORS)


def test_certificate_with_one_signature_removed_fails():
    cert = certificate()
    short = dataclasses.replace(cert, signatures=cert.signatures[1:])
    with pytest.raises(VerificationError, match="only 2 of 4 validators signed"):
        short.verify(CHAIN, VALIDATORS)


def test_certificate_with_a_foreign_key_fails():
    cert = certificate([KEYS[0], KEYS[1], OUTSIDER])
    with pytest.raises(VerificationError, match="not in the validator set"):
        cert.verify(CHAIN, VALIDATORS)


def test_certificate_with_a_duplicated_validator_fails():
    cert = certificate()
    first = cert.signatures[0]
    doubled = dataclasses.replace(cert, signatures=(first, first, cert.signatures[1]))
    with pytest.raises(VerificationError, match="listed twice"):
        doubled.verify(CHAIN, VALIDATORS)
    with pytest.raises(MalformedMessage):
        decode_certificate(doubled.encode())


def test_certificate_for_another_block_round_height_or_chain_fails():
    cert = certificate()
    for changed in (
        dataclasses.replace(cert, block_hash=b"\xee" * 32),
        dataclasses.replace(cert, round=cert.round + 1),
        dataclasses.replace(cert, height=cert.height + 1),
    ):
        with pytest.raises(VerificationError, match="does not verify"):
            changed.verify(CHAIN, VALIDATORS)
    with pytest.raises(VerificationError):
        cert.verify("perk-other-1", VALIDATORS)


def test_certificate_of_prevotes_fails():
    prevotes = [vote(k, PREVOTE) for k in KEYS[:3]]
    forged = CommitCertificate(
        7, 2, BLOCK_HASH, tuple(sorted((v.validator, v.signature) for v in prevotes))
    )
    with pytest.raises(VerificationError):
        forged.verify(CHAIN, VALIDATORS)


def test_certificate_from_mixed_votes_is_refused():
    with pytest.raises(ValueError):
        CommitCertificate.from_votes([vote(KEYS[0]), vote(KEYS[1], round=3)])
    with pytest.raises(ValueError):
        CommitCertificate.from_votes([vote(KEYS[0], block_hash=NIL)])


def test_certificate_decoder_refuses_unsorted_and_empty():
    cert = certificate()
    unsorted = dataclasses.replace(cert, signatures=cert.signatures[::-1])
    with pytest.raises(MalformedMessage):
        decode_certificate(unsorted.encode())
    with pytest.raises(MalformedMessage):
        decode_certificate(encode([7, 2, BLOCK_HASH, []]))


# --- evidence ----------------------------------------------------------------------


def test_evidence_round_trip_and_verify():
    a = vote(KEYS[2], PREVOTE, block_hash=BLOCK_HASH)
    b = vote(KEYS[2], PREVOTE, block_hash=NIL)
    evidence = DoubleSignEvidence.from_votes(a, b)
    assert evidence == DoubleSignEvidence.from_votes(b, a)
    assert decode_evidence(evidence.encode()) == evidence
    evidence.verify(CHAIN, VALIDATORS)
    assert evidence.validator == VALIDATORS[2]
    with pytest.raises(VerificationError):
        evidence.verify(CHAIN, VALIDATORS[:2])


@pytest.mark.parametrize(
    "other",
    [
        vote(KEYS[3], PREVOTE, block_hash=NIL),  # another validator
        vote(KEYS[2], PREVOTE, round=3, block_hash=NIL),  # another round
        vote(KEYS[2], PRECOMMIT, block_hash=NIL),  # another type
        dataclasses.replace(
            vote(KEYS[2], PREVOTE, block_hash=NIL), signature=b"\x01" * 64
        ),
    ],
)
def test_evidence_that_proves_nothing_fails(other):
    evidence = DoubleSignEvidence.from_votes(vote(KEYS[2], PREVOTE), other)
    with pytest.raises(VerificationError):
        evidence.verify(CHAIN)


def test_evidence_of_one_vote_twice_is_malformed():
    a = vote(KEYS[2], PREVOTE)
    with pytest.raises(MalformedMessage):
        decode_evidence(encode([a.to_wire(), a.to_wire()]))


# --- gossip payloads -----------------------------------------------------------------


def test_proposal_message_round_trip():
    block = sample_block()
    p = dataclasses.replace(proposal(KEYS[0]), block_hash=block.hash)
    decoded, decoded_block = decode_proposal_message(
        encode_proposal_message(p, block.encode())
    )
    assert decoded == p and decoded_block == block


def test_proposal_message_with_another_block_is_refused():
    p = proposal(KEYS[0])  # names BLOCK_HASH, not the block's hash
    with pytest.raises(MalformedMessage, match="not the one the proposal names"):
        decode_proposal_message(encode_proposal_message(p, sample_block().encode()))


def test_commit_message_carries_blocks_over_one_mebibyte():
    # codec.decode caps a byte field at 1 MiB; a full block is larger.
    block = sample_block(txs=tuple(bytes([i % 251]) * 1000 for i in range(1100)))
    block_bytes = block.encode()
    assert len(block_bytes) > 1 << 20
    cert = certificate(block_hash=block.hash)
    payload = encode_commit_message(cert, block_bytes)
    assert decode_commit_message(payload) == (cert, block)
    with pytest.raises(MalformedMessage):
        decode_commit_message(payload + b"\x00")
    with pytest.raises(MalformedMessage):
        decode_commit_message(payload[:-1])


def test_non_canonical_block_length_is_refused():
    block = sample_block()
    cert = certificate(block_hash=block.hash)
    canonical = encode_commit_message(cert, block.encode())
    head = encode(cert.to_wire())
    raw = block.encode()
    # The same bytes with a 4-byte length where 1 byte suffices.
    padded = b"\x92" + head + b"\xc6" + len(raw).to_bytes(4, "big") + raw
    assert padded != canonical
    with pytest.raises(MalformedMessage):
        decode_commit_message(padded)


# --- strict decoders -----------------------------------------------------------------

DECODERS = [
    decode_vote,
    decode_proposal,
    decode_certificate,
    decode_evidence,
    decode_proposal_message,
    decode_commit_message,
]


def _valid_samples() -> list[bytes]:
    block = sample_block()
    p = dataclasses.replace(proposal(KEYS[0]), block_hash=block.hash)
    return [
        vote(KEYS[0]).encode(),
        vote(KEYS[1], PREVOTE, block_hash=NIL).encode(),
        proposal(KEYS[0], round=4, pol_round=2).encode(),
        certificate().encode(),
        DoubleSignEvidence.from_votes(
            vote(KEYS[0]), vote(KEYS[0], block_hash=NIL)
        ).encode(),
        encode_proposal_message(p, block.encode()),
        encode_commit_message(certificate(block_hash=block.hash), block.encode()),
    ]


def _decodes_or_malformed(data) -> None:
    for decoder in DECODERS:
        try:
            decoder(data)
        except MalformedMessage:
            pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_malformed(data):
    _decodes_or_malformed(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(_valid_samples()),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=255),
    st.sampled_from(["flip", "cut", "append", "insert"]),
)
def test_mutated_messages_only_raise_malformed(sample, where, byte, how):
    i = where % len(sample)
    if how == "flip":
        data = sample[:i] + bytes([sample[i] ^ (byte or 1)]) + sample[i + 1 :]
    elif how == "cut":
        data = sample[:i]
    elif how == "append":
        data = sample + bytes([byte])
    else:
        data = sample[:i] + bytes([byte]) + sample[i:]
    _decodes_or_malformed(data)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**63), max_value=2**64 - 1)
        | st.binary(max_size=70)
        | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=7),
        max_leaves=20,
    )
)
def test_arbitrary_msgpack_values_only_raise_malformed(value):
    data = encode(value)
    _decodes_or_malformed(data)
    _decodes_or_malformed(encode([value, b"\x00" * 5]))


def test_non_bytes_input_is_malformed():
    for decoder in DECODERS:
        for value in (None, "text", 7, [b"\x00"]):
            with pytest.raises(MalformedMessage):
                decoder(value)
