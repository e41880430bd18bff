"""The validator's signing key, guarded against double signing.

A validator that signs two different prevotes, precommits or proposals for the
same height and round can help two conflicting blocks become final, and the
pair of signatures is evidence against it. Honest code never does so on
purpose, but a crash and restart, a restored backup or a second copy of the
node could. The guard makes it impossible for this key on this disk: before a
signature leaves the guard, the signed position

    (height, round, step, block_hash, digest of the signed bytes, signature)

is written durably (temp file, fsync, rename, fsync of the directory). Later
requests are refused unless they are strictly after that position, or are the
identical message again, for which the recorded signature is returned.

Steps order the messages of one round: propose=1, prevote=2, precommit=3.

A missing state file means "never signed". The guard cannot know whether an
older copy of this key signed elsewhere: after restoring a key without its
state file, the node must not sign at heights that copy may have reached (see
ConsensusEngine.start). A damaged state file is an error, never "never signed".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nacl.signing

from consensus.messages import (
    MAX_ROUND,
    PRECOMMIT,
    PREVOTE,
    Proposal,
    Vote,
    proposal_sign_bytes,
    short,
    vote_sign_bytes,
)
from state.codec import (
    DecodeError,
    check_array,
    check_bytes,
    check_uint,
    decode,
    encode,
    sha256,
)
from state.tx import SIGNATURE_BYTES

STEP_PROPOSE = 1
STEP_PREVOTE = 2
STEP_PRECOMMIT = 3
STEP_NAMES = {
    STEP_PROPOSE: "propose",
    STEP_PREVOTE: "prevote",
    STEP_PRECOMMIT: "precommit",
}
VOTE_STEPS = {PREVOTE: STEP_PREVOTE, PRECOMMIT: STEP_PRECOMMIT}

_FORMAT_VERSION = 1
_MAX_STATE_BYTES = 512


class DoubleSignRefused(Exception):
    """The guard refused to sign: it would conflict with, or come before, what
    this key already signed. `requested` and `last` are the two positions."""

    def __init__(self, requested: SignedPosition, last: SignedPosition, why: str):
        super().__init__(
            f"refusing to sign {requested.describe()}: {why}; "
            f"already signed {last.describe()}"
        )
        self.requested = requested
        self.last = last


class SignerStateError(Exception):
    """The guard's state file exists but cannot be read: refuse to sign at all."""


@dataclass(frozen=True, slots=True)
class SignedPosition:
    height: int
    round: int
    step: int
    block_hash: bytes
    message_digest: bytes = b""
    signature: bytes = b""

    @property
    def order(self) -> tuple[int, int, int]:
        return (self.height, self.round, self.step)

    def describe(self) -> str:
        return (
            f"{STEP_NAMES.get(self.step, self.step)} h={self.height} "
            f"r={self.round} block={short(self.block_hash)}"
        )

    def to_wire(self) -> list:
        return [
            _FORMAT_VERSION,
            self.height,
            self.round,
            self.step,
            self.block_hash,
            self.message_digest,
            self.signature,
        ]

    @classmethod
    def from_wire(cls, v: list) -> SignedPosition:
        check_array(v, 7, "signer state")
        if check_uint(v[0], "version") != _FORMAT_VERSION:
            raise DecodeError(f"signer state version {v[0]} is not supported")
        step = check_uint(v[3], "step")
        if step not in STEP_NAMES:
            raise DecodeError(f"step {step} is unknown")
        return cls(
            height=check_uint(v[1], "height"),
            round=check_uint(v[2], "round", MAX_ROUND),
            step=step,
            block_hash=check_bytes(v[4], "block_hash", max_len=32),
            message_digest=check_bytes(v[5], "digest", 32),
            signature=check_bytes(v[6], "signature", SIGNATURE_BYTES),
        )


class SignerGuard:
    """Signs consensus messages with one validator key, never twice for a step."""

    def __init__(self, path: str | os.PathLike, seed: bytes):
        if type(seed) is not bytes or len(seed) != 32:
            raise ValueError("seed must be 32 bytes")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._key = nacl.signing.SigningKey(seed)
        self.public_key = bytes(self._key.verify_key)
        self._last = self._load()

    @property
    def last(self) -> SignedPosition | None:
        """The last signed position, or None if this key never signed here."""
        return self._last

    def sign(
        self, height: int, round: int, step: int, block_hash: bytes, message: bytes
    ) -> bytes:
        """The signature of `message`, the sign bytes of the consensus message at
        (height, round, step) for `block_hash`; raises DoubleSignRefused."""
        if step not in STEP_NAMES:
            raise ValueError(f"unknown step {step}")
        requested = SignedPosition(height, round, step, block_hash, sha256(message))
        last = self._last
        if last is not None:
            # Rule: never go back; a lower position may conflict with a message
            # this key signed before the last one.
            if requested.order < last.order:
                raise DoubleSignRefused(requested, last, "it is before the last")
            if requested.order == last.order:
                # Rule: one message per step; the same one again is harmless and
                # gets the same signature (Ed25519 is deterministic anyway).
                if (
                    block_hash == last.block_hash
                    and requested.message_digest == last.message_digest
                ):
                    return last.signature
                why = (
                    "a different block at the same step"
                    if block_hash != last.block_hash
                    else "a different message at the same step"
                )
                raise DoubleSignRefused(requested, last, why)

        signature = self._key.sign(message).signature
        record = SignedPosition(
            height, round, step, block_hash, requested.message_digest, signature
        )
        self._persist(record)
        self._last = record
        return signature

    def sign_vote(
        self, chain_id: str, vote_type: int, height: int, round: int, block_hash: bytes
    ) -> Vote:
        message = vote_sign_bytes(
            chain_id, vote_type, height, round, block_hash, self.public_key
        )
        step = VOTE_STEPS[vote_type]
        signature = self.sign(height, round, step, block_hash, message)
        return Vote(vote_type, height, round, block_hash, self.public_key, signature)

    def sign_proposal(
        self, chain_id: str, height: int, round: int, pol_round: int, block_hash: bytes
    ) -> Proposal:
        message = proposal_sign_bytes(
            chain_id, height, round, pol_round, block_hash, self.public_key
        )
        signature = self.sign(height, round, STEP_PROPOSE, block_hash, message)
        return Proposal(
            height, round, pol_round, block_hash, self.public_key, signature
        )

    # --- durable state ---

    def _load(self) -> SignedPosition | None:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SignerStateError(f"cannot read {self.path}: {exc}") from None
        try:
            return SignedPosition.from_wire(decode(data, _MAX_STATE_BYTES))
        except DecodeError as exc:
            raise SignerStateError(f"{self.path} is damaged: {exc}") from None

    def _persist(self, record: SignedPosition) -> None:
        # Write a new file and rename it over the old one: after a crash the
        # path holds either the old position or the new one, whole.
        data = encode(record.to_wire())
        temp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self.path)
        fsync_dir(self.path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
