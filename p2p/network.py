"""The peer network: authenticated frames between the known nodes of a chain.

A perkchain network is small and closed. Every validator and auditor node is
configured with the list of peers it may talk to (``PeerAddress``: public key,
certificate and, for peers we dial, an address) and an allowlist callback that
follows the validator set as it changes. ``Network`` keeps one TLS connection
to each reachable peer and moves opaque frames over it; what the frames mean is
the business of the layers above.

Connections. Each node listens, and dials every peer that has an address,
retrying with exponential backoff and jitter. When two nodes dial each other at
once, both keep the connection dialled by the node with the lower public key
and close the other, so each pair ends up with exactly one. An inbound peer is
admitted only if TLS verified its certificate against our trust store (the
pin), its key is not our own, not banned, and allowed right now; the accepting
side then sends a welcome frame (or a refusal with the reason), which is what
the dialling side waits for before it counts the peer as connected.

Messaging. Handlers are registered per message type: one-way handlers for
broadcasts and notifications, request handlers whose return value goes back as
the response. Sends never block on a slow peer: each connection has a bounded
send queue, and a peer that lets it fill up is disconnected.

Defence. A peer that breaks the framing or rate limits is disconnected and
scores penalty points; enough points ban it for a while (see ``p2p.policing``).
Nothing a peer sends can raise out of this class.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable, Iterable

from .connection import (
    AdmissionRefused,
    MessageHandler,
    PeerConnection,
    RequestHandler,
)
from .errors import PeerUnavailable
from .events import LOGGER_NAME, format_address, log_event
from .framing import DEFAULT_MAX_FRAME, Control, check_app_msg_type, encode_frame
from .identity import NodeIdentity
from .peers import PeerAddress, index_peers
from .policing import Limits, PenaltyBox
from .tls import TLSFailure, accept_tls, client_context, dial_tls, server_context

# Time given to running connections to close politely when the network stops.
_STOP_GRACE_SECONDS = 2.0
# A host whose connects are refused is logged at most once in this interval,
# and at most this many hosts are remembered for it.
REFUSAL_LOG_INTERVAL_S = 60.0
MAX_REFUSAL_LOG_HOSTS = 1024


class Network:
    """Connections to the configured peers, and messaging over them."""

    def __init__(
        self,
        identity: NodeIdentity,
        listen_host: str,
        listen_port: int,
        peers: Iterable[PeerAddress],
        is_allowed: Callable[[bytes], bool],
        *,
        max_frame: int = DEFAULT_MAX_FRAME,
        limits: Limits | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        if max_frame < 64:
            raise ValueError("max_frame is too small to carry a frame")
        self._identity = identity
        self._listen_host = listen_host
        self._listen_port = listen_port
        self._peers = index_peers(peers)
        self._is_allowed = is_allowed
        self._max_frame = max_frame
        self._limits = limits or Limits()
        self._log = logger or logging.getLogger(LOGGER_NAME)
        self._penalties = PenaltyBox(
            self._limits.ban_threshold,
            self._limits.ban_seconds,
            self._limits.penalty_memory_seconds,
        )
        self._message_handlers: dict[int, MessageHandler] = {}
        self._request_handlers: dict[int, RequestHandler] = {}
        self._connections: dict[bytes, PeerConnection] = {}
        self._dialers: dict[bytes, asyncio.Task[None]] = {}
        self._wakeups: dict[bytes, asyncio.Event] = {}
        self._inbound_tasks: set[asyncio.Task[object]] = set()
        # Inbound connections not yet admitted; stop() need not wait for them.
        self._handshakes: set[asyncio.Task[object]] = set()
        self._handshakes_by_host: Counter[str] = Counter()
        # When each host's refused handshake was last logged
        # (_log_handshake_refused).
        self._refusals_logged: dict[str, float] = {}
        self._server: asyncio.Server | None = None
        self._server_context: ssl.SSLContext | None = None
        self._client_context: ssl.SSLContext | None = None
        self._stopping = False

    # ----------------------------------------------------------- lifecycle

    @property
    def public_key(self) -> bytes:
        return self._identity.public_key

    @property
    def listen_port(self) -> int:
        """The port we listen on; the real one once started with port 0."""
        return self._listen_port

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("network already started")
        self._stopping = False
        self._rebuild_contexts()
        # Plain TCP first, TLS per connection: each accept then uses the trust
        # store of the moment, which changes with the peer list.
        self._server = await asyncio.start_server(
            self._accept, self._listen_host, self._listen_port
        )
        self._listen_port = self._server.sockets[0].getsockname()[1]
        log_event(
            self._log,
            logging.INFO,
            "network started",
            node=self.public_key,
            addr=f"{self._listen_host}:{self._listen_port}",
            peers=len(self._peers),
        )
        for key in self._peers:
            self._ensure_dialer(key)

    async def stop(self) -> None:
        """Close the listener and every connection; leaves no task behind."""
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        for connection in list(self._connections.values()):
            connection.close("shutdown")
        tasks = [*self._dialers.values(), *self._inbound_tasks]
        for task in [*self._dialers.values(), *self._handshakes]:
            task.cancel()
        if tasks:
            _, still_running = await asyncio.wait(tasks, timeout=_STOP_GRACE_SECONDS)
            for task in still_running:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        self._dialers.clear()
        self._connections.clear()
        log_event(self._log, logging.INFO, "network stopped", node=self.public_key)

    # ----------------------------------------------------------- messaging

    def register_handler(self, msg_type: int, handler: MessageHandler) -> None:
        """Handle one-way messages of ``msg_type``: ``await handler(peer, body)``."""
        self._check_unhandled(msg_type)
        self._message_handlers[msg_type] = handler

    def register_request_handler(self, msg_type: int, handler: RequestHandler) -> None:
        """Answer requests of ``msg_type`` with ``await handler(peer, body)``."""
        self._check_unhandled(msg_type)
        self._request_handlers[msg_type] = handler

    def _check_unhandled(self, msg_type: int) -> None:
        check_app_msg_type(msg_type)
        if msg_type in self._message_handlers or msg_type in self._request_handlers:
            raise ValueError(f"msg_type {msg_type} already has a handler")

    async def send(self, peer_key: bytes, msg_type: int, body: bytes) -> None:
        """Queue a one-way message to one peer.

        Raises PeerUnavailable if the peer is not connected, or was just
        disconnected because its send queue was full.
        """
        data = self._encode_message(msg_type, body)
        connection = self._connection_of(peer_key)
        if not connection.send_frame(data):
            raise PeerUnavailable(
                f"peer {peer_key.hex()} dropped: {connection.close_reason}"
            )

    async def broadcast(self, msg_type: int, body: bytes) -> int:
        """Queue a one-way message to every connected peer; returns how many."""
        data = self._encode_message(msg_type, body)
        queued = 0
        for connection in list(self._connections.values()):
            if connection.send_frame(data):
                queued += 1
        return queued

    async def request(
        self, peer_key: bytes, msg_type: int, body: bytes, timeout: float = 10.0
    ) -> bytes:
        """Send a request and return the peer's response body.

        Raises RequestTimeout when no answer comes in ``timeout`` seconds,
        PeerUnavailable when the peer is not connected or disconnects first,
        and RequestFailed when the peer answers with an error.
        """
        check_app_msg_type(msg_type)
        return await self._connection_of(peer_key).request(msg_type, body, timeout)

    def _encode_message(self, msg_type: int, body: bytes) -> bytes:
        check_app_msg_type(msg_type)
        return encode_frame(msg_type, 0, body, self._max_frame)

    def _connection_of(self, peer_key: bytes) -> PeerConnection:
        connection = self._connections.get(peer_key)
        if connection is None or connection.closed:
            raise PeerUnavailable(f"peer {peer_key.hex()} is not connected")
        return connection

    # ----------------------------------------------------------- peer control

    def connected_peers(self) -> list[bytes]:
        return sorted(key for key, conn in self._connections.items() if not conn.closed)

    def disconnect(self, peer_key: bytes, reason: str = "requested") -> bool:
        """Close the connection to a peer (it may reconnect); False if none."""
        connection = self._connections.get(peer_key)
        if connection is None:
            return False
        connection.close(reason)
        return True

    def penalize(self, peer_key: bytes, points: int, reason: str) -> None:
        """Score points against a peer, e.g. for an invalid block it relayed."""
        if points <= 0:
            raise ValueError("penalty points must be positive")
        self._add_penalty(peer_key, points, reason)

    def penalty_score(self, peer_key: bytes) -> int:
        return self._penalties.score(peer_key)

    def is_banned(self, peer_key: bytes) -> bool:
        return self._penalties.is_banned(peer_key)

    def update_peers(self, peers: Iterable[PeerAddress]) -> None:
        """Replace the peer list: new trust stores, dialers, dropped leavers."""
        self._peers = index_peers(peers)
        if self._server is None:
            return
        self._rebuild_contexts()
        for key, connection in list(self._connections.items()):
            if key not in self._peers:
                connection.close("peer_removed")
        for key in self._peers:
            self._ensure_dialer(key)
        self.refresh_allowlist()

    def refresh_allowlist(self) -> None:
        """Re-ask ``is_allowed`` for every connection and drop refused peers."""
        for key, connection in list(self._connections.items()):
            if not self._check_allowed(key):
                connection.close("not_allowed")
        for event in self._wakeups.values():
            event.set()

    # ----------------------------------------------------------- admission

    def _rebuild_contexts(self) -> None:
        certificates = [peer.certificate_pem for peer in self._peers.values()]
        self._server_context = server_context(self._identity, certificates)
        self._client_context = client_context(self._identity, certificates)

    def _check_allowed(self, key: bytes) -> bool:
        try:
            return bool(self._is_allowed(key))
        except Exception:
            log_event(
                self._log,
                logging.ERROR,
                "allowlist check failed",
                peer=key,
                exc_info=True,
            )
            return False

    def _refusal_of(self, key: bytes, expected: bytes | None = None) -> str | None:
        """Why a peer that passed TLS may still not connect, or None."""
        if self._stopping:
            return "shutting_down"
        if expected is not None and key != expected:
            return "unexpected_key"
        if key == self.public_key:
            return "self"
        if key not in self._peers:
            return "unknown_peer"
        if self._penalties.is_banned(key):
            return "banned"
        if not self._check_allowed(key):
            return "not_allowed"
        return None

    def _register(self, connection: PeerConnection) -> bool:
        """Make ``connection`` the peer's one connection, or say it is surplus."""
        key = connection.public_key
        existing = self._connections.get(key)
        if existing is not None and not existing.closed:
            if self._preferred(existing) and not self._preferred(connection):
                return False
            # Otherwise the newer connection wins: when both point the same way
            # the older one is most likely a leftover the peer has given up on.
            self._connections[key] = connection
            existing.close("duplicate_connection")
            return True
        self._connections[key] = connection
        log_event(
            self._log,
            logging.INFO,
            "peer connected",
            peer=key,
            addr=connection.address,
            direction="outbound" if connection.outbound else "inbound",
        )
        return True

    def _preferred(self, connection: PeerConnection) -> bool:
        # Both ends compute the same answer: keep what the lower key dialled.
        we_are_lower = self.public_key < connection.public_key
        return connection.outbound == we_are_lower

    async def _run_connection(self, connection: PeerConnection) -> None:
        try:
            await connection.run()
        finally:
            self._on_closed(connection)

    def _on_closed(self, connection: PeerConnection) -> None:
        key = connection.public_key
        reason = connection.close_reason or "closed"
        points = connection.penalty_points
        if self._connections.get(key) is connection:
            del self._connections[key]
            log_event(
                self._log,
                logging.WARNING if points else logging.INFO,
                "peer disconnected",
                peer=key,
                addr=connection.address,
                reason=reason,
                detail=connection.close_detail or None,
            )
        else:
            log_event(
                self._log,
                logging.DEBUG,
                "duplicate connection closed",
                peer=key,
                addr=connection.address,
                reason=reason,
            )
        if points and not self._stopping:
            self._add_penalty(key, points, reason)
        self._wake_dialer(key)

    def _add_penalty(self, key: bytes, points: int, reason: str) -> None:
        score = self._penalties.add(key, points)
        log_event(
            self._log,
            logging.INFO,
            "peer penalised",
            peer=key,
            reason=reason,
            points=points,
            score=score,
        )
        if score >= self._penalties.threshold:
            log_event(
                self._log,
                logging.WARNING,
                "peer banned",
                peer=key,
                seconds=self._limits.ban_seconds,
            )
            self.disconnect(key, "banned")

    def _log_refused(
        self, reason: str, *, peer: bytes | None, addr: str, detail: str = ""
    ) -> None:
        # Losing a simultaneous-dial race or a shutdown is routine, and a
        # failed handshake is as likely a port scan or health check as a peer.
        if {reason, detail} & {"duplicate_connection", "shutting_down"}:
            level = logging.DEBUG
        elif reason == "tls_handshake_failed":
            level = logging.INFO
        else:
            level = logging.WARNING
        log_event(
            self._log,
            level,
            "peer refused",
            peer=peer,
            addr=addr,
            reason=reason,
            detail=detail or None,
        )

    # ----------------------------------------------------------- inbound

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None  # start_server runs each callback in a task
        self._inbound_tasks.add(task)
        peername = writer.get_extra_info("peername")
        addr = format_address(peername)
        host = peername[0] if isinstance(peername, tuple) else str(peername)
        try:
            key = await self._handshake_inbound(task, writer, addr, host)
            if key is not None:
                await self._admit_inbound(key, addr, reader, writer)
        except Exception:
            # A bug of ours must cost one connection, never the node.
            log_event(self._log, logging.ERROR, "inbound failed", exc_info=True)
            writer.transport.abort()
        finally:
            self._inbound_tasks.discard(task)

    async def _handshake_inbound(
        self,
        task: asyncio.Task[object],
        writer: asyncio.StreamWriter,
        addr: str,
        host: str,
    ) -> bytes | None:
        """Run TLS on a fresh connection; the peer's key, or None if it failed."""
        limits = self._limits
        if self._stopping or len(self._handshakes) >= limits.max_pending_handshakes:
            refused = "too_many_handshakes"
        elif self._handshakes_by_host[host] >= limits.max_handshakes_per_address:
            refused = "too_many_handshakes_from_address"
        else:
            refused = None
        if refused is not None:
            writer.transport.abort()
            self._log_handshake_refused(refused, addr, host)
            return None

        self._handshakes.add(task)
        self._handshakes_by_host[host] += 1
        try:
            return await accept_tls(
                writer, self._server_context, limits.handshake_timeout
            )
        except TLSFailure as exc:
            self._log_refused(exc.reason, peer=None, addr=addr, detail=exc.detail)
            return None
        finally:
            self._handshakes.discard(task)
            self._handshakes_by_host[host] -= 1
            if not self._handshakes_by_host[host]:
                del self._handshakes_by_host[host]

    def _log_handshake_refused(self, reason: str, addr: str, host: str) -> None:
        """A flood of connects is refused connect by connect; the log says so
        once a minute per host, not once per connect."""
        now = time.monotonic()
        last = self._refusals_logged.get(host)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL_S:
            return
        if len(self._refusals_logged) >= MAX_REFUSAL_LOG_HOSTS:
            self._refusals_logged.clear()
        self._refusals_logged[host] = now
        self._log_refused(reason, peer=None, addr=addr, detail="more are not logged")

    async def _admit_inbound(
        self,
        key: bytes,
        addr: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        refusal = self._refusal_of(key)
        connection = self._new_connection(key, addr, False, reader, writer)
        if refusal is None and not self._register(connection):
            refusal = "duplicate_connection"
        if refusal is not None:
            self._log_refused(refusal, peer=key, addr=addr)
            # Tell the dialler why, so its operator sees the reason too; the
            # polite close below flushes this frame before closing.
            writer.write(
                encode_frame(Control.REFUSE, 0, refusal.encode(), self._max_frame)
            )
            await connection.abandon()
            return
        connection.send_frame(encode_frame(Control.WELCOME, 0, b"", self._max_frame))
        await self._run_connection(connection)

    def _new_connection(
        self,
        key: bytes,
        addr: str,
        outbound: bool,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> PeerConnection:
        return PeerConnection(
            public_key=key,
            address=addr,
            outbound=outbound,
            reader=reader,
            writer=writer,
            max_frame=self._max_frame,
            limits=self._limits,
            message_handlers=self._message_handlers,
            request_handlers=self._request_handlers,
            logger=self._log,
        )

    # ----------------------------------------------------------- outbound

    def _ensure_dialer(self, key: bytes) -> None:
        peer = self._peers.get(key)
        if peer is None or not peer.dialable or key == self.public_key:
            return
        task = self._dialers.get(key)
        if task is not None and not task.done():
            return
        self._dialers[key] = asyncio.create_task(
            self._dial_loop(key), name=f"p2p-dial-{key[:4].hex()}"
        )

    def _wake_dialer(self, key: bytes) -> None:
        event = self._wakeups.get(key)
        if event is not None:
            event.set()

    async def _dial_loop(self, key: bytes) -> None:
        limits = self._limits
        delay = limits.backoff_initial
        failures = 0
        wakeup = self._wakeups.setdefault(key, asyncio.Event())
        while not self._stopping:
            peer = self._peers.get(key)
            if peer is None or not peer.dialable:
                return
            wakeup.clear()
            if key in self._connections or not self._may_dial(key):
                # Nothing to do until the connection drops or the rules change;
                # the timeout also notices bans running out.
                try:
                    async with asyncio.timeout(limits.backoff_max):
                        await wakeup.wait()
                except TimeoutError:
                    pass
                continue
            lasted = await self._dial_once(peer, failures)
            if self._stopping:
                return
            failures = failures + 1 if lasted is None else 0
            if lasted is not None and lasted > limits.backoff_max:
                delay = limits.backoff_initial  # it was up for a while: retry soon
            # Jitter keeps nodes that lost each other at once from redialling
            # in lockstep.
            await asyncio.sleep(delay / 2 + random.uniform(0, delay / 2))
            delay = min(delay * 2, limits.backoff_max)

    def _may_dial(self, key: bytes) -> bool:
        return not self._penalties.is_banned(key) and self._check_allowed(key)

    async def _dial_once(self, peer: PeerAddress, failures: int) -> float | None:
        """Connect and run one connection; its lifetime, or None if refused."""
        addr = f"{peer.host}:{peer.port}"
        limits = self._limits
        try:
            reader, writer, key = await dial_tls(
                peer.host or "",
                peer.port or 0,
                self._client_context,
                connect_timeout=limits.dial_timeout,
                handshake_timeout=limits.handshake_timeout,
            )
        except TLSFailure as exc:
            if exc.reason != "unreachable":
                self._log_refused(
                    exc.reason, peer=peer.public_key, addr=addr, detail=exc.detail
                )
            else:
                # Say so once per outage, then keep quiet while retrying.
                log_event(
                    self._log,
                    logging.DEBUG if failures else logging.INFO,
                    "dial failed",
                    peer=peer.public_key,
                    addr=addr,
                    error=exc.detail,
                )
            return None
        connection = self._new_connection(key, addr, True, reader, writer)
        refusal = self._refusal_of(key, expected=peer.public_key)
        if refusal is not None:
            self._log_refused(refusal, peer=peer.public_key, addr=addr)
            await connection.abandon()
            return None
        try:
            await connection.await_welcome(limits.handshake_timeout)
        except AdmissionRefused as exc:
            self._log_refused("refused_by_peer", peer=key, addr=addr, detail=exc.reason)
            await connection.abandon()
            return None
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        if not self._register(connection):
            # The peer's own dial to us won the simultaneous-dial race.
            log_event(
                self._log,
                logging.DEBUG,
                "duplicate connection closed",
                peer=key,
                addr=addr,
                reason="duplicate_connection",
            )
            await connection.abandon()
            return None
        started = asyncio.get_running_loop().time()
        await self._run_connection(connection)
        return asyncio.get_running_loop().time() - started
