"""The API's listening socket, with a cap on open connections.

aiohttp bounds what one request may send, but not how many connections may
sit open: thousands of idle or half-sent requests would use up the process's
file descriptors, and a validator that cannot open its signer file cannot
sign. Past the cap, a new connection is closed as soon as it is accepted, so
the node (consensus, peers, the connections it already serves) keeps running.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

log = logging.getLogger("node.api")


class _Refuse(asyncio.Protocol):
    """A connection over the cap: closed at once, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()


class CappedTCPSite(web.TCPSite):
    def __init__(self, runner: web.AppRunner, host: str, port: int, cap: int):
        super().__init__(runner, host, port, backlog=min(cap, 1024))
        self._cap = cap
        self._refused = 0

    def _protocol(self) -> asyncio.Protocol:
        server = self._runner.server
        if len(server.connections) >= self._cap:
            self._refused += 1
            if self._refused in (1, 10, 100) or self._refused % 1000 == 0:
                log.warning(
                    "api connection refused reason=connection_cap cap=%d refused=%d",
                    self._cap,
                    self._refused,
                )
            return _Refuse()
        return server()

    async def start(self) -> None:
        self._runner._reg_site(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self._host, self._port, backlog=self._backlog
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
