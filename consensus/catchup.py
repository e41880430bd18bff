"""Heights other than ours: early messages, falling behind, peers left behind.

Validators finish a height at slightly different moments, and some fall
behind for longer (a restart, a partition). Around the height it is deciding,
an engine meets three situations:

- messages for the next height, from validators that committed first: they
  wait in a bounded buffer and are replayed when this node gets there;
- messages for heights further ahead, or a commit certificate for a later
  height: this node is behind, and asks the application to sync. One faulty
  validator could claim any height, so votes and proposals only count once
  f+1 validators are seen ahead (one of them is honest); a certificate is a
  quorum's word and counts at once;
- messages for the height it just committed, from a peer still working on it:
  it sends that peer's way the certificate again, at most once per period.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection

from consensus.app import Application

# Messages for the next height wait in a bounded buffer until we get there.
MAX_BUFFERED = 2048
MAX_BUFFERED_BYTES = 16 << 20


class CatchUp:
    def __init__(
        self,
        app: Application,
        clock: Callable[[], float],
        sync_retry_s: float,
        resend_s: float,
        log: logging.Logger,
    ):
        self.app = app
        self.clock = clock
        self.sync_retry_s = sync_retry_s
        self.resend_s = resend_s
        self.log = log
        self._buffer: dict[tuple, tuple[int, str, bytes]] = {}
        self._buffer_bytes = 0
        self._ahead: dict[bytes, int] = {}
        self._sync_asked = (0, 0.0)
        self._last_commit: tuple[int, bytes] | None = None
        self._resent_at = 0.0

    # --- the next height ---

    def buffer(self, height: int, key: tuple, msg_type: str, payload: bytes) -> None:
        """Keep a verified message for `height`, the first per key, within bounds."""
        key = (height, *key)
        if key in self._buffer:
            return
        if (
            len(self._buffer) >= MAX_BUFFERED
            or self._buffer_bytes + len(payload) > MAX_BUFFERED_BYTES
        ):
            return
        self._buffer[key] = (height, msg_type, payload)
        self._buffer_bytes += len(payload)

    def take(self, height: int) -> list[tuple[str, bytes]]:
        """The buffered messages for `height`; everything else is dropped."""
        taken = [(t, p) for h, t, p in self._buffer.values() if h == height]
        self._buffer.clear()
        self._buffer_bytes = 0
        self._ahead = {v: h for v, h in self._ahead.items() if h > height + 1}
        return taken

    # --- falling behind ---

    def seen_ahead(
        self,
        validator: bytes,
        height: int,
        current: int,
        members: Collection[bytes],
        f: int,
    ) -> None:
        """`validator` signed a message at `height`, beyond the next one."""
        self._ahead[validator] = max(height, self._ahead.get(validator, 0))
        heights = sorted(
            (h for v, h in self._ahead.items() if v in members), reverse=True
        )
        if len(heights) > f:
            # One of f+1 validators at these heights is honest, so the height
            # below the (f+1)-th highest is committed.
            self.request_sync(current, heights[f] - 1)

    def request_sync(self, current: int, target: int) -> None:
        """Ask the application to fetch blocks up to `target` (again, if the
        same target is still missing after the retry period)."""
        asked, at = self._sync_asked
        now = self.clock()
        if target < asked or (target == asked and now - at < self.sync_retry_s):
            return
        self._sync_asked = (target, now)
        self.log.info("behind height=%d target=%d", current, target)
        self.app.request_sync(target)

    # --- peers left behind ---

    def committed(self, height: int, commit_payload: bytes) -> None:
        self._last_commit = (height, commit_payload)

    def commit_for_peer(self, height: int) -> bytes | None:
        """The "commit" payload to send again for a peer still at `height`."""
        if self._last_commit is None or self._last_commit[0] != height:
            return None
        now = self.clock()
        if now - self._resent_at < self.resend_s:
            return None
        self._resent_at = now
        return self._last_commit[1]
