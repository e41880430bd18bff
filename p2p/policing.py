"""Limits on what a peer may cost us, and the penalties for overstepping them.

Peers are authenticated, but an authenticated validator can still be buggy,
compromised or simply overloaded. Every connection therefore runs under
``Limits``: timeouts for each step, token buckets on the frames and bytes it
may send per second, and bounded queues both ways.

Breaking a limit ends the connection, and a disconnect caused by misbehaviour
also scores penalty points against the peer's key (``PENALTY_POINTS``). Points
fade after ``penalty_memory_seconds``; a peer whose score reaches the ban
threshold is banned for ``ban_seconds``: its reconnections are refused and it
is not dialled until the ban runs out. A ban is a cool-down, not a verdict, so
a peer that was only slow gets back in by itself.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

MiB = 1024 * 1024

# Points per disconnect reason. Clear protocol abuse counts most; reasons a
# healthy but struggling peer can hit (a stalled link, a full queue) count a
# little, and plain connection loss counts nothing.
PENALTY_POINTS: dict[str, int] = {
    "frame_too_large": 10,
    "malformed_frame": 10,
    "bad_frame_shape": 10,
    "bad_control_frame": 10,
    "rate_limited": 10,
    "slow_frame": 5,
    "idle_timeout": 2,
    "write_timeout": 2,
    "send_queue_full": 2,
}


@dataclass(frozen=True)
class Limits:
    """Tunable limits of the peer network; the defaults suit a WAN."""

    # Seconds allowed for the TLS handshake plus the admission answer.
    handshake_timeout: float = 10.0
    # Seconds allowed for a TCP connect when dialling.
    dial_timeout: float = 10.0
    # Seconds a frame may take to arrive once its first byte has.
    frame_timeout: float = 10.0
    # Seconds of silence after which a peer is dropped; pings keep a healthy
    # link well inside it.
    idle_timeout: float = 30.0
    ping_interval: float = 10.0
    # Seconds a write may wait for the peer to read before it is dropped.
    write_timeout: float = 10.0
    frames_per_second: float = 500.0
    frame_burst: int = 1_000
    bytes_per_second: float = 16 * MiB
    # Raised to at least one maximal frame, so any legal frame can pass.
    byte_burst: int = 32 * MiB
    send_queue_frames: int = 1_024
    send_queue_bytes: int = 64 * MiB
    # One-way messages waiting for their handler, per peer.
    inbox_frames: int = 256
    # Requests a peer may have in flight with us before we answer "busy".
    max_inflight_requests: int = 32
    # TLS handshakes in progress at once, so unauthenticated connects stay cheap,
    # and from any one address, so one host's idle connects cannot take them
    # all (a node's peers are each at their own address; a local devnet puts
    # them all at 127.0.0.1, which needs one slot per node it runs).
    max_pending_handshakes: int = 64
    max_handshakes_per_address: int = 16
    backoff_initial: float = 0.5
    backoff_max: float = 10.0
    ban_threshold: int = 30
    ban_seconds: float = 300.0
    penalty_memory_seconds: float = 600.0

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if value <= 0:
                raise ValueError(f"Limits.{name} must be positive, got {value}")
        if self.idle_timeout <= self.ping_interval:
            raise ValueError("idle_timeout must exceed ping_interval")
        if self.backoff_max < self.backoff_initial:
            raise ValueError("backoff_max must be at least backoff_initial")


class TokenBucket:
    """Allows ``rate`` units per second on average and ``capacity`` at once."""

    __slots__ = ("_rate", "_capacity", "_tokens", "_updated", "_clock")

    def __init__(
        self,
        rate: float,
        capacity: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate
        self._capacity = capacity
        self._tokens = capacity
        self._clock = clock
        self._updated = clock()

    def take(self, amount: float) -> bool:
        """Spend ``amount`` tokens if there are enough; False otherwise."""
        now = self._clock()
        elapsed = now - self._updated
        self._updated = now
        self._tokens = min(self._capacity, self._tokens + elapsed * self._rate)
        if amount > self._tokens:
            return False
        self._tokens -= amount
        return True


class PenaltyBox:
    """Per-peer penalty scores and the bans they lead to."""

    def __init__(
        self,
        threshold: int,
        ban_seconds: float,
        memory_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._ban_seconds = ban_seconds
        self._memory_seconds = memory_seconds
        self._clock = clock
        self._points: dict[bytes, deque[tuple[float, int]]] = {}
        self._banned_until: dict[bytes, float] = {}

    def add(self, peer: bytes, points: int) -> int:
        """Score ``points`` against ``peer`` and return the score reached.

        Reaching the threshold starts a ban, and the ban replaces the score:
        after the cool-down the peer starts from a clean slate.
        """
        now = self._clock()
        if points > 0:
            self._points.setdefault(peer, deque()).append((now, points))
        score = self._score(peer, now)
        if score >= self._threshold:
            del self._points[peer]
            self._banned_until[peer] = now + self._ban_seconds
        return score

    @property
    def threshold(self) -> int:
        return self._threshold

    def ban(self, peer: bytes, seconds: float | None = None) -> None:
        duration = self._ban_seconds if seconds is None else seconds
        self._banned_until[peer] = self._clock() + duration
        self._points.pop(peer, None)

    def score(self, peer: bytes) -> int:
        return self._score(peer, self._clock())

    def ban_remaining(self, peer: bytes) -> float:
        """Seconds left on the peer's ban, 0.0 if it is not banned."""
        until = self._banned_until.get(peer)
        if until is None:
            return 0.0
        remaining = until - self._clock()
        if remaining <= 0:
            del self._banned_until[peer]
            return 0.0
        return remaining

    def is_banned(self, peer: bytes) -> bool:
        return self.ban_remaining(peer) > 0

    def _score(self, peer: bytes, now: float) -> int:
        history = self._points.get(peer)
        if not history:
            return 0
        while history and now - history[0][0] > self._memory_seconds:
            history.popleft()
        if not history:
            del self._points[peer]
            return 0
        return sum(points for _, points in history)
