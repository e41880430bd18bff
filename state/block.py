"""Blocks, headers and receipts in canonical form.

    header  = [version, chain_id, height, time_ms, parent_hash, tx_root,
               state_root, results_root, validators_hash, proposer]
    block   = [header, [tx_bytes, ...]]
    receipt = [code, [[event, account, delta], ...]]

The block hash is SHA-256 of the canonical header. The header commits to the
transactions (tx_root, a Merkle root of their hashes), to the state after the
block (state_root), to every receipt (results_root) and to the validator set
that signs its commit, so a header plus its commit certificate proves all of
them. Block 1's parent_hash is the genesis hash.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import NamedTuple

from state.codec import (
    DecodeError,
    check_array,
    check_bytes,
    check_text,
    check_uint,
    decode,
    encode,
    sha256,
)
from state.codes import Code
from state.tx import KEY_BYTES, MAX_TX_BYTES

BLOCK_VERSION = 1
# A block is bounded by count and by bytes: typical awards are about 160 bytes,
# so a full block holds 20,000 of them in about 3.2 MB; large transactions hit
# the byte bound first. Proposals and sync responses carry whole blocks in one
# peer frame, which the node's p2p.max_frame_bytes must exceed.
MAX_BLOCK_TXS = 20_000
MAX_BLOCK_BYTES = 4 << 20
HASH_BYTES = 32
MAX_EVENTS = 16


@dataclass(frozen=True, slots=True)
class Header:
    chain_id: str
    height: int
    time_ms: int
    parent_hash: bytes
    tx_root: bytes
    state_root: bytes
    results_root: bytes
    validators_hash: bytes
    proposer: bytes
    version: int = BLOCK_VERSION

    def to_wire(self) -> list:
        return [
            self.version,
            self.chain_id,
            self.height,
            self.time_ms,
            self.parent_hash,
            self.tx_root,
            self.state_root,
            self.results_root,
            self.validators_hash,
            self.proposer,
        ]

    def encode(self) -> bytes:
        return encode(self.to_wire())

    @property
    def hash(self) -> bytes:
        return sha256(self.encode())

    @property
    def time_s(self) -> int:
        """Block time in whole seconds, rounded down: what ledger rules read."""
        return self.time_ms // 1000

    @classmethod
    def from_wire(cls, v: list) -> Header:
        check_array(v, 10, "header")
        version = check_uint(v[0], "version")
        if version != BLOCK_VERSION:
            raise DecodeError(f"header version {version} is not supported")
        return cls(
            chain_id=check_text(v[1], "chain_id", 64, 1),
            height=check_uint(v[2], "height"),
            time_ms=check_uint(v[3], "time_ms"),
            parent_hash=check_bytes(v[4], "parent_hash", HASH_BYTES),
            tx_root=check_bytes(v[5], "tx_root", HASH_BYTES),
            state_root=check_bytes(v[6], "state_root", HASH_BYTES),
            results_root=check_bytes(v[7], "results_root", HASH_BYTES),
            validators_hash=check_bytes(v[8], "validators_hash", HASH_BYTES),
            proposer=check_bytes(v[9], "proposer", KEY_BYTES),
            version=version,
        )


@dataclass(frozen=True, slots=True)
class Block:
    header: Header
    txs: tuple[bytes, ...]

    def encode(self) -> bytes:
        return encode([self.header.to_wire(), list(self.txs)])

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height


def decode_header(data: bytes) -> Header:
    return Header.from_wire(decode(data, 4096))


def decode_block(data: bytes) -> Block:
    """Decode a block's form; its transactions are decoded by the executor."""
    value = decode(data, MAX_BLOCK_BYTES)
    check_array(value, 2, "block")
    header = Header.from_wire(value[0])
    txs = value[1]
    if type(txs) is not list or len(txs) > MAX_BLOCK_TXS:
        raise DecodeError(f"block: expected at most {MAX_BLOCK_TXS} transactions")
    for i, tx in enumerate(txs):
        check_bytes(tx, f"txs[{i}]", max_len=MAX_TX_BYTES)
    return Block(header, tuple(txs))


# --- Merkle root ---------------------------------------------------------------------

_LEAF = b"\x00"
_NODE = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"perkchain/empty").digest()


def merkle_root(leaves: list[bytes]) -> bytes:
    """Binary Merkle root; leaf and inner nodes are domain-separated, an odd node
    is promoted unchanged to the next level."""
    if not leaves:
        return EMPTY_ROOT
    sha = hashlib.sha256
    level = [sha(_LEAF + leaf).digest() for leaf in leaves]
    while len(level) > 1:
        paired = [
            sha(_NODE + left + right).digest()
            for left, right in zip(level[::2], level[1::2], strict=False)
        ]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


# --- receipts ------------------------------------------------------------------------


class Receipt(NamedTuple):
    """The outcome of one transaction: a code and the balance events it caused.

    An event is [name, account, delta]: `delta` is the signed change in coins
    of `account` (0 for events that move no coins, such as a freeze). A named
    tuple rather than a frozen dataclass: every transaction makes one, and a
    frozen dataclass is several times slower to build.
    """

    code: Code
    events: tuple[tuple[str, bytes, int], ...] = ()

    def to_wire(self) -> list:
        # msgpack encodes a tuple as an array, so the events go as they are.
        return [int(self.code), self.events]

    @classmethod
    def from_wire(cls, v: list) -> Receipt:
        check_array(v, 2, "receipt")
        number = check_uint(v[0], "code")
        try:
            code = Code(number)
        except ValueError:
            raise DecodeError(f"receipt code {number} is unknown") from None
        if type(v[1]) is not list or len(v[1]) > MAX_EVENTS:
            raise DecodeError("receipt events: expected an array")
        events = []
        for e in v[1]:
            check_array(e, 3, "event")
            if type(e[2]) is not int:
                raise DecodeError("event delta: expected an integer")
            events.append(
                (check_text(e[0], "event", 32), check_bytes(e[1], "account"), e[2])
            )
        return cls(code, tuple(events))


def encode_receipts(receipts: list[Receipt]) -> bytes:
    return encode_array_of_encoded([encode(r.to_wire()) for r in receipts])


def encode_array_of_encoded(items: list[bytes]) -> bytes:
    """The canonical encoding of an array, given its items already encoded."""
    n = len(items)
    if n < 16:
        head = bytes([0x90 | n])
    elif n < 1 << 16:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(items)


# Receipts of a full block: a code and up to a few events per transaction.
MAX_RECEIPTS_BYTES = 4 * MAX_BLOCK_BYTES


def decode_receipts(data: bytes) -> list[Receipt]:
    value = decode(data, MAX_RECEIPTS_BYTES)
    if type(value) is not list:
        raise DecodeError("receipts: expected an array")
    return [Receipt.from_wire(v) for v in value]


def results_root(encoded_receipts: list[bytes]) -> bytes:
    """Merkle root over the canonical encodings of a block's receipts."""
    return merkle_root(encoded_receipts)
