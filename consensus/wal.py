"""The consensus write-ahead log: every input of the unfinished height, in order.

A validator's round state (round, step, locked and valid block) is the result
of the proposals, votes and timeouts it processed. Writing each of those inputs
here before acting on it, and each message it signs before sending it, lets a
restarted validator replay them and come back to the same state, so it neither
forgets a lock (which could make it help finalise a conflicting block) nor
re-derives a different vote for a step it already voted in.

File format, one record after another:

    length (4 bytes, big-endian) | crc32 (4) | kind (1) | height (8) | body

`length` counts kind, height and body; the CRC covers the same bytes. The first
record is a HEIGHT marker naming the height the log belongs to. A record that
is cut short or fails its CRC ends the log: that is what a crash in the middle
of a write leaves, and the record never took effect, because an own message is
only sent after its record is synced, and received ones can be received again.

Received messages are appended without fsync (a process crash keeps them in the
OS; after a power loss the guard in consensus.signer still refuses any
conflicting signature). Own messages are appended with fsync before they are
broadcast. When a height commits the log is replaced by a fresh one for the
next height (temp file, fsync, rename, fsync of the directory).
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from consensus.messages import MAX_PROPOSAL_MESSAGE_BYTES
from consensus.signer import fsync_dir

_FRAME = 8  # length + crc32
_HEAD = 9  # kind + height
MAX_RECORD_BYTES = _HEAD + MAX_PROPOSAL_MESSAGE_BYTES


class Entry(IntEnum):
    HEIGHT = 0  # body empty: the height this log belongs to
    PROPOSAL = 1  # a received "proposal" payload
    VOTE = 2  # a received vote
    OWN_PROPOSAL = 3  # a "proposal" payload this validator signed
    OWN_VOTE = 4  # a vote this validator signed
    TIMEOUT = 5  # body: round (4 bytes) + step (1 byte)


@dataclass(frozen=True, slots=True)
class WalRecord:
    kind: Entry
    height: int
    body: bytes

    def frame(self) -> bytes:
        data = bytes([self.kind]) + self.height.to_bytes(8, "big") + self.body
        return len(data).to_bytes(4, "big") + zlib.crc32(data).to_bytes(4, "big") + data


def timeout_body(round: int, step: int) -> bytes:
    return round.to_bytes(4, "big") + bytes([step])


def parse_timeout_body(body: bytes) -> tuple[int, int]:
    return int.from_bytes(body[:4], "big"), body[4]


class WriteAheadLog:
    """The log of one height's consensus inputs, kept at `path`."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.height: int | None = None
        self._fd: int | None = None

    def open(self, height: int) -> list[WalRecord]:
        """Load the log and return its records for `height`, in order.

        A torn tail is cut off. A log of another height (the store committed
        but the log was not rotated yet, or it is older) is replaced by an
        empty log for `height`. Later appends go to `height`.
        """
        self.close()
        records, good_end = read_records(self.path)
        if (
            not records
            or records[0].kind != Entry.HEIGHT
            or records[0].height != height
        ):
            self.rotate(height)
            return []
        self._fd = os.open(self.path, os.O_WRONLY)
        os.ftruncate(self._fd, good_end)
        os.lseek(self._fd, good_end, os.SEEK_SET)
        self.height = height
        return [r for r in records[1:] if r.height == height]

    def append(self, kind: Entry, height: int, body: bytes, sync: bool) -> None:
        """Add one record; with `sync`, it is on disk when this returns."""
        if self._fd is None:
            raise RuntimeError("the log is not open")
        # A longer record would read back as a torn tail and hide later ones.
        if _HEAD + len(body) > MAX_RECORD_BYTES:
            raise ValueError(f"a record of {len(body)} bytes is over the limit")
        os.write(self._fd, WalRecord(kind, height, body).frame())
        if sync:
            os.fsync(self._fd)

    def rotate(self, height: int) -> None:
        """Start an empty log for `height`, replacing the current one atomically."""
        self.close()
        temp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, WalRecord(Entry.HEIGHT, height, b"").frame())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, self.path)
        fsync_dir(self.path.parent)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        self.height = height

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_records(path: Path) -> tuple[list[WalRecord], int]:
    """Every whole, intact record of the file, and the offset where they end."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    records: list[WalRecord] = []
    offset = 0
    while offset + _FRAME <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        crc = int.from_bytes(data[offset + 4 : offset + 8], "big")
        start, end = offset + _FRAME, offset + _FRAME + length
        if not _HEAD <= length <= MAX_RECORD_BYTES or end > len(data):
            break
        body = data[start:end]
        if zlib.crc32(body) != crc:
            break
        try:
            kind = Entry(body[0])
        except ValueError:
            break
        records.append(WalRecord(kind, int.from_bytes(body[1:9], "big"), body[9:]))
        offset = end
    return records, offset
