"""Consensus messages: votes, proposals, commit certificates and evidence.

Validators agree on each block in rounds. In a round the proposer signs a
Proposal naming a block by its hash; every validator then signs a prevote and a
precommit (Votes) for that hash, or for nil (the empty hash) when it saw no
acceptable proposal in time. A block is final once a quorum of validators
precommitted it in one round; those precommits, gathered, are its
CommitCertificate, and a header plus its certificate proves the block to anyone
who knows the validator set.

Wire forms (canonical msgpack, see state.codec):

    vote        = [type, height, round, block_hash, validator, signature]
    proposal    = [height, round, pol_round, block_hash, proposer, signature]
    certificate = [height, round, block_hash, [[validator, signature], ...]]
    evidence    = [vote, vote]

- type        1 prevote, 2 precommit
- block_hash  32 bytes, or b"" for nil (votes only)
- pol_round   the round whose prevotes justify re-proposing a block the
              proposer saw a quorum prevote for, or -1 for a fresh block
- certificate signatures are sorted by validator key, one per validator

Every signature is Ed25519 over a domain tag plus the canonical encoding of the
signed fields with the chain id in front, so a signature is valid for one
message kind on one chain only:

    vote      b"perkchain/vote/v1\\x00" + [chain_id, type, height, round,
                                           block_hash, validator]
    proposal  b"perkchain/proposal/v1\\x00" + [chain_id, height, round,
                                               pol_round, block_hash, proposer]

The proposed block travels beside its proposal, and a committed block beside
its certificate, as the gossip payloads

    proposal message = [proposal, block_bytes]
    commit message   = [certificate, block_bytes]

Decoders are strict: any input that is not exactly the canonical encoding of a
well-formed message raises MalformedMessage and nothing else. Verification of a
well-formed message (signatures, validator set, quorum) raises
VerificationError.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from state.block import HASH_BYTES, MAX_BLOCK_BYTES, Block, decode_block
from state.codec import (
    DecodeError,
    check_array,
    check_bytes,
    check_uint,
    decode,
    encode,
)
from state.genesis import MAX_VALIDATORS
from state.tx import KEY_BYTES, SIGNATURE_BYTES
from state.votes import (
    PRECOMMIT,
    PREVOTE,
    signature_ok,
    vote_sign_bytes,
)

PROPOSAL_DOMAIN = b"perkchain/proposal/v1\x00"

VOTE_TYPE_NAMES = {PREVOTE: "prevote", PRECOMMIT: "precommit"}
NIL = b""

MAX_HEIGHT = (1 << 63) - 1
# Rounds grow by one per failed round; 2**31 of them is far beyond any outage.
MAX_ROUND = (1 << 31) - 1

MAX_VOTE_BYTES = 256
MAX_PROPOSAL_BYTES = 256
# One signature entry is a 2-array of a 32-byte key and a 64-byte signature.
_CERT_ENTRY_BYTES = 1 + (2 + KEY_BYTES) + (2 + SIGNATURE_BYTES)
MAX_CERTIFICATE_BYTES = 128 + MAX_VALIDATORS * _CERT_ENTRY_BYTES
MAX_EVIDENCE_BYTES = 2 * MAX_VOTE_BYTES + 8
MAX_PROPOSAL_MESSAGE_BYTES = MAX_PROPOSAL_BYTES + MAX_BLOCK_BYTES + 8
MAX_COMMIT_MESSAGE_BYTES = MAX_CERTIFICATE_BYTES + MAX_BLOCK_BYTES + 8


class MalformedMessage(DecodeError):
    """Bytes that are not the canonical encoding of a well-formed message."""


class VerificationError(ValueError):
    """A well-formed message that does not verify: a bad signature, a signer
    outside the validator set, or too few signers for a quorum."""


# --- validator set arithmetic ------------------------------------------------------


def max_faulty(n: int) -> int:
    """f: the most validators that may be faulty while n still agree safely."""
    return (n - 1) // 3


def quorum(n: int) -> int:
    """The smallest number of distinct validators that is more than 2/3 of n.

    Any two quorums share more than n/3 validators, so at least one honest one:
    that is why two conflicting blocks can never both gather a quorum.
    """
    return 2 * n // 3 + 1


def short(block_hash: bytes) -> str:
    """A hash prefix for log lines; nil shows as "nil"."""
    return block_hash[:4].hex() if block_hash else "nil"


# --- signatures --------------------------------------------------------------------


def proposal_sign_bytes(
    chain_id: str,
    height: int,
    round: int,
    pol_round: int,
    block_hash: bytes,
    proposer: bytes,
) -> bytes:
    return PROPOSAL_DOMAIN + encode(
        [chain_id, height, round, pol_round, block_hash, proposer]
    )


# --- field checks ------------------------------------------------------------------


def _height(value: Any) -> int:
    height = check_uint(value, "height", MAX_HEIGHT)
    if height == 0:
        raise MalformedMessage("height: 0 is the genesis, nothing votes on it")
    return height


def _round(value: Any, name: str = "round") -> int:
    return check_uint(value, name, MAX_ROUND)


def _key(value: Any, name: str) -> bytes:
    return check_bytes(value, name, KEY_BYTES)


def _signature(value: Any) -> bytes:
    return check_bytes(value, "signature", SIGNATURE_BYTES)


def _block_hash(value: Any, nil_allowed: bool) -> bytes:
    if nil_allowed and type(value) is bytes and value == NIL:
        return NIL
    return check_bytes(value, "block_hash", HASH_BYTES)


def strict_decoder(decoder):
    """Turn every DecodeError a decoder raises into MalformedMessage."""

    def wrapped(data: Any):
        try:
            return decoder(data)
        except MalformedMessage:
            raise
        except DecodeError as exc:
            raise MalformedMessage(str(exc)) from None

    wrapped.__name__ = decoder.__name__
    wrapped.__doc__ = decoder.__doc__
    return wrapped


# --- votes -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Vote:
    vote_type: int
    height: int
    round: int
    block_hash: bytes
    validator: bytes
    signature: bytes

    @property
    def is_nil(self) -> bool:
        return self.block_hash == NIL

    @property
    def type_name(self) -> str:
        return VOTE_TYPE_NAMES[self.vote_type]

    def sign_bytes(self, chain_id: str) -> bytes:
        return vote_sign_bytes(
            chain_id,
            self.vote_type,
            self.height,
            self.round,
            self.block_hash,
            self.validator,
        )

    def to_wire(self) -> list:
        return [
            self.vote_type,
            self.height,
            self.round,
            self.block_hash,
            self.validator,
            self.signature,
        ]

    def encode(self) -> bytes:
        return encode(self.to_wire())

    @classmethod
    def from_wire(cls, v: Any) -> Vote:
        check_array(v, 6, "vote")
        vote_type = check_uint(v[0], "type")
        if vote_type not in VOTE_TYPE_NAMES:
            raise MalformedMessage(
                f"type: {vote_type} is neither prevote nor precommit"
            )
        return cls(
            vote_type=vote_type,
            height=_height(v[1]),
            round=_round(v[2]),
            block_hash=_block_hash(v[3], nil_allowed=True),
            validator=_key(v[4], "validator"),
            signature=_signature(v[5]),
        )

    def verify(self, chain_id: str) -> None:
        """Raise VerificationError unless `validator` signed this vote on this chain."""
        if not signature_ok(self.validator, self.sign_bytes(chain_id), self.signature):
            raise VerificationError(
                f"{self.type_name} h={self.height} r={self.round} by "
                f"{self.validator[:4].hex()}: signature does not verify"
            )

    def describe(self) -> str:
        return (
            f"{self.type_name} h={self.height} r={self.round} "
            f"block={short(self.block_hash)} validator={self.validator[:4].hex()}"
        )


@strict_decoder
def decode_vote(data: Any) -> Vote:
    """A vote from its canonical bytes; raises MalformedMessage."""
    return Vote.from_wire(decode(data, MAX_VOTE_BYTES))


# --- proposals ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proposal:
    height: int
    round: int
    pol_round: int
    block_hash: bytes
    proposer: bytes
    signature: bytes

    def sign_bytes(self, chain_id: str) -> bytes:
        return proposal_sign_bytes(
            chain_id,
            self.height,
            self.round,
            self.pol_round,
            self.block_hash,
            self.proposer,
        )

    def to_wire(self) -> list:
        return [
            self.height,
            self.round,
            self.pol_round,
            self.block_hash,
            self.proposer,
            self.signature,
        ]

    def encode(self) -> bytes:
        return encode(self.to_wire())

    @classmethod
    def from_wire(cls, v: Any) -> Proposal:
        check_array(v, 6, "proposal")
        round_ = _round(v[1])
        # A block can only be re-proposed on the strength of an earlier round.
        if type(v[2]) is not int or not -1 <= v[2] < round_:
            raise MalformedMessage("pol_round: expected -1 or a round below round")
        return cls(
            height=_height(v[0]),
            round=round_,
            pol_round=v[2],
            block_hash=_block_hash(v[3], nil_allowed=False),
            proposer=_key(v[4], "proposer"),
            signature=_signature(v[5]),
        )

    def verify(self, chain_id: str) -> None:
        """Raise VerificationError unless `proposer` signed this proposal."""
        if not signature_ok(self.proposer, self.sign_bytes(chain_id), self.signature):
            raise VerificationError(
                f"proposal h={self.height} r={self.round}: signature does not verify"
            )

    def describe(self) -> str:
        return (
            f"proposal h={self.height} r={self.round} pol={self.pol_round} "
            f"block={short(self.block_hash)} proposer={self.proposer[:4].hex()}"
        )


@strict_decoder
def decode_proposal(data: Any) -> Proposal:
    """A proposal from its canonical bytes; raises MalformedMessage."""
    return Proposal.from_wire(decode(data, MAX_PROPOSAL_BYTES))


# --- commit certificates -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommitCertificate:
    """A quorum of precommits for one block in one round: proof the block is final."""

    height: int
    round: int
    block_hash: bytes
    signatures: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def from_votes(cls, votes: Iterable[Vote]) -> CommitCertificate:
        """The certificate of `votes`, precommits for one (height, round, block)."""
        votes = list(votes)
        if not votes:
            raise ValueError("a certificate needs at least one precommit")
        first = votes[0]
        for vote in votes:
            if (
                vote.vote_type != PRECOMMIT
                or (vote.height, vote.round) != (first.height, first.round)
                or vote.block_hash != first.block_hash
                or vote.is_nil
            ):
                raise ValueError(f"{vote.describe()} does not belong in a certificate")
        by_validator = {v.validator: v.signature for v in votes}
        return cls(
            first.height,
            first.round,
            first.block_hash,
            tuple(sorted(by_validator.items())),
        )

    @property
    def validators(self) -> list[bytes]:
        return [validator for validator, _ in self.signatures]

    def precommits(self) -> list[Vote]:
        return [
            Vote(PRECOMMIT, self.height, self.round, self.block_hash, key, sig)
            for key, sig in self.signatures
        ]

    def to_wire(self) -> list:
        return [
            self.height,
            self.round,
            self.block_hash,
            [[key, sig] for key, sig in self.signatures],
        ]

    def encode(self) -> bytes:
        return encode(self.to_wire())

    @classmethod
    def from_wire(cls, v: Any) -> CommitCertificate:
        check_array(v, 4, "certificate")
        entries = v[3]
        if type(entries) is not list or not 1 <= len(entries) <= MAX_VALIDATORS:
            raise MalformedMessage(
                f"signatures: expected an array of 1..{MAX_VALIDATORS} entries"
            )
        signatures = []
        for i, entry in enumerate(entries):
            check_array(entry, 2, f"signatures[{i}]")
            signatures.append(
                (_key(entry[0], f"signatures[{i}].validator"), _signature(entry[1]))
            )
        # One form per certificate: validators strictly ascending, so each once.
        for (a, _), (b, _) in zip(signatures, signatures[1:], strict=False):
            if a >= b:
                raise MalformedMessage("signatures: validators not strictly ascending")
        return cls(
            height=_height(v[0]),
            round=_round(v[1]),
            block_hash=_block_hash(v[2], nil_allowed=False),
            signatures=tuple(signatures),
        )

    def verify(self, chain_id: str, validators: Sequence[bytes]) -> None:
        """Raise VerificationError unless a quorum of distinct members of
        `validators` signed a precommit for exactly (height, round, block_hash)."""
        members = set(validators)
        if len(members) != len(validators):
            raise VerificationError("the validator set lists a key twice")
        if len(self.block_hash) != HASH_BYTES:
            raise VerificationError("a certificate must name a block, not nil")
        seen: set[bytes] = set()
        for vote in self.precommits():
            who = vote.validator[:4].hex()
            if vote.validator not in members:
                raise VerificationError(f"signer {who} is not in the validator set")
            if vote.validator in seen:
                raise VerificationError(f"validator {who} is listed twice")
            seen.add(vote.validator)
            if not signature_ok(
                vote.validator, vote.sign_bytes(chain_id), vote.signature
            ):
                raise VerificationError(
                    f"precommit of {who} does not verify for h={self.height} "
                    f"r={self.round} block={short(self.block_hash)}"
                )
        needed = quorum(len(members))
        if len(seen) < needed:
            raise VerificationError(
                f"only {len(seen)} of {len(members)} validators signed; "
                f"a quorum is {needed}"
            )


@strict_decoder
def decode_certificate(data: Any) -> CommitCertificate:
    """A commit certificate from its canonical bytes; raises MalformedMessage."""
    return CommitCertificate.from_wire(decode(data, MAX_CERTIFICATE_BYTES))


# --- evidence ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DoubleSignEvidence:
    """Two votes by one validator for one (height, round, type), for different
    blocks (nil counts as a block here). An honest validator never signs both,
    so the pair proves that validator misbehaved."""

    vote_a: Vote
    vote_b: Vote

    @classmethod
    def from_votes(cls, a: Vote, b: Vote) -> DoubleSignEvidence:
        # One form per pair: ordered by block hash.
        return cls(a, b) if a.block_hash < b.block_hash else cls(b, a)

    @property
    def validator(self) -> bytes:
        return self.vote_a.validator

    @property
    def height(self) -> int:
        return self.vote_a.height

    def to_wire(self) -> list:
        return [self.vote_a.to_wire(), self.vote_b.to_wire()]

    def encode(self) -> bytes:
        return encode(self.to_wire())

    @classmethod
    def from_wire(cls, v: Any) -> DoubleSignEvidence:
        check_array(v, 2, "evidence")
        a, b = Vote.from_wire(v[0]), Vote.from_wire(v[1])
        if not a.block_hash < b.block_hash:
            raise MalformedMessage("evidence: votes not ordered by block hash")
        return cls(a, b)

    def verify(self, chain_id: str, validators: Sequence[bytes] | None = None) -> None:
        """Raise VerificationError unless both votes are validly signed by one
        validator (of `validators`, when given) for the same height, round and
        type, and name different blocks."""
        a, b = self.vote_a, self.vote_b
        if a.validator != b.validator:
            raise VerificationError("evidence: the votes are by different validators")
        if (a.vote_type, a.height, a.round) != (b.vote_type, b.height, b.round):
            raise VerificationError("evidence: the votes are for different steps")
        if a.block_hash == b.block_hash:
            raise VerificationError("evidence: both votes name the same block")
        if validators is not None and a.validator not in validators:
            raise VerificationError("evidence: the signer is not a validator")
        a.verify(chain_id)
        b.verify(chain_id)

    def describe(self) -> str:
        a, b = self.vote_a, self.vote_b
        return (
            f"double {a.type_name} h={a.height} r={a.round} "
            f"validator={a.validator[:4].hex()} "
            f"blocks={short(a.block_hash)},{short(b.block_hash)}"
        )


@strict_decoder
def decode_evidence(data: Any) -> DoubleSignEvidence:
    """Double-sign evidence from its canonical bytes; raises MalformedMessage."""
    return DoubleSignEvidence.from_wire(decode(data, MAX_EVIDENCE_BYTES))


# --- gossip payloads: a message with the block beside it ---------------------------


def encode_proposal_message(proposal: Proposal, block_bytes: bytes) -> bytes:
    return encode([proposal.to_wire(), block_bytes])


@strict_decoder
def decode_proposal_message(payload: Any) -> tuple[Proposal, Block]:
    """(proposal, block) from a "proposal" payload; raises MalformedMessage.

    The block must be the one the proposal names.
    """
    head, block_bytes = _decode_with_block(
        payload, MAX_PROPOSAL_BYTES, MAX_PROPOSAL_MESSAGE_BYTES
    )
    proposal = Proposal.from_wire(head)
    block = decode_block(block_bytes)
    if block.hash != proposal.block_hash:
        raise MalformedMessage("the block is not the one the proposal names")
    if block.height != proposal.height:
        raise MalformedMessage("the block is not at the proposal's height")
    return proposal, block


def encode_commit_message(certificate: CommitCertificate, block_bytes: bytes) -> bytes:
    return encode([certificate.to_wire(), block_bytes])


@strict_decoder
def decode_commit_message(payload: Any) -> tuple[CommitCertificate, Block]:
    """(certificate, block) from a "commit" payload; raises MalformedMessage.

    The block must be the one the certificate names.
    """
    head, block_bytes = _decode_with_block(
        payload, MAX_CERTIFICATE_BYTES, MAX_COMMIT_MESSAGE_BYTES
    )
    certificate = CommitCertificate.from_wire(head)
    block = decode_block(block_bytes)
    if block.hash != certificate.block_hash:
        raise MalformedMessage("the block is not the one the certificate names")
    if block.height != certificate.height:
        raise MalformedMessage("the block is not at the certificate's height")
    return certificate, block


def _decode_with_block(payload: Any, head_max: int, total_max: int) -> tuple:
    """Split canonical [head, block_bytes] into the head value and the block bytes.

    state.codec.decode caps every byte field at 1 MiB, and a full block is
    larger, so the envelope is taken apart here: the head is unpacked with
    tight limits and must be canonical, the block bytes must follow as one
    canonically sized bin field, and nothing may trail them. The block bytes
    themselves are decoded by state.block.decode_block.
    """
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise MalformedMessage("input is not bytes")
    payload = bytes(payload)
    if len(payload) > total_max:
        raise MalformedMessage(f"{len(payload)} bytes is over the limit {total_max}")
    if len(payload) < 2 or payload[0] != 0x92:
        raise MalformedMessage("expected an array of 2 fields")
    unpacker = msgpack.Unpacker(
        raw=False,
        max_buffer_size=len(payload),
        max_str_len=head_max,
        max_bin_len=head_max,
        max_array_len=head_max,
        max_map_len=0,
        max_ext_len=0,
    )
    unpacker.feed(payload[1:])
    try:
        head = unpacker.unpack()
        head_end = 1 + unpacker.tell()
    except Exception:  # msgpack raises many types; all mean "bad bytes"
        raise MalformedMessage("head: not valid msgpack") from None
    head_bytes = payload[1:head_end]
    try:
        canonical = encode(head)
    except Exception:
        raise MalformedMessage("head: cannot be re-encoded") from None
    if canonical != head_bytes or len(head_bytes) > head_max:
        raise MalformedMessage("head: not the canonical encoding")

    rest = payload[head_end:]
    sizes = {0xC4: 1, 0xC5: 2, 0xC6: 4}
    if not rest or rest[0] not in sizes:
        raise MalformedMessage("block: expected bytes")
    width = sizes[rest[0]]
    length = int.from_bytes(rest[1 : 1 + width], "big")
    block_bytes = rest[1 + width :]
    if len(block_bytes) != length or len(rest) < 1 + width:
        raise MalformedMessage("block: length does not match the data")
    if encode(block_bytes) != rest:
        raise MalformedMessage("block: not the canonical encoding")
    return head, block_bytes
