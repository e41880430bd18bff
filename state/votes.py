"""Consensus votes as the ledger sees them: for evidence of double signing.

The ledger records evidence that a validator signed two conflicting votes, so
it must be able to check such a pair by itself, on every node and in every
replay. This module holds the one definition of what a vote signs; the
consensus engine signs and verifies votes with these same bytes.

    vote = [type, height, round, block_hash, validator, signature]

    signed bytes = VOTE_DOMAIN + canonical([chain_id, type, height, round,
                                            block_hash, validator])

type is 1 for a prevote and 2 for a precommit; block_hash is 32 bytes, or
empty for a vote for nothing (nil).
"""

from __future__ import annotations

import nacl.bindings
import nacl.exceptions

from state.codec import (
    DecodeError,
    check_array,
    check_bytes,
    check_uint,
    decode,
    encode,
)

VOTE_DOMAIN = b"perkchain/vote/v1\x00"
PREVOTE = 1
PRECOMMIT = 2
MAX_EVIDENCE_BYTES = 512


def vote_sign_bytes(
    chain_id: str,
    vote_type: int,
    height: int,
    round: int,
    block_hash: bytes,
    validator: bytes,
) -> bytes:
    return VOTE_DOMAIN + encode(
        [chain_id, vote_type, height, round, block_hash, validator]
    )


def signature_ok(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return False
    return True


class EvidenceError(ValueError):
    """Evidence that does not prove a double signature."""


def check_double_sign(chain_id: str, evidence: bytes) -> tuple[bytes, int, int, int]:
    """Check that `evidence` is two validly signed, conflicting votes by one key.

    Returns (validator, height, round, type). Raises EvidenceError otherwise.
    Whether the key was a validator is for the caller to check.
    """
    try:
        value = decode(evidence, MAX_EVIDENCE_BYTES)
        check_array(value, 2, "evidence")
        votes = [_vote(v) for v in value]
    except DecodeError as exc:
        raise EvidenceError(f"malformed evidence: {exc}") from None
    a, b = votes
    if a[4] != b[4]:
        raise EvidenceError("the votes are by different validators")
    if a[:3] != b[:3]:
        raise EvidenceError("the votes are for different steps")
    if not a[3] < b[3]:
        raise EvidenceError("the votes must name different blocks, ordered by hash")
    for vote_type, height, round, block_hash, validator, signature in votes:
        message = vote_sign_bytes(
            chain_id, vote_type, height, round, block_hash, validator
        )
        if not signature_ok(validator, message, signature):
            raise EvidenceError("a vote's signature does not verify")
    return a[4], a[1], a[2], a[0]


def _vote(v: list) -> tuple:
    check_array(v, 6, "vote")
    vote_type = check_uint(v[0], "type")
    if vote_type not in (PREVOTE, PRECOMMIT):
        raise DecodeError(f"vote type {vote_type} is unknown")
    block_hash = check_bytes(v[3], "block_hash")
    if len(block_hash) not in (0, 32):
        raise DecodeError("block_hash must be 32 bytes or empty")
    return (
        vote_type,
        check_uint(v[1], "height"),
        check_uint(v[2], "round"),
        block_hash,
        check_bytes(v[4], "validator", 32),
        check_bytes(v[5], "signature", 64),
    )
