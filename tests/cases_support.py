"""Helpers shared by the failure-case tests (tests/test_cases_*.py).

`MemoryWatch` samples a node process's resident memory from /proc while a
test attacks it, so a test can state how much the attack cost; `status_latency`
does the same for the time the node takes to answer /v1/status. Both run in a
thread beside the attack and say what they saw when stopped.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from client.http import ApiError, Client, NodeUnreachable

MB = 1 << 20
SAMPLE_S = 0.02


def rss_bytes(pid: int) -> int:
    """Resident memory of the process now."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@dataclass
class MemoryWatch:
    """Peak resident memory of `pid` above what it held when the watch began."""

    pid: int
    baseline: int = 0
    peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> MemoryWatch:
        self.baseline = self.peak = rss_bytes(self.pid)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_bytes(self.pid))

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except OSError:
                return  # the process is gone; the test will say so

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    def describe(self) -> str:
        return (
            f"resident memory {self.baseline / MB:.1f} MB before, peak "
            f"{self.peak / MB:.1f} MB (+{self.growth / MB:.1f} MB)"
        )


@dataclass
class StatusLatency:
    """Polls GET /v1/status of one node and keeps the slowest answer."""

    url: str
    interval_s: float = 0.1
    timeout_s: float = 5.0
    slowest: float = 0.0
    failures: list[str] = field(default_factory=list)
    polls: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> StatusLatency:
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 1)

    def _poll(self) -> None:
        with Client(self.url, timeout=self.timeout_s) as api:
            while not self._stop.wait(self.interval_s):
                started = time.monotonic()
                try:
                    api.status()
                except (ApiError, NodeUnreachable) as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.polls += 1
