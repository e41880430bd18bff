"""The API's listening socket, with a cap on open connections.

aiohttp bounds what one request may send, but not how many connections may
sit open: thousands of idle or half-sent requests would use up the process's
file descriptors, and a validator that cannot open its signer file cannot
sign. Past the cap, a new connection is closed as soon as it is accepted, so
the node (consensus, peers, the connections it already serves) keeps running.

A request that aiohttp's parser refuses before any route sees it (a request
line or header over the size limit, a broken header) is answered with a
`bad_request` problem document like every other refusal, and logged without
a traceback: it is the client's mistake, and anyone can send one.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from node.views import ApiError, clip

log = logging.getLogger("node.api")
PROBLEM = "application/problem+json"
# After answering a request whose body it did not read (a refusal), the server
# waits at most this long for the rest before it closes, so the client reads
# the answer instead of a reset; aiohttp's default of 10 s would let every
# refused upload hold a connection (and what it sends meanwhile) that long.
LINGER_S = 1.0


class ProblemRequestHandler(RequestHandler):
    __slots__ = ()

    def handle_error(self, request, status=500, exc=None, message=None):
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        detail = clip(str(exc or message or "malformed HTTP request"))
        log.debug("http request refused status=%d detail=%s", status, detail)
        error = ApiError("bad_request", detail)
        body = json.dumps(error.doc, separators=(",", ":")).encode()
        response = web.Response(status=error.status, body=body, content_type=PROBLEM)
        response.force_close()
        return response


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
        # As web.Server.__call__ makes it, with problem documents for errors,
        # a short linger, and bodies left as sent: node.api refuses a
        # compressed one unread, where aiohttp would decompress it as it
        # arrives (and wait forever on a deflate stream that stops short).
        kwargs = {
            **server._kwargs,
            "lingering_time": LINGER_S,
            "auto_decompress": False,
        }
        return ProblemRequestHandler(server, loop=server._loop, **kwargs)

    async def start(self) -> None:
        self._runner._reg_site(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self._host, self._port, backlog=self._backlog
        )
        self._bound_port = self._server.sockets[0].getsockname()[1]
