"""One authenticated connection to a peer, and everything that runs on it.

Once TLS has proven who is on the other end and the network has admitted the
peer, a ``PeerConnection`` carries frames both ways until either side ends it.
It runs three loops:

- the reader takes frames off the wire under the framing and rate limits,
  handles control frames, starts request handlers and queues one-way messages;
- the writer drains a bounded send queue, and sends a ping whenever it has been
  quiet for a ping interval, which keeps the peer's idle timer from firing;
- the dispatcher feeds one-way messages to their handler one at a time, so a
  peer's messages are handled in the order it sent them, while the reader goes
  on reading (a handler may itself wait for a response from the same peer).

Request handlers run concurrently, up to a per-peer limit, and the peer gets an
error frame instead of silence when its request cannot be served. The first
failure of any loop closes the connection and records why; the network turns
that reason into a log line and, for misbehaviour, into penalty points.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Mapping

from .errors import PeerUnavailable, RequestFailed, RequestTimeout
from .events import log_event
from .framing import (
    MAX_REQUEST_ID,
    Control,
    Frame,
    FrameReader,
    ProtocolError,
    encode_frame,
)
from .policing import PENALTY_POINTS, Limits, TokenBucket

MessageHandler = Callable[[bytes, bytes], Awaitable[None]]
RequestHandler = Callable[[bytes, bytes], Awaitable[bytes]]

# How long a polite close may wait for the TLS goodbye before cutting the line.
_CLOSE_GRACE_SECONDS = 1.0
# Errors that only mean the transport went away under us.
_TRANSPORT_ERRORS = (ConnectionError, ssl.SSLError, OSError, EOFError)


def reason_of(body: bytes) -> str:
    """A peer-supplied reason code, made safe to log and to show."""
    text = body[:64].decode("ascii", "replace")
    return "".join(ch if ch.isalnum() or ch == "_" else "?" for ch in text) or "?"


class AdmissionRefused(Exception):
    """The accepting peer turned our connection away (or never answered)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PeerConnection:
    """A live, authenticated link to one peer."""

    def __init__(
        self,
        *,
        public_key: bytes,
        address: str,
        outbound: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_frame: int,
        limits: Limits,
        message_handlers: Mapping[int, MessageHandler],
        request_handlers: Mapping[int, RequestHandler],
        logger: logging.Logger,
    ) -> None:
        self.public_key = public_key
        self.address = address
        self.outbound = outbound
        self.close_reason: str | None = None
        self.close_detail = ""
        self._writer = writer
        self._max_frame = max_frame
        self._limits = limits
        self._message_handlers = message_handlers
        self._request_handlers = request_handlers
        self._log = logger
        self._frame_bucket = TokenBucket(limits.frames_per_second, limits.frame_burst)
        self._byte_bucket = TokenBucket(
            limits.bytes_per_second, max(limits.byte_burst, max_frame + 4)
        )
        self._frames = FrameReader(
            reader,
            max_frame=max_frame,
            idle_timeout=limits.idle_timeout,
            frame_timeout=limits.frame_timeout,
            admit=self._admit_frame,
        )
        self._send_queue: deque[bytes] = deque()
        self._send_queue_bytes = 0
        self._send_ready = asyncio.Event()
        self._inbox: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue(
            limits.inbox_frames
        )
        self._pending: dict[int, asyncio.Future[bytes]] = {}
        self._next_request_id = 0
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self._run_task: asyncio.Task[object] | None = None
        self._winding_down = False
        self._ping = encode_frame(Control.PING, 0, b"", max_frame)

    # ----------------------------------------------------------- state

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    @property
    def penalty_points(self) -> int:
        return PENALTY_POINTS.get(self.close_reason or "", 0)

    def close(self, reason: str, detail: str = "") -> None:
        """End the connection; the first reason given is the one recorded.

        Safe from any task, including the connection's own loops: the running
        connection is cancelled and winds down at its next await.
        """
        if self._record_close(reason, detail) and not self._winding_down:
            if self._run_task is not None:
                self._run_task.cancel()

    def _record_close(self, reason: str, detail: str = "") -> bool:
        if self.close_reason is not None:
            return False
        self.close_reason = reason
        self.close_detail = detail
        return True

    # ----------------------------------------------------------- sending

    def send_frame(self, data: bytes) -> bool:
        """Queue an encoded frame; a full queue closes the connection."""
        if self.closed:
            return False
        limits = self._limits
        if (
            len(self._send_queue) >= limits.send_queue_frames
            or self._send_queue_bytes + len(data) > limits.send_queue_bytes
        ):
            # Dropping frames silently would leave the upper layers with gaps
            # they cannot see; a disconnect makes them resynchronise instead.
            self.close("send_queue_full", f"queued={len(self._send_queue)}")
            return False
        self._send_queue.append(data)
        self._send_queue_bytes += len(data)
        self._send_ready.set()
        return True

    async def request(self, msg_type: int, body: bytes, timeout: float) -> bytes:
        """Send a request and wait for the peer's response body."""
        if self.closed:
            raise PeerUnavailable(f"connection closed: {self.close_reason}")
        request_id = self._allocate_request_id()
        data = encode_frame(msg_type, request_id, body, self._max_frame)
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            if not self.send_frame(data):
                raise PeerUnavailable(f"connection closed: {self.close_reason}")
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise RequestTimeout(
                f"no response to msg_type {msg_type} within {timeout}s"
            ) from None
        finally:
            self._pending.pop(request_id, None)

    def _allocate_request_id(self) -> int:
        # Zero marks one-way frames, so ids run 1..MAX_REQUEST_ID and wrap.
        self._next_request_id = self._next_request_id % MAX_REQUEST_ID + 1
        return self._next_request_id

    # ----------------------------------------------------------- admission

    async def await_welcome(self, timeout: float) -> None:
        """On the dialling side: wait for the peer to admit us.

        The accepting side only answers after its own checks, and with TLS 1.3
        a client learns that its certificate was rejected only when it next
        reads, so this wait is what tells a refused dial from a connected one.
        """
        try:
            async with asyncio.timeout(timeout):
                frame = await self._frames.read()
        except TimeoutError:
            raise AdmissionRefused("no_answer") from None
        except ProtocolError as exc:
            raise AdmissionRefused(exc.reason) from None
        except _TRANSPORT_ERRORS:
            raise AdmissionRefused("closed_before_welcome") from None
        if frame is None:
            raise AdmissionRefused("closed_before_welcome")
        if frame.msg_type == Control.WELCOME:
            return
        if frame.msg_type == Control.REFUSE:
            raise AdmissionRefused(reason_of(frame.body))
        raise AdmissionRefused("bad_control_frame")

    # ----------------------------------------------------------- running

    async def run(self) -> None:
        """Carry frames until the connection closes; never raises for the peer."""
        self._run_task = asyncio.current_task()
        if self.closed:
            await self._close_transport()
            return
        writer_task = asyncio.create_task(self._write_loop())
        dispatch_task = asyncio.create_task(self._dispatch_loop())
        try:
            await self._read_loop()
            self._record_close("closed_by_peer")
        except ProtocolError as exc:
            self._record_close(exc.reason, exc.detail)
        except _TRANSPORT_ERRORS as exc:
            self._record_close("connection_lost", type(exc).__name__)
        except asyncio.CancelledError:
            if self.close_reason is None:
                raise  # cancelled from outside, not by close()
            self._run_task.uncancel()
        finally:
            self._winding_down = True
            self._record_close("cancelled")
            tasks = (writer_task, dispatch_task, *self._handler_tasks)
            for task in tasks:
                task.cancel()
            try:
                await asyncio.gather(*tasks, return_exceptions=True)
            finally:
                self._fail_pending_requests()
                await self._close_transport()

    async def abandon(self) -> None:
        """Close a connection that never started running."""
        self.close("abandoned")
        await self._close_transport()

    async def _read_loop(self) -> None:
        while True:
            frame = await self._frames.read()
            if frame is None:
                return
            await self._route(frame)

    def _admit_frame(self, size: int) -> None:
        if not self._frame_bucket.take(1) or not self._byte_bucket.take(size):
            raise ProtocolError("rate_limited", f"frame_bytes={size}")

    async def _route(self, frame: Frame) -> None:
        msg_type, request_id, body = frame
        if msg_type >= 0:
            if request_id == 0:
                await self._queue_message(msg_type, body)
            else:
                self._start_request(msg_type, request_id, body)
        elif msg_type == Control.PING:
            pass  # its arrival alone has reset our idle timer
        elif msg_type in (Control.RESPONSE, Control.ERROR):
            self._complete_request(msg_type, request_id, body)
        else:
            # WELCOME and REFUSE belong before the connection runs.
            raise ProtocolError("bad_control_frame", f"msg_type={msg_type}")

    async def _queue_message(self, msg_type: int, body: bytes) -> None:
        if msg_type not in self._message_handlers:
            log_event(
                self._log,
                logging.DEBUG,
                "message ignored",
                peer=self.public_key,
                msg_type=msg_type,
                reason="no_handler",
            )
            return
        # A full inbox pauses reading from this peer: back-pressure, not loss.
        await self._inbox.put((msg_type, body))

    def _start_request(self, msg_type: int, request_id: int, body: bytes) -> None:
        handler = self._request_handlers.get(msg_type)
        if handler is None:
            self._send_error(request_id, "no_handler")
            return
        if len(self._handler_tasks) >= self._limits.max_inflight_requests:
            self._send_error(request_id, "busy")
            return
        task = asyncio.create_task(
            self._serve_request(handler, msg_type, request_id, body)
        )
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

    async def _serve_request(
        self, handler: RequestHandler, msg_type: int, request_id: int, body: bytes
    ) -> None:
        try:
            result = await handler(self.public_key, body)
            if not isinstance(result, bytes | bytearray):
                raise TypeError(f"request handler returned {type(result).__name__}")
        except Exception as exc:
            log_event(
                self._log,
                logging.ERROR,
                "request handler failed",
                peer=self.public_key,
                msg_type=msg_type,
                error=type(exc).__name__,
                exc_info=True,
            )
            self._send_error(request_id, "handler_error")
            return
        try:
            data = encode_frame(Control.RESPONSE, request_id, result, self._max_frame)
        except ValueError:
            self._send_error(request_id, "response_too_large")
            return
        self.send_frame(data)

    def _send_error(self, request_id: int, reason: str) -> None:
        self.send_frame(
            encode_frame(Control.ERROR, request_id, reason.encode(), self._max_frame)
        )

    def _complete_request(self, msg_type: int, request_id: int, body: bytes) -> None:
        future = self._pending.get(request_id)
        if future is None or future.done():
            # Most likely the answer to a request that already timed out.
            return
        if msg_type == Control.RESPONSE:
            future.set_result(body)
        else:
            future.set_exception(RequestFailed(reason_of(body)))

    def _fail_pending_requests(self) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(
                    PeerUnavailable(f"connection closed: {self.close_reason}")
                )
        self._pending.clear()

    async def _dispatch_loop(self) -> None:
        while True:
            msg_type, body = await self._inbox.get()
            handler = self._message_handlers.get(msg_type)
            if handler is None:
                continue
            try:
                await handler(self.public_key, body)
            except Exception as exc:
                log_event(
                    self._log,
                    logging.ERROR,
                    "message handler failed",
                    peer=self.public_key,
                    msg_type=msg_type,
                    error=type(exc).__name__,
                    exc_info=True,
                )

    async def _write_loop(self) -> None:
        writer = self._writer
        try:
            while True:
                if not self._send_queue:
                    await self._wait_for_frames()
                batch = list(self._send_queue)
                self._send_queue.clear()
                self._send_queue_bytes = 0
                writer.writelines(batch)
                async with asyncio.timeout(self._limits.write_timeout):
                    await writer.drain()
        except TimeoutError:
            self.close("write_timeout")
        except _TRANSPORT_ERRORS as exc:
            self.close("connection_lost", type(exc).__name__)

    async def _wait_for_frames(self) -> None:
        self._send_ready.clear()
        try:
            async with asyncio.timeout(self._limits.ping_interval):
                await self._send_ready.wait()
        except TimeoutError:
            self._send_queue.append(self._ping)
            self._send_queue_bytes += len(self._ping)

    async def _close_transport(self) -> None:
        transport = self._writer.transport
        if self.penalty_points or transport.is_closing():
            # A misbehaving peer gets no goodbye: cut the line at once.
            transport.abort()
            return
        try:
            self._writer.close()
            async with asyncio.timeout(_CLOSE_GRACE_SECONDS):
                await self._writer.wait_closed()
        except (TimeoutError, *_TRANSPORT_ERRORS):
            transport.abort()
        except asyncio.CancelledError:
            transport.abort()
            raise
