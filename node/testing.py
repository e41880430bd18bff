"""Test-only switches of a node: the `[testing]` table of config.toml.

Every switch is off unless a test sets it, and a node refuses to start with
any of them set unless its genesis marks the chain as a devnet
(node.config.check_devnet_only), so none of them can reach a real chain.

record_consensus
    Append every signed consensus message the node receives (gossip and
    block sync) or sends to HOME/consensus-record.msgpack, so that a test can
    look for double signs and conflicting commits across the whole network
    afterwards. Only the signed part is kept (the proposal, vote or commit
    certificate, not the block beside it), each distinct one once per run.
    Each record is the canonical msgpack array

        [kind, direction, time_ms, message]

    kind "proposal", "vote" or "certificate"; direction "in", "out" or
    "sync"; message the canonical encoding of the signed message. A record
    is appended with one write, so a kill leaves at most a torn last record,
    which `read_consensus_record` skips.

crash_after_sign_height / _round / _step
    Exit the process at once (os._exit, exit code CRASH_EXIT_CODE) right
    after the signer guard durably recorded a signature of that step, before
    the message reaches the write-ahead log or any peer: the worst moment for
    a validator to lose its process.

miss_proposal_height / _round
    Drop incoming proposals of that height and round, and commit gossip of
    that height, as if the network lost them; while the node is still in that
    round, drop also its peers' status announcements of that height or above
    (a status would have it fetch the block before its round ends). So the
    node alone moves on to the next round, and then gets the block by block
    sync.

clock_offset_file
    This node's own clock offset (node.clock), on top of the shared clock.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack

from consensus.messages import (
    MAX_CERTIFICATE_BYTES,
    PRECOMMIT,
    MalformedMessage,
    Proposal,
    Vote,
    decode_certificate,
    decode_proposal,
)
from consensus.sync import decode_status
from node.config import TestingSection
from state.codec import DecodeError

log = logging.getLogger("node.testing")

RECORD_FILE = "consensus-record.msgpack"
# The exit code of a crash on purpose, so a test tells it from a real one.
CRASH_EXIT_CODE = 86
# Digests of messages already recorded; forgotten all at once when this many,
# which only means some later repeats are recorded again.
MAX_REMEMBERED = 200_000
# What kind of signed message each gossip type carries.
RECORDED_KINDS = {"proposal": "proposal", "vote": "vote", "commit": "certificate"}


@dataclass(frozen=True)
class RecordEntry:
    kind: str  # "proposal" | "vote" | "certificate"
    direction: str  # "in" | "out" | "sync"
    time_ms: int
    message: bytes


def signed_head(msg_type: str, payload: bytes) -> bytes | None:
    """The signed message inside a gossip payload, or None if it has none.

    A vote is its own payload; a proposal or commit payload is
    [message, block_bytes], and only the head is unpacked (the block can be
    megabytes). The bytes are not checked here; readers decode them strictly.
    """
    if msg_type == "vote":
        return payload
    if len(payload) < 2 or payload[0] != 0x92:
        return None
    unpacker = msgpack.Unpacker(max_buffer_size=MAX_CERTIFICATE_BYTES + 16)
    unpacker.feed(payload[1 : 1 + MAX_CERTIFICATE_BYTES + 16])
    try:
        unpacker.skip()
    except Exception:  # msgpack raises several types; all mean "not a message"
        return None
    return payload[1 : 1 + unpacker.tell()]


class ConsensusRecorder:
    """Appends signed consensus messages to a file, each distinct one once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._seen: set[bytes] = set()

    def record(self, direction: str, msg_type: str, payload: bytes) -> None:
        kind = RECORDED_KINDS.get(msg_type)
        message = None if kind is None else signed_head(msg_type, payload)
        if message is None or self._fd < 0:
            return
        digest = hashlib.sha256(message).digest()
        if digest in self._seen:
            return
        if len(self._seen) >= MAX_REMEMBERED:
            self._seen.clear()
        self._seen.add(digest)
        record = [kind, direction, time.time_ns() // 1_000_000, message]
        try:
            os.write(self._fd, msgpack.packb(record, use_bin_type=True))
        except OSError as exc:
            log.warning("consensus record not written reason=%r", str(exc))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def read_consensus_record(path: Path) -> list[RecordEntry]:
    """Every whole record of a record file; a torn last record is skipped."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=max(len(data), 1 << 20))
    unpacker.feed(data)
    records = []
    try:
        for item in unpacker:
            kind, direction, time_ms, message = item
            records.append(RecordEntry(kind, direction, time_ms, message))
    except (ValueError, TypeError, msgpack.UnpackException):
        log.warning("consensus record damaged path=%s kept=%d", path, len(records))
    return records


def crash_after_sign(switches: TestingSection) -> Callable[[object], None] | None:
    """The engine's after-signing hook that ends the process at the chosen
    step, or None when the switch is off."""
    height = switches.crash_after_sign_height
    if height == 0:
        return None
    round_ = switches.crash_after_sign_round
    step = switches.crash_after_sign_step

    def on_signed(message: object) -> None:
        if isinstance(message, Proposal):
            position = (message.height, message.round, "propose")
        elif isinstance(message, Vote):
            kind = "precommit" if message.vote_type == PRECOMMIT else "prevote"
            position = (message.height, message.round, kind)
        else:
            return
        if position[0] != height or position[2] != step:
            return
        if round_ not in (-1, position[1]):
            return
        log.warning(
            "test switch: exiting right after signing height=%d round=%d step=%s",
            *position,
        )
        logging.shutdown()
        os._exit(CRASH_EXIT_CODE)

    return on_signed


def misses(
    switches: TestingSection,
    msg_type: str,
    payload: bytes,
    position: tuple[int, int] | None,
) -> bool:
    """Whether the miss_proposal switch drops this incoming message, for a node
    whose consensus is at `position` (height, round), None if not running."""
    height = switches.miss_proposal_height
    if height == 0:
        return False
    if msg_type == "status":
        try:
            announced, _ = decode_status(payload)
        except DecodeError:
            return False
        in_missed_round = position is not None and (
            position[0] == height and position[1] <= switches.miss_proposal_round
        )
        return in_missed_round and announced >= height
    if msg_type not in ("proposal", "commit"):
        return False
    head = signed_head(msg_type, payload)
    if head is None:
        return False
    try:
        if msg_type == "proposal":
            proposal = decode_proposal(head)
            return (proposal.height, proposal.round) == (
                height,
                switches.miss_proposal_round,
            )
        return decode_certificate(head).height == height
    except MalformedMessage:
        return False
