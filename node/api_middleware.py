"""The HTTP API's middleware: problem documents, limits, CORS, timing.

Every request passes, outermost first, through `observe` (latency by route
template and status), `problems` (any refusal or failure becomes an RFC 9457
problem document, internals never shown), `cors_preflight` and `body_limit` (a declared
body over the limit is refused before it is read, and the bodies held at once
are bounded by a node-wide budget). node.api installs them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http import HttpVersion11

from node.api_common import node_of
from node.views import RETRY_AFTER_S, ApiError, clip, too_large

# Logged as the API: operators filter one logger for everything HTTP.
log = logging.getLogger("node.api")

PROBLEM = "application/problem+json"

IN_FLIGHT = web.AppKey("in_flight", dict)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# --- problems ------------------------------------------------------------------------


async def send_problem(request: web.Request, error: ApiError) -> web.StreamResponse:
    body = json.dumps(error.doc, separators=(",", ":")).encode()
    response = web.Response(
        status=error.status, body=body, content_type=PROBLEM, headers=error.headers
    )
    # A refusal that leaves the body unread ends the connection, whatever the
    # refusal: reading on to keep it alive would be reading the body after all.
    unread = request.body_exists and not request.content.is_eof()
    gone = request.transport is None or request.transport.is_closing()
    if gone:
        # The connection was lost (the client left, or its body stopped
        # arriving and body_limit dropped it): aiohttp discards the answer
        # quietly when it fails to send it.
        response.force_close()
    elif error.close or unread:
        response.force_close()
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionError:
            return response  # the client left meanwhile; nobody to answer
        # Half-close rather than close: closing a socket with unread input
        # resets the connection, and a reset can destroy the answer before
        # the client (still sending its body) reads it. So the answer and a
        # FIN go out now, nothing more is read, and aiohttp closes the
        # connection api_site.LINGER_S later, when the client has read it.
        transport = request.transport
        if transport is not None and not transport.is_closing():
            transport.write_eof()
            discard_buffered_body(request)
            transport.pause_reading()
    return response


def discard_buffered_body(request: web.Request) -> None:
    """Drop the part of the body already received: it would otherwise stay in
    memory (up to a read's worth per connection) until the connection ends."""
    content = request.content
    if content.exception() is not None:
        return  # a body that broke off (an undecodable encoding) goes with it
    try:
        while content.read_nowait():
            pass
    except RuntimeError:
        pass  # a reader is waiting on it, and takes care of it


# --- middleware ----------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_label(request: web.Request) -> str:
    """The route template, never the raw path: metrics and logs stay bounded."""
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    started = time.perf_counter()
    response = await handler(request)
    method = request.method if request.method in _METHODS else "other"
    latency = node_of(request).metrics.http_latency
    latency.labels(route_label(request), method, str(response.status)).observe(
        time.perf_counter() - started
    )
    return response


def from_http_exception(request: web.Request, exc: web.HTTPException) -> ApiError:
    path = clip(request.path)
    headers = {
        name: value
        for name, value in exc.headers.items()
        if name.lower() not in ("content-type", "content-length")
    }
    if exc.status == 404:
        return ApiError("not_found", f"no route {path}")
    if exc.status == 405:
        allowed = ", ".join(sorted(exc.allowed_methods))  # type: ignore[attr-defined]
        detail = f"{clip(request.method)} is not allowed on {path}; use {allowed}"
        return ApiError("method_not_allowed", detail, headers=headers)
    if exc.status == 413:  # client_max_size, met while reading a body
        limit = node_of(request).config.api.max_body_bytes
        return too_large(request.content_length, limit)
    code = exc.reason.lower().replace(" ", "_")
    return ApiError(code, exc.reason, status=exc.status, headers=headers)


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        error = exc
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error = from_http_exception(request, exc)
    except ConnectionError:
        raise  # the client left; there is no one to answer
    except Exception:
        route = route_label(request)
        log.error("request failed method=%s route=%s", clip(request.method), route,
                  exc_info=True)  # fmt: skip
        error = ApiError("internal_error", "the node could not answer; it is logged")
    # A traceback holds the handler's frames, and with them the request's
    # body (up to api.max_body_bytes), in a cycle through this frame or the
    # exception it chained: only a full garbage collection, rare in a node,
    # would free them.
    chained: BaseException | None = error
    while chained is not None:
        chained.__traceback__ = None
        chained = chained.__context__
    log.debug(
        "request refused method=%s route=%s status=%d code=%s",
        clip(request.method),
        route_label(request),
        error.status,
        error.doc["code"],
    )
    return await send_problem(request, error)


def allowed_origin(request: web.Request) -> str | None:
    """The Access-Control-Allow-Origin value for this request, if any."""
    origin = request.headers.get("Origin")
    origins = node_of(request).config.api.cors_origins
    if origin is None or not origins:
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


async def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    allow = allowed_origin(request)
    if allow is not None:
        response.headers["Access-Control-Allow-Origin"] = allow
        response.headers["Access-Control-Expose-Headers"] = "Retry-After"
    if node_of(request).config.api.cors_origins:
        response.headers.add("Vary", "Origin")


@web.middleware
async def cors_preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
    exc = request.match_info.http_exception
    if (
        request.method != "OPTIONS"
        or "Access-Control-Request-Method" not in request.headers
        or not isinstance(exc, web.HTTPMethodNotAllowed)  # unknown routes: 404
    ):
        return await handler(request)
    if allowed_origin(request) is None:
        raise ApiError("origin_not_allowed", "this origin may not call the API")
    headers = {
        "Access-Control-Allow-Methods": ", ".join(sorted(exc.allowed_methods)),
        "Access-Control-Allow-Headers": "Accept, Content-Type",
        "Access-Control-Max-Age": "600",
    }
    return web.Response(status=204, headers=headers)


class BodyBudget:
    """Bytes of request bodies the node may hold at once, over all requests.

    The per-request limit alone lets a hundred clients sending chunked bodies
    (no declared length) make the node buffer a hundred times the limit. A
    request reserves its declared length, or the whole per-request limit when
    it declares none, for as long as it is handled; when the reservation does
    not fit, it is refused at once (503, Retry-After) with its body unread,
    rather than queued, so refusals stay fast and nothing waits on anything.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def reserve(self, size: int) -> bool:
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        self.used -= size


BODY_BUDGET = web.AppKey("body_budget", BodyBudget)
# Bytes of the budget this request holds (its reservation, then its body).
BODY_HELD = web.RequestKey("body_held", int)
# Bodies held at once, in multiples of api.max_body_bytes.
BODIES_IN_FLIGHT = 3
# Only these methods have bodies the API reads; any other request's body is
# never read, so it holds nothing (a stream opened with a body must not hold
# a reservation for as long as it runs).
BODY_METHODS = frozenset({"POST"})
# A body must have arrived this long after its request began, or the
# connection is dropped: a client trickling a byte at a time would otherwise
# hold its share of the budget for as long as it likes.
BODY_READ_S = 10.0


@web.middleware
async def body_limit(request: web.Request, handler: Handler) -> web.StreamResponse:
    limit = node_of(request).config.api.max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        raise too_large(declared, limit)
    if not request.body_exists or request.method not in BODY_METHODS:
        return await handler(request)
    size = limit if declared is None else declared
    budget = request.app[BODY_BUDGET]
    if not budget.reserve(size):
        detail = f"the node is reading {budget.used} bytes of bodies; retry shortly"
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        raise ApiError("server_busy", detail, headers=retry, close=True)
    request[BODY_HELD] = size
    deadline = asyncio.get_running_loop().call_later(
        BODY_READ_S, drop_if_body_pending, request
    )
    try:
        return await handler(request)
    finally:
        deadline.cancel()
        budget.release(request.pop(BODY_HELD))


def body_read(request: web.Request, body: bytes) -> None:
    """The body is in: from now on the request holds its size, not its
    reservation (a chunked one reserved the whole limit, and a submission
    that waits for finality may run for a minute)."""
    held = request.get(BODY_HELD)
    if held is not None and len(body) < held:
        request.app[BODY_BUDGET].release(held - len(body))
        request[BODY_HELD] = len(body)


def drop_if_body_pending(request: web.Request) -> None:
    if request.content.is_eof() or request.transport is None:
        return
    log.warning(
        "request dropped reason=body_too_slow route=%s seconds=%g",
        route_label(request),
        BODY_READ_S,
    )
    request.transport.abort()


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """Answer `Expect: 100-continue`, refusing an oversized body before it comes."""
    limit = node_of(request).config.api.max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        return await send_problem(request, too_large(declared, limit))
    if request.version == HttpVersion11:
        expect = request.headers.get("Expect", "")
        if expect.lower() != "100-continue":
            error = ApiError("expectation_failed", f"cannot meet {clip(expect)!r}")
            return await send_problem(request, error)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
    return None
