"""client.http against a small aiohttp server that answers like a node.

The server is scripted per test: it records what it received and answers with
the documents or problem responses the test chose, so every typed exception,
the retry rule and both body encodings are checked without a running chain.
`FakeNode` is also what the CLI tests submit to.
"""

from __future__ import annotations

import ast
import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pytest
from aiohttp import web

import client.http
from client.http import (
    ApiError,
    AsyncClient,
    BadRequest,
    Client,
    Conflict,
    NodeUnreachable,
    NotFound,
    Rejected,
    TooLarge,
    TooManyRequests,
    Unavailable,
    parse_retry_after,
)
from state.codec import sha256

CHAIN_ID = "perk-test-1"
BLOCK_TIME_MS = 1_700_000_000_123


def problem(
    status: int,
    code: str,
    detail: str = "",
    headers: dict[str, str] | None = None,
    **extra: object,
) -> web.Response:
    body = {
        "type": f"urn:perkchain:problem:{code}",
        "title": code.replace("_", " "),
        "status": status,
        "code": code,
        "detail": detail,
        **extra,
    }
    return web.Response(
        status=status,
        text=json.dumps(body),
        content_type="application/problem+json",
        headers=headers,
    )


@dataclass
class FakeNode:
    """A scripted node API; `answers` maps a route name to a callable or queue."""

    requests: list[dict] = field(default_factory=list)
    # route name -> function(request body/info) -> web.Response
    answers: dict[str, Callable[[dict], web.Response]] = field(default_factory=dict)
    merchant: dict[str, Any] = field(
        default_factory=lambda: {
            "name": "Corner Shop",
            "rate": 10,
            "daily_cap": 5000,
            "active": True,
        }
    )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/status", self.status)
        app.router.add_post("/v1/transactions", self.submit)
        app.router.add_post("/v1/transactions/batch", self.submit_batch)
        app.router.add_get("/v1/transactions/{hash}", self.tx)
        app.router.add_get("/v1/blocks/{height}", self.block)
        app.router.add_get("/v1/accounts/{address}", self.account)
        app.router.add_get("/v1/merchants/{address}", self.get_merchant)
        app.router.add_get("/v1/stream/blocks", self.stream)
        return app

    def answer(self, route: str, seen: dict, default: Callable[[], web.Response]):
        self.requests.append({"route": route, **seen})
        chosen = self.answers.get(route)
        return chosen(seen) if chosen is not None else default()

    async def status(self, request: web.Request) -> web.Response:
        return self.answer(
            "status",
            {},
            lambda: web.json_response(
                {
                    "chain_id": CHAIN_ID,
                    "node": "fake",
                    "height": 7,
                    "latest_block_time_ms": BLOCK_TIME_MS,
                }
            ),
        )

    async def submit(self, request: web.Request) -> web.Response:
        if request.content_type == "application/msgpack":
            raw = await request.read()
        else:
            raw = bytes.fromhex((await request.json())["tx"])
        seen = {
            "raw": raw,
            "content_type": request.content_type,
            "query": dict(request.query),
        }

        def committed() -> web.Response:
            return web.json_response(
                {
                    "hash": sha256(raw).hex(),
                    "status": "committed",
                    "height": 8,
                    "index": 0,
                    "receipt": {"code": "ok", "code_number": 0, "events": []},
                }
            )

        return self.answer("submit", seen, committed)

    async def submit_batch(self, request: web.Request) -> web.Response:
        raws = msgpack.unpackb(await request.read(), raw=False)
        seen = {"raws": raws, "content_type": request.content_type}
        return self.answer(
            "batch",
            seen,
            lambda: web.json_response(
                {
                    "results": [
                        {"hash": sha256(r).hex(), "status": "pending"} for r in raws
                    ]
                }
            ),
        )

    async def tx(self, request: web.Request) -> web.Response:
        return self.answer(
            "tx",
            {"hash": request.match_info["hash"]},
            lambda: problem(404, "not_found", "no such transaction"),
        )

    async def block(self, request: web.Request) -> web.Response:
        height = request.match_info["height"]
        return self.answer(
            "block",
            {"height": height},
            lambda: web.json_response(
                {"height": 7, "hash": "ab" * 32, "header": {"time_ms": 1}, "txs": []}
            ),
        )

    async def account(self, request: web.Request) -> web.Response:
        seen = {"address": request.match_info["address"], "query": dict(request.query)}
        return self.answer(
            "account",
            seen,
            lambda: web.json_response(
                {
                    "address": seen["address"],
                    "balance": 42,
                    "frozen": False,
                    "debt": 0,
                    "lots": [],
                    "history": [{"height": 3, "event": "award", "delta": 42}],
                    "next_cursor": "00ff",
                }
            ),
        )

    async def get_merchant(self, request: web.Request) -> web.Response:
        return self.answer(
            "merchant",
            {"address": request.match_info["address"]},
            lambda: web.json_response(
                {"address": request.match_info["address"], **self.merchant}
            ),
        )

    async def stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b": keep-alive\n\n")
        for height in (1, 2):
            data = json.dumps({"height": height, "txs": 0})
            await response.write(
                f"event: block\nid: {height}\ndata: {data}\n\n".encode()
            )
        await response.write(b'event: end\ndata: {"reason": "node stopping"}\n\n')
        await response.write(b"event: block\ndata: {}\n\n")  # never read
        await response.write_eof()
        return response


class ThreadedServer:
    """Serves an aiohttp app from its own thread, for blocking clients and
    subprocesses (the CLI) as well as async tests."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._runner = web.AppRunner(self.app)
        self.loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        self._ready.set()
        self.loop.run_forever()
        self.loop.run_until_complete(self._runner.cleanup())
        self.loop.close()

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        assert self._ready.wait(10), "test server did not start"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


@pytest.fixture
def fake() -> FakeNode:
    return FakeNode()


@pytest.fixture
def server(fake: FakeNode) -> Iterator[ThreadedServer]:
    with ThreadedServer(fake.app()) as running:
        yield running


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- typed errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequest),
        (404, NotFound),
        (409, Conflict),
        (413, TooLarge),
        (422, Rejected),
        (429, TooManyRequests),
        (503, Unavailable),
        (500, ApiError),
    ],
)
async def test_problem_responses_become_typed_errors(fake, server, status, cls):
    fake.answers["tx"] = lambda seen: problem(status, "some_code", "it went wrong")
    async with AsyncClient(server.url) as api:
        with pytest.raises(cls) as caught:
            await api.tx("00" * 32)
    error = caught.value
    assert isinstance(error, ApiError)
    assert type(error) is cls
    assert (error.status, error.code, error.detail) == (
        status,
        "some_code",
        "it went wrong",
    )
    assert error.body["status"] == status


async def test_unavailable_carries_retry_after(fake, server):
    fake.answers["status"] = lambda seen: problem(
        503, "syncing", "catching up", headers={"Retry-After": "7"}
    )
    async with AsyncClient(server.url) as api:
        with pytest.raises(Unavailable) as caught:
            await api.status()
    assert caught.value.retry_after == 7.0
    assert caught.value.code == "syncing"


async def test_error_without_problem_document(fake, server):
    fake.answers["block"] = lambda seen: web.Response(status=502, text="bad gateway")
    async with AsyncClient(server.url) as api:
        with pytest.raises(ApiError) as caught:
            await api.block(3)
    assert caught.value.status == 502
    assert caught.value.code == "http_502"
    assert caught.value.body == "bad gateway"


async def test_unreachable_node_is_an_oserror():
    url = f"http://127.0.0.1:{closed_port()}"
    async with AsyncClient(url, timeout=2) as api:
        with pytest.raises(NodeUnreachable) as caught:
            await api.status()
    assert isinstance(caught.value, OSError)
    assert caught.value.url.startswith(url)


async def test_slow_node_is_unreachable(fake, server):
    def slow(seen):
        time.sleep(0.5)  # blocks the server's loop: the client must give up
        return web.json_response({})

    fake.answers["status"] = slow
    async with AsyncClient(server.url, timeout=0.2) as api:
        with pytest.raises(NodeUnreachable, match="no answer"):
            await api.status()


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0


def test_bad_base_url():
    with pytest.raises(ValueError):
        AsyncClient("127.0.0.1:8700")


# --- submissions ----------------------------------------------------------------------


async def test_submit_sends_hex_json_and_wait_parameters(fake, server):
    raw = bytes.fromhex("97" + "00" * 8)
    async with AsyncClient(server.url) as api:
        result = await api.submit(raw, wait=True, timeout=2.5)
    assert result["status"] == "committed"
    seen = fake.requests[-1]
    assert seen["raw"] == raw
    assert seen["content_type"] == "application/json"
    assert seen["query"] == {"wait": "true", "timeout": "2.5"}


async def test_submit_batch_sends_msgpack(fake, server):
    raws = [b"\x01\x02", b"\x03"]
    async with AsyncClient(server.url) as api:
        result = await api.submit_batch(raws)
    seen = fake.requests[-1]
    assert seen["content_type"] == "application/msgpack"
    assert seen["raws"] == raws
    assert [r["hash"] for r in result["results"]] == [sha256(r).hex() for r in raws]


async def test_submit_retries_unavailable_with_retry_after(fake, server):
    answers = iter(
        [
            problem(503, "mempool_full", "", headers={"Retry-After": "0"}),
            problem(429, "rate_limited", "", headers={"Retry-After": "0"}),
        ]
    )
    fake.answers["submit"] = lambda seen: next(
        answers, web.json_response({"status": "pending"}, status=202)
    )
    async with AsyncClient(server.url) as api:
        result = await api.submit(b"\x90")
    assert result == {"status": "pending"}
    assert [r["route"] for r in fake.requests] == ["submit"] * 3


async def test_submit_retries_are_bounded(fake, server):
    fake.answers["submit"] = lambda seen: problem(
        503, "mempool_full", "full", headers={"Retry-After": "0"}
    )
    async with AsyncClient(server.url, submit_retries=2) as api:
        with pytest.raises(Unavailable):
            await api.submit(b"\x90")
    assert len(fake.requests) == 3


async def test_submit_without_retry_after_is_not_retried(fake, server):
    fake.answers["submit"] = lambda seen: problem(503, "stopping", "")
    async with AsyncClient(server.url) as api:
        with pytest.raises(Unavailable) as caught:
            await api.submit(b"\x90")
    assert caught.value.retry_after is None
    assert len(fake.requests) == 1


async def test_rejection_is_not_retried(fake, server):
    fake.answers["submit"] = lambda seen: problem(422, "bad_signature", "no")
    async with AsyncClient(server.url) as api:
        with pytest.raises(Rejected) as caught:
            await api.submit(b"\x90")
    assert caught.value.code == "bad_signature"
    assert len(fake.requests) == 1


# --- reads ----------------------------------------------------------------------------


async def test_reads(fake, server):
    address = "perk1example"
    async with AsyncClient(server.url + "/") as api:
        assert (await api.status())["chain_id"] == CHAIN_ID
        assert (await api.block())["height"] == 7
        await api.block(3)
        account = await api.account(address, limit=5, cursor="00ff")
        assert account["balance"] == 42
        assert (await api.merchant(address))["name"] == "Corner Shop"
    routes = [(r["route"], r.get("height"), r.get("query")) for r in fake.requests]
    assert routes[1:4] == [
        ("block", "latest", None),
        ("block", "3", None),
        ("account", None, {"limit": "5", "cursor": "00ff"}),
    ]


async def test_path_arguments_stay_one_segment(fake, server):
    async with AsyncClient(server.url) as api:
        await api.account("a/b?c")
        with pytest.raises(ValueError):
            await api.block(0)
    assert fake.requests[-1]["address"] == "a/b?c"
    assert fake.requests[-1]["query"] == {}


async def test_stream_blocks_until_the_end_event(server):
    async with AsyncClient(server.url) as api:
        events = [event async for event in api.stream_blocks()]
        assert api.stream_end_reason == "node stopping"
    assert events == [{"height": 1, "txs": 0}, {"height": 2, "txs": 0}]


def test_sync_client(fake, server):
    with Client(server.url) as api:
        assert api.status()["height"] == 7
        assert [e["height"] for e in api.stream_blocks()] == [1, 2]
        with pytest.raises(NotFound):
            api.tx(b"\x00" * 32)
        result = api.submit(b"\x91\x01", wait=True)
    assert result["status"] == "committed"
    assert fake.requests[-1]["query"] == {"wait": "true"}


def test_client_depends_on_no_node_code():
    # An app ships client/ alone: it must not pull in the node's packages.
    tree = ast.parse(Path(client.http.__file__).read_text())
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert not imported & {"node", "consensus", "p2p", "state"}
