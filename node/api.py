"""The node's HTTP API: submit transactions, read the ledger, follow new blocks.

Apps reach perkchain through this API: a merchant's till awards coins for a
purchase, a wallet shows a customer's balance and spends coins, an auditor's
tools follow every committed block, the company's CRM and BI tools read
settlement and analytics. Everything lives under /v1 (status, transactions,
blocks, accounts, merchants, validators, the loyalty program's rules,
settlement and analytics from node.api_loyalty, server-sent event streams
and the OpenAPI document), beside /metrics, /healthz and /readyz for
operators; ROUTES at the end lists them and node.openapi describes each.

A transaction arrives as its canonical signed bytes (state.tx): hex in a JSON
body, or raw with Content-Type application/msgpack. The node never signs for
anyone. Answers are JSON, or msgpack when the Accept header asks for it; the
documents (node.views) are the same either way.

Every error is an RFC 9457 problem document with a stable `code`: a refused
transaction carries its reason code's slug (state.codes), anything else one of
the API's own codes. Input is assumed hostile: a declared body size is checked
before any of it is read, JSON is parsed strictly, each client address has a
bounded number of requests in flight, and anything unexpected becomes a 500
problem that shows no internals.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from node import api_loyalty, views, views_loyalty
from node.api_common import NODE, node_of, query, reply
from node.api_middleware import (
    BODIES_IN_FLIGHT,
    BODY_BUDGET,
    IN_FLIGHT,
    BodyBudget,
    Handler,
    add_cors_headers,
    body_limit,
    body_read,
    cors_preflight,
    expect_continue,
    observe,
    problems,
    route_label,
)
from node.events import CommittedBlock, Subscription
from node.mempool import Admission, MempoolFull
from node.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from node.openapi import build_document
from node.views import JSON, MSGPACK, MSGPACK_TYPES, ApiError, clip, refusal
from state.block import decode_block, decode_receipts
from state.codes import Code
from state.tx import TxRejected

if TYPE_CHECKING:
    from node.service import Node, TxStatus

log = logging.getLogger("node.api")

# Requests one client address may have in flight, streams included. Behind a
# reverse proxy every client shares the proxy's address: raise it there.
MAX_IN_FLIGHT_PER_CLIENT = 64

# Streams send a comment line this often so proxies keep idle streams open, and
# look for a vanished client this often between events.
HEARTBEAT_S = 15.0
DISCONNECT_POLL_S = 1.0

STREAMS = web.AppKey("streams", set)
STOPPING = web.AppKey("stopping", asyncio.Event)
OPENAPI = web.AppKey("openapi", dict)


# --- request bodies and parameters ------------------------------------------------


async def read_body(request: web.Request) -> tuple[str, bytes]:
    """("json" | "msgpack", body); 415 for any other Content-Type."""
    content_type = request.content_type
    charset = (request.charset or "utf-8").lower()
    if content_type == JSON and charset in ("utf-8", "utf8"):
        form = "json"
    elif content_type in MSGPACK_TYPES:
        form = "msgpack"
    else:
        sent = clip(request.headers.get("Content-Type", ""))
        detail = f"Content-Type {sent!r} is neither {JSON} nor {MSGPACK}"
        raise ApiError("unsupported_media_type", detail)
    # Bodies are documented as sent, and read as sent (node.api_site turns
    # aiohttp's decompression off): a compressed one is refused unread.
    codings = ",".join(request.headers.getall("Content-Encoding", []))
    if codings.strip().lower() not in ("", "identity"):
        detail = f"Content-Encoding {clip(codings)!r}: send the body uncompressed"
        accept = {"Accept-Encoding": "identity"}
        raise ApiError("unsupported_media_type", detail, headers=accept)
    try:
        body = await request.read()  # client_max_size refuses more with 413
    except web.RequestPayloadError as exc:
        # Broken chunked framing: the client's mistake. Nothing more of the
        # body can be read, so it ends here; aiohttp would otherwise try to
        # drain it after the answer and log the error again as unhandled.
        request.content.feed_eof()
        detail = f"the body cannot be read: {clip(str(exc))}"
        raise ApiError("bad_request", detail, close=True) from None
    except ConnectionResetError:
        # The connection went while the body was awaited: the client left,
        # or body_limit dropped a body that stopped arriving (aiohttp does not
        # report every broken chunk to the reader, so such a body just stops).
        # Nobody is left to answer; the refusal is for the log only.
        raise ApiError("bad_request", "the connection was lost", close=True) from None
    body_read(request, body)
    if not body:
        raise ApiError("empty_body", "the request body is empty")
    return form, body


async def single_tx(request: web.Request) -> bytes:
    form, body = await read_body(request)
    if form == "msgpack":
        return body  # the canonical transaction itself
    return views.json_tx(views.parse_json(body))


async def batch_txs(request: web.Request, max_batch: int) -> list[bytes | ApiError]:
    form, body = await read_body(request)
    if form == "msgpack":
        return views.msgpack_batch(body, max_batch)
    return views.json_batch(views.parse_json(body), max_batch)


# --- handlers: transactions ----------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    query(request)
    return reply(request, node_of(request).status())


async def submit_transaction(request: web.Request) -> web.Response:
    node = node_of(request)
    timeout = views.parse_wait(
        query(request, "wait", "timeout"), node.config.api.max_wait_s
    )
    raw = await single_tx(request)
    try:
        admission = await node.submit(raw)
    except (TxRejected, MempoolFull) as exc:
        raise refusal(exc, raw) from None
    tx_hash = admission.tx.hash
    if timeout is None:
        return reply(request, {"hash": tx_hash.hex(), "status": "pending"}, 202)
    return final_reply(request, tx_hash, await wait_final(request, tx_hash, timeout))


async def wait_final(
    request: web.Request, tx_hash: bytes, timeout: float
) -> TxStatus | None:
    """node.wait_final, cut short when the API shuts down."""
    node = node_of(request)
    waiting = asyncio.ensure_future(node.wait_final(tx_hash, timeout))
    stopping = asyncio.ensure_future(request.app[STOPPING].wait())
    try:
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        finished = waiting.done()
        if not finished:
            waiting.cancel()  # it forgets its waiter as it unwinds
    if finished and not waiting.cancelled():
        return waiting.result()
    return node.tx_status(tx_hash)


def final_reply(
    request: web.Request, tx_hash: bytes, final: TxStatus | None
) -> web.Response:
    """The answer to a submission that waited: committed, refused or pending."""
    hash_hex = tx_hash.hex()
    if final is None:
        detail = "the transaction left the mempool uncommitted (it expired)"
        raise ApiError("dropped", detail, hash=hash_hex)
    if final.status == "pending":
        return reply(request, {"hash": hash_hex, "status": "pending"}, 202)
    if final.status == "rejected":
        raise ApiError(final.code, final.detail, hash=hash_hex)
    receipt = final.receipt
    if receipt.code != Code.OK:
        detail = f"committed at height {final.height}; the ledger refused it"
        raise ApiError(
            receipt.code,
            detail,
            status=422,
            hash=hash_hex,
            height=final.height,
            index=final.index,
        )
    doc = {
        "hash": hash_hex,
        "status": "committed",
        "height": final.height,
        "index": final.index,
        "receipt": views.receipt_view(receipt),
    }
    return reply(request, doc)


async def submit_batch(request: web.Request) -> web.Response:
    node = node_of(request)
    query(request)
    items = await batch_txs(request, node.config.api.max_batch)
    raws = [item for item in items if isinstance(item, bytes)]
    outcomes = iter(await node.submit_batch(raws))
    results: list[dict[str, Any]] = []
    headers: dict[str, str] = {}
    for item in items:
        outcome = item if isinstance(item, ApiError) else next(outcomes)
        if isinstance(outcome, Admission):
            results.append({"hash": outcome.tx.hash.hex(), "status": "pending"})
            continue
        error = outcome if isinstance(outcome, ApiError) else refusal(outcome, item)
        headers.update(error.headers)  # Retry-After when the mempool was full
        results.append(error.doc)
    accepted = sum(1 for r in results if r["status"] == "pending")
    return reply(request, {"accepted": accepted, "results": results}, 200, headers)


async def transaction(request: web.Request) -> web.Response:
    query(request)
    tx_hash = views.parse_hash(request.match_info["hash"])
    found = node_of(request).tx_status(tx_hash)
    if found is None:
        detail = "no pending, committed or recently refused transaction has this hash"
        raise ApiError("unknown_transaction", detail, hash=tx_hash.hex())
    return reply(request, views.tx_status_view(tx_hash, found))


# --- handlers: ledger reads ----------------------------------------------------------


def block_doc(node: Node, height: int) -> dict[str, Any]:
    store = node.store
    data = store.block_bytes(height)
    if data is None:
        detail = f"no block at height {height}; the latest is {store.height}"
        raise ApiError("unknown_block", detail, height=height)
    block = decode_block(data)
    receipts = decode_receipts(store.receipts_bytes(height))
    decoded = [node.signatures.decode(raw) for raw in block.txs]
    return views.block_view(block, decoded, receipts, store.commit_bytes(height) or b"")


async def latest_block(request: web.Request) -> web.Response:
    query(request)
    node = node_of(request)
    if node.store.height == 0:
        raise ApiError("unknown_block", "no block has been committed yet")
    return reply(request, block_doc(node, node.store.height))


async def block_at_height(request: web.Request) -> web.Response:
    query(request)
    height = views.parse_height(request.match_info["height"])
    return reply(request, block_doc(node_of(request), height))


async def raw_block_at_height(request: web.Request) -> web.Response:
    """The block, its commit certificate and its receipts as stored: what an
    auditor verifies, and the cheapest way to follow the chain."""
    query(request)
    height = views.parse_height(request.match_info["height"])
    store = node_of(request).store
    block, commit = store.block_bytes(height), store.commit_bytes(height)
    if block is None or commit is None:
        detail = f"no block at height {height}; the latest is {store.height}"
        raise ApiError("unknown_block", detail, height=height)
    parts = {
        "block": block,
        "commit": commit,
        "receipts": store.receipts_bytes(height) or b"",
    }
    # Msgpack carries the bytes as bin: a follower of a busy chain reads
    # megabytes a second, and hex would double them for both sides.
    if not views.prefers_msgpack(request.headers.get("Accept", "")):
        parts = {name: value.hex() for name, value in parts.items()}
    return reply(request, {"height": height, **parts})


async def evidence(request: web.Request) -> web.Response:
    query(request)
    return reply(request, views.evidence_view(node_of(request).store))


async def account(request: web.Request) -> web.Response:
    key = views.parse_address_text(request.match_info["address"])
    params = query(request, "limit", "cursor")
    limit = views.parse_limit(params)
    cursor = views.parse_cursor(params, key)
    store = node_of(request).store
    record = views.read_account(store, key)
    # One more than asked says whether another page exists, so the last page
    # never hands out a cursor that leads to an empty one.
    rows = list(store.history(key, cursor, limit + 1))
    next_cursor = rows[limit - 1][0] if len(rows) > limit else None
    history = [views.history_item(*row[1:]) for row in rows[:limit]]
    now_s = store.time_ms // 1000
    # Coins whose return window has closed count as lots, as the ledger would
    # make them at the account's next transaction; balances do not change.
    record.release(now_s)
    doc = views.account_view(key, record, now_s, history, next_cursor)
    rules, _ = api_loyalty.current_rules(store)
    program = views.read_program(store)
    doc.update(views_loyalty.account_extras(record, now_s, program, rules))
    return reply(request, doc)


async def merchant(request: web.Request) -> web.Response:
    key = views.parse_address_text(request.match_info["address"])
    query(request)
    store = node_of(request).store
    record = views.read_merchant(store, key)
    if record is None:
        raise ApiError("unknown_merchant", "no merchant has this address", status=404)
    program = views.read_program(store)
    doc = views.merchant_view(key, record, program, store.time_ms // 1000)
    doc.update(views_loyalty.merchant_extras(record))
    return reply(request, doc)


async def validators(request: web.Request) -> web.Response:
    query(request)
    return reply(request, views.validators_view(node_of(request).store))


# --- handlers: streams ---------------------------------------------------------------


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def block_stream(request: web.Request) -> web.StreamResponse:
    query(request)
    return await serve_events(
        request, "block", lambda c: [views.block_summary(c.block)]
    )


async def account_stream(request: web.Request) -> web.StreamResponse:
    key = views.parse_address_text(request.match_info["address"])
    query(request)
    return await serve_events(
        request, "account", lambda c: views.account_events(c, key)
    )


async def serve_events(
    request: web.Request,
    event: str,
    render: Callable[[CommittedBlock], list[dict[str, Any]]],
) -> web.StreamResponse:
    """Server-sent events from committed blocks until the client or node leaves:
    `event` with each document `render` makes of a block."""
    app = request.app
    subscription = node_of(request).events.subscribe()
    app[STREAMS].add(subscription)
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # proxies must not hold events back
        }
    )
    loop = asyncio.get_running_loop()
    route = route_label(request)
    log.debug("stream opened route=%s remote=%s", route, request.remote)
    reason = "client gone"
    try:
        await response.prepare(request)
        await response.write(b": stream open\n\n")
        last_write = loop.time()
        while True:
            poll = min(DISCONNECT_POLL_S, HEARTBEAT_S)
            try:
                committed = await asyncio.wait_for(subscription.next(), poll)
            except TimeoutError:
                if request.transport is None or request.transport.is_closing():
                    break
                if loop.time() - last_write >= HEARTBEAT_S:
                    await response.write(b": heartbeat\n\n")
                    last_write = loop.time()
                continue
            if committed is None:
                reason = subscription.dropped_reason or "node stopping"
                await response.write(sse("end", {"reason": reason}))
                break
            for data in render(committed):
                await response.write(sse(event, data))
                last_write = loop.time()
    except ConnectionError:
        pass  # the client went away between two writes
    except Exception:
        # The status line is out, so no problem document can follow.
        reason = "error"
        log.error("stream failed route=%s", route, exc_info=True)
    finally:
        subscription.close()
        app[STREAMS].discard(subscription)
        log.debug("stream closed route=%s reason=%r", route, reason)
    return response


def end_subscription(subscription: Subscription) -> None:
    """Wake a stream with the end marker, making room in its queue if needed."""
    subscription.close()
    while True:
        try:
            subscription.queue.put_nowait(None)
            return
        except asyncio.QueueFull:
            subscription.queue.get_nowait()


async def on_shutdown(app: web.Application) -> None:
    # Streams and finality waits would otherwise hold the server's shutdown
    # for its whole grace period.
    app[STOPPING].set()
    for subscription in list(app[STREAMS]):
        end_subscription(subscription)


# --- handlers: documents and operations ----------------------------------------------


async def openapi_document(request: web.Request) -> web.Response:
    query(request)
    return reply(request, request.app[OPENAPI])


async def metrics(request: web.Request) -> web.Response:
    body = node_of(request).metrics.render()
    return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})


async def health(request: web.Request) -> web.Response:
    return reply(request, {"status": "ok"})


async def readiness(request: web.Request) -> web.Response:
    node = node_of(request)
    store = node.store
    if not node.started or store is None or store.db.closed:
        raise ApiError("not_ready", "the node is starting or stopping")
    return reply(request, {"status": "ready", "height": store.height})


# --- per-client limit -----------------------------------------------------------------


@web.middleware
async def limit_per_client(
    request: web.Request, handler: Handler
) -> web.StreamResponse:
    in_flight: dict[str, int] = request.app[IN_FLIGHT]
    client = request.remote or "unknown"
    count = in_flight.get(client, 0)
    if count >= MAX_IN_FLIGHT_PER_CLIENT:
        detail = f"at most {MAX_IN_FLIGHT_PER_CLIENT} requests in flight per client"
        retry = {"Retry-After": str(views.RETRY_AFTER_S)}
        raise ApiError("too_many_requests", detail, headers=retry)
    in_flight[client] = count + 1
    try:
        return await handler(request)
    finally:
        if in_flight[client] <= 1:
            del in_flight[client]
        else:
            in_flight[client] -= 1


# --- the application -----------------------------------------------------------------

ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/v1/status", status),
    ("POST", "/v1/transactions", submit_transaction),
    ("POST", "/v1/transactions/batch", submit_batch),
    # "batch" is the POST route's, not a hash: GET on it is 405, as documented.
    ("GET", "/v1/transactions/{hash:(?!batch$)[^/]+}", transaction),
    ("GET", "/v1/blocks/latest", latest_block),
    ("GET", "/v1/blocks/{height}", block_at_height),
    ("GET", "/v1/blocks/{height}/raw", raw_block_at_height),
    ("GET", "/v1/evidence", evidence),
    ("GET", "/v1/accounts/{address}", account),
    ("GET", "/v1/merchants/{address}", merchant),
    ("GET", "/v1/validators", validators),
    *api_loyalty.ROUTES,
    ("GET", "/v1/stream/blocks", block_stream),
    ("GET", "/v1/stream/accounts/{address}", account_stream),
    ("GET", "/v1/openapi.json", openapi_document),
    ("GET", "/metrics", metrics),
    ("GET", "/healthz", health),
    ("GET", "/readyz", readiness),
]


def create_app(node: Node) -> web.Application:
    api = node.config.api
    app = web.Application(
        client_max_size=api.max_body_bytes,
        # Outermost first: timing sees the final status of everything, problems
        # wraps all that can refuse, the per-client count covers the rest.
        middlewares=[observe, problems, limit_per_client, cors_preflight, body_limit],
    )
    app[NODE] = node
    app[IN_FLIGHT] = {}
    app[STREAMS] = set()
    app[STOPPING] = asyncio.Event()
    app[OPENAPI] = build_document(api.max_batch, api.max_body_bytes)
    app[BODY_BUDGET] = BodyBudget(BODIES_IN_FLIGHT * api.max_body_bytes)
    for method, path, handler in ROUTES:
        if method == "GET":
            # HEAD answers as GET without the body (load balancers and health
            # checks use it); a stream has no end for HEAD to wait for.
            stream = path.startswith("/v1/stream/")
            app.router.add_get(path, handler, allow_head=not stream)
        else:
            app.router.add_route(method, path, handler, expect_handler=expect_continue)
    app.on_response_prepare.append(add_cors_headers)
    app.on_shutdown.append(on_shutdown)
    return app
