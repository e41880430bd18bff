"""The node's clock, and the controllable clock of a local devnet.

A node reads the wall clock. A devnet may instead be given a shared clock
file, in the manner of the time-travel controls of Ethereum development
chains: every node of the devnet reads the same file, so the validators'
drift check still holds, and a replay of historical data can make block time
follow the data's own time (campaigns, tiers and expiry then play out as they
would have).

    {"now_ms": 1291193160000}   the clock stands still at this time
    {"offset_ms": 3600000}      the wall clock plus this offset

The clock only moves forward: a node never reports a time earlier than one it
reported before, whatever the file says.

A test may also give one node its own offset file (`[testing]
clock_offset_file`): that node's clock is then the shared clock (or the wall
clock) plus its own offset, so one validator can run fast or slow while the
others keep the shared time. A node refuses to start with a clock
file unless its genesis marks the chain as a devnet, so this control can never
reach a production chain.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("node.clock")


class ClockError(ValueError):
    """A clock file that cannot be used."""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class DevnetClock:
    """Time from a clock file, re-read when the file changes; an offset is
    added to `base` (the wall clock, or the clock this one shifts)."""

    def __init__(self, path: Path, base: Callable[[], int] = wall_clock_ms):
        self.path = path
        self.base = base
        self._stamp: tuple[int, int] | None = None
        self._setting: tuple[str, int] = ("offset_ms", 0)
        self._last = 0

    def __call__(self) -> int:
        self._reload()
        kind, value = self._setting
        now = value if kind == "now_ms" else self.base() + value
        # Only forward: never report a time before one already reported.
        self._last = max(self._last, now)
        return self._last

    def _reload(self) -> None:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self._setting = read_clock_file(self.path)
        except ClockError as exc:
            log.warning("clock file ignored path=%s reason=%r", self.path, str(exc))


def read_clock_file(path: Path) -> tuple[str, int]:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ClockError(f"cannot read {path}: {exc}") from None
    if not isinstance(doc, dict) or len(doc) != 1:
        raise ClockError("expected exactly one of now_ms or offset_ms")
    ((kind, value),) = doc.items()
    if kind not in ("now_ms", "offset_ms") or type(value) is not int:
        raise ClockError('expected {"now_ms": int} or {"offset_ms": int}')
    return kind, value


def write_clock_file(path: Path, now_ms: int) -> None:
    """Stop the devnet clock at `now_ms`; refuses to move it backwards."""
    path = Path(path)
    if path.exists():
        kind, value = read_clock_file(path)
        current = value if kind == "now_ms" else wall_clock_ms() + value
        if now_ms < current:
            raise ClockError(
                f"the devnet clock only moves forward: {now_ms} is before {current}"
            )
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps({"now_ms": now_ms}))
    os.replace(temp, path)


def write_clock_offset(path: Path, offset_ms: int) -> None:
    """Make a clock file read as the base clock plus `offset_ms` (which may be
    negative; the clock reading it still never goes back)."""
    path = Path(path)
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps({"offset_ms": offset_ms}))
    os.replace(temp, path)
