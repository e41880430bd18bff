"""Link faults between cluster nodes: one TCP proxy per directed dial.

Nodes reach each other over mutually authenticated TLS with pinned
certificates. A proxy that only forwards bytes leaves the handshake intact, so
a cluster created with links routes every dial through one: node A's config
names, for its peer B, the port of the proxy (A, B), which forwards to B's
real p2p port. Both nodes of a pair dial each other (the network keeps the
connection the lower key dialled), so each pair has two proxies, one per
dialler.

One TCP connection carries the traffic of both directions; a proxy (A, B)
forwards client-to-server bytes as traffic from A to B and server-to-client
bytes as traffic from B to A, each under the rules of its direction:

- `cut(a, b)`: the pair is disconnected. Open proxied connections between
  them are reset, and new ones are accepted and reset at once, as a
  firewall that rejects would; a dialler sees the peer unreachable.
- `delay(a, b, ms)`: bytes from a to b are held `ms` before being passed on,
  in order (a slow one-way path). Zero removes the delay.
- `drop(a, b)`: bytes from a to b are silently discarded while the
  connections stay open (a one-way black hole); b hears nothing from a until
  its idle timeout. A TLS stream with a gap cannot continue, so `heal`
  resets every connection that lost bytes.
- `partition(*groups)`: cut every pair of nodes in different groups; nodes in
  no group keep all their links.
- `heal()`: remove every cut, drop and delay.

The proxies run on their own event loop in a background thread, started and
stopped with the cluster. Every method here may be called from the test's
thread; each returns once the rule is in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

log = logging.getLogger("tests.network")

HOST = "127.0.0.1"
CHUNK_BYTES = 64 * 1024
CONNECT_TIMEOUT_S = 5.0
CALL_TIMEOUT_S = 10.0


@dataclass
class Direction:
    """The rules for bytes flowing from one node to another."""

    delay_ms: int = 0
    dropping: bool = False


@dataclass(eq=False)
class Pipe:
    """One proxied connection: the dialler's socket and the listener's."""

    dialler: str
    listener: str
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None = None
    # Bytes were discarded (drop): the TLS stream inside is broken.
    damaged: bool = False
    tasks: list[asyncio.Task] = field(default_factory=list)

    def reset(self) -> None:
        for writer in (self.client, self.server):
            if writer is not None:
                reset_transport(writer)
        for task in self.tasks:
            task.cancel()


class LinkProxies:
    """The proxies of one cluster and the rules they apply."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="link-proxies", daemon=True
        )
        self._servers: dict[tuple[str, str], asyncio.Server] = {}
        self._ports: dict[tuple[str, str], int] = {}
        self._cut: set[frozenset[str]] = set()
        self._directions: dict[tuple[str, str], Direction] = {}
        self._pipes: set[Pipe] = set()
        self._started = False

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        if not self._started:
            self._thread.start()
            self._started = True

    def stop(self) -> None:
        """Close every proxy and connection, then end the thread."""
        if not self._started:
            return
        with contextlib.suppress(Exception):
            self._call(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CALL_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()
        self._started = False

    def add(self, dialler: str, listener: str, target_port: int) -> int:
        """A proxy for `dialler`'s connections to `listener`, which listens on
        `target_port`; returns the port `dialler` must dial instead."""
        self.start()
        return self._call(self._add(dialler, listener, target_port))

    def port(self, dialler: str, listener: str) -> int:
        return self._ports[(dialler, listener)]

    @property
    def links(self) -> list[tuple[str, str]]:
        return sorted(self._ports)

    # --- rules ----------------------------------------------------------------------

    def cut(self, a: str, b: str) -> None:
        self._call(self._cut_pairs([(a, b)]))
        log.info("link cut a=%s b=%s", a, b)

    def partition(self, *groups: Iterable[str]) -> None:
        groups = [set(g) for g in groups]
        pairs = [
            (a, b)
            for one, other in itertools.combinations(groups, 2)
            for a in one
            for b in other
        ]
        self._call(self._cut_pairs(pairs))
        log.info(
            "network partitioned groups=%s",
            "|".join(",".join(sorted(g)) for g in groups),
        )

    def delay(self, a: str, b: str, ms: int) -> None:
        async def set_delay() -> None:
            self._direction(a, b).delay_ms = max(0, int(ms))

        self._call(set_delay())
        log.info("link delayed src=%s dst=%s ms=%d", a, b, ms)

    def drop(self, a: str, b: str) -> None:
        async def set_dropping() -> None:
            self._direction(a, b).dropping = True

        self._call(set_dropping())
        log.info("link dropping src=%s dst=%s", a, b)

    def heal(self) -> None:
        self._call(self._heal())
        log.info("network healed")

    def is_cut(self, a: str, b: str) -> bool:
        return frozenset((a, b)) in self._cut

    # --- inside the loop ------------------------------------------------------------

    def _call(self, coro):
        if not self._started:
            coro.close()
            raise RuntimeError("the link proxies are not running")
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(CALL_TIMEOUT_S)

    def _direction(self, src: str, dst: str) -> Direction:
        return self._directions.setdefault((src, dst), Direction())

    async def _add(self, dialler: str, listener: str, target_port: int) -> int:
        key = (dialler, listener)
        if key in self._ports:
            raise ValueError(f"a proxy for {dialler} -> {listener} exists already")

        async def accept(reader, writer) -> None:
            await self._forward(dialler, listener, target_port, reader, writer)

        server = await asyncio.start_server(accept, HOST, 0)
        self._servers[key] = server
        self._ports[key] = server.sockets[0].getsockname()[1]
        return self._ports[key]

    async def _cut_pairs(self, pairs: list[tuple[str, str]]) -> None:
        cut = {frozenset(pair) for pair in pairs if pair[0] != pair[1]}
        self._cut |= cut
        for pipe in list(self._pipes):
            if frozenset((pipe.dialler, pipe.listener)) in cut:
                pipe.reset()

    async def _heal(self) -> None:
        self._cut.clear()
        self._directions.clear()
        for pipe in list(self._pipes):
            if pipe.damaged:
                pipe.reset()

    async def _close_all(self) -> None:
        for server in self._servers.values():
            server.close()
        for pipe in list(self._pipes):
            pipe.reset()
        for server in self._servers.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 1.0)
        self._servers.clear()
        # Let every connection's tasks finish, so none is left pending when
        # the loop closes.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _forward(
        self,
        dialler: str,
        listener: str,
        target_port: int,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
    ) -> None:
        if frozenset((dialler, listener)) in self._cut:
            reset_transport(client_writer)
            return
        pipe = Pipe(dialler, listener, client_writer)
        self._pipes.add(pipe)
        try:
            try:
                server_reader, server_writer = await asyncio.wait_for(
                    asyncio.open_connection(HOST, target_port), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError):
                reset_transport(client_writer)  # the listener is down
                return
            pipe.server = server_writer
            if frozenset((dialler, listener)) in self._cut:
                return  # cut while connecting
            pipe.tasks = [
                asyncio.create_task(
                    self._pump(pipe, client_reader, server_writer, dialler, listener)
                ),
                asyncio.create_task(
                    self._pump(pipe, server_reader, client_writer, listener, dialler)
                ),
            ]
            # Either side closing ends the connection for both.
            await asyncio.wait(pipe.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._pipes.discard(pipe)
            pipe.reset()

    async def _pump(
        self,
        pipe: Pipe,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        src: str,
        dst: str,
    ) -> None:
        """Move bytes from `src` to `dst`, each chunk released when its delay
        has passed, in the order read."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def send() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        sender = asyncio.create_task(send())
        try:
            while data := await reader.read(CHUNK_BYTES):
                rules = self._directions.get((src, dst))
                if rules is not None and rules.dropping:
                    pipe.damaged = True
                    continue
                delay_s = (rules.delay_ms if rules is not None else 0) / 1000
                queue.put_nowait((loop.time() + delay_s, data))
                if sender.done():
                    break
            queue.put_nowait(None)
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()


def reset_transport(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0), so the other end fails at once
    instead of waiting for data that never comes."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
    writer.transport.abort()
