"""Bad requests to the node's HTTP API: each gets its exact status and problem
code, and none changes the ledger, the mempool or the node's health.

The table covers what clients get wrong (and what attackers send on purpose):
malformed bodies, hostile JSON, forged or stale transactions, bad paths and
parameters. Cases that need more than one request (a replay, a refusal by the
ledger, a full mempool, oversized bodies) have tests of their own below.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import pytest

from client import builders
from state.codec import encode
from state.tx import SIGN_DOMAIN, Kind, build_signed
from tests.node_helpers import (
    C1,
    C2,
    CHAIN,
    MERCHANT,
    NOT_A_MERCHANT,
    Harness,
    Reply,
    running_node,
)

PROBLEM_FIELDS = {"type", "title", "status", "code", "detail"}
MB = 1 << 20


@pytest.fixture
async def api(tmp_path):
    async with running_node(tmp_path) as harness:
        yield harness


def raw_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def state_of(h: Harness) -> tuple[int, str, int]:
    store = h.node.store
    return store.height, store.state_root.hex(), len(h.node.mempool)


def assert_problem(reply: Reply, status: int, code: str) -> dict[str, Any]:
    assert reply.status == status, (reply.status, reply.body[:300])
    assert reply.headers["Content-Type"] == "application/problem+json"
    doc = reply.doc
    assert PROBLEM_FIELDS <= set(doc), doc
    assert (doc["status"], doc["code"]) == (status, code), doc
    assert doc["type"].endswith(":" + code)
    return doc


# --- transactions that are not acceptable -------------------------------------------


def signed(kind: int, payload: list, *, version: int = 1) -> bytes:
    """A transaction signed by MERCHANT with any fields, even invalid ones."""
    body = [version, CHAIN, kind, MERCHANT.public_key, time.time_ns() // 10**9 + 600]
    body.append(payload)
    return encode(body + [MERCHANT.sign(SIGN_DOMAIN + encode(body))])


def award_with_amount(amount: Any) -> bytes:
    return build_signed(
        CHAIN,
        Kind.AWARD_PURCHASE,
        MERCHANT.public_key,
        time.time_ns() // 10**9 + 600,
        [C1.public_key, "order-x", amount],
        MERCHANT.sign,
    )


def bad_signature(h: Harness) -> bytes:
    raw = bytearray(h.award(C1, 1000))
    raw[-1] ^= 0x01  # the last byte of the signature
    return bytes(raw)


def post_bytes(
    body: bytes, path: str = "/v1/transactions", ctype: str = "application/json"
) -> Callable[[Harness], Awaitable[Reply]]:
    """A POST of `body` exactly as given, as `ctype` (JSON by default)."""
    return lambda h: h.call("POST", path, data=body, headers={"Content-Type": ctype})


def tx_post(make: Callable[[Harness], bytes]) -> Callable[[Harness], Awaitable[Reply]]:
    return lambda h: h.submit(make(h))


@dataclass(frozen=True)
class Bad:
    name: str
    status: int
    code: str
    send: Callable[[Harness], Awaitable[Reply]]
    field: str | None = None


NESTED = b"[" * 10_000 + b"]" * 10_000

BAD_REQUESTS = [
    # bodies
    Bad("truncated msgpack", 400, "malformed",
        lambda h: h.submit_msgpack(h.award(C1, 100)[:-5])),
    Bad("msgpack that is not a transaction", 400, "malformed",
        lambda h: h.submit_msgpack(msgpack.packb([1, 2, 3]))),
    Bad("wrong content type", 415, "unsupported_media_type",
        post_bytes(b"{}", ctype="text/plain")),
    Bad("octet-stream", 415, "unsupported_media_type",
        post_bytes(b"\x00", ctype="application/octet-stream")),
    Bad("json in latin-1", 415, "unsupported_media_type",
        post_bytes(b"{}", ctype="application/json; charset=latin-1")),
    Bad("invalid json", 400, "invalid_json", post_bytes(b'{"tx": ')),
    Bad("duplicate json keys", 400, "duplicate_key",
        post_bytes(b'{"tx": "00", "tx": "01"}'), field="tx"),
    Bad("NaN", 400, "invalid_json", post_bytes(b'{"tx": NaN}')),
    Bad("Infinity", 400, "invalid_json", post_bytes(b'{"tx": -Infinity}')),
    Bad("null", 400, "invalid_body", post_bytes(b"null")),
    Bad("empty array", 400, "invalid_body", post_bytes(b"[]")),
    Bad("a string", 400, "invalid_body", post_bytes(b'"x"')),
    Bad("a number", 400, "invalid_body", post_bytes(b"123")),
    Bad("10,000-deep arrays", 400, "too_deep", post_bytes(NESTED)),
    Bad("10,000-deep in a field", 400, "too_deep",
        post_bytes(b'{"tx": ' + NESTED + b"}")),
    Bad("invalid utf-8", 400, "invalid_utf8", post_bytes(b'{"tx": "\xff\xfe"}')),
    Bad("empty json body", 400, "empty_body", post_bytes(b"")),
    Bad("empty msgpack body", 400, "empty_body",
        post_bytes(b"", ctype="application/msgpack")),
    Bad("1 MB hex string", 400, "malformed",
        post_bytes(json.dumps({"tx": "ab" * (MB // 2)}).encode()), field="tx"),
    Bad("not hex", 400, "invalid_hex", post_bytes(b'{"tx": "zz"}'), field="tx"),
    Bad("odd hex", 400, "invalid_hex", post_bytes(b'{"tx": "abc"}'), field="tx"),
    Bad("tx is a number", 400, "invalid_body", post_bytes(b'{"tx": 5}'), field="tx"),
    Bad("missing tx", 400, "invalid_body", post_bytes(b"{}"), field="tx"),
    Bad("unknown field", 400, "unknown_field",
        post_bytes(b'{"tx": "00", "memo": "hi"}'), field="memo"),
    # transactions
    Bad("bad signature", 422, "bad_signature", tx_post(bad_signature)),
    Bad("other chain id", 422, "wrong_chain",
        tx_post(lambda h: h.award(C1, 100, chain_id="perk-other-1"))),
    Bad("expired", 422, "expired",
        tx_post(lambda h: h.award(C1, 100, expires_at=h.exp - 3600))),
    Bad("expiry too far", 422, "expiry_too_far",
        tx_post(lambda h: h.award(C1, 100, expires_at=h.exp + 7200))),
    Bad("amount 2**64 (beyond uint64, sent as a float)", 400, "malformed",
        tx_post(lambda h: award_with_amount(float(2**64)))),
    Bad("amount 0", 422, "amount_out_of_range",
        tx_post(lambda h: award_with_amount(0)), field="amount"),
    Bad("amount 2**64 - 1", 422, "amount_out_of_range",
        tx_post(lambda h: award_with_amount(2**64 - 1)), field="amount"),
    Bad("negative rate", 422, "amount_out_of_range",
        tx_post(lambda h: builders.register_merchant(
            MERCHANT, CHAIN, h.exp, C2.address, "Shop", -1, 10)), field="rate"),
    Bad("unsupported version", 400, "unsupported_version",
        tx_post(lambda h: signed(Kind.TRANSFER, [C1.public_key, 1, ""], version=2))),
    Bad("unknown kind", 400, "unknown_kind",
        tx_post(lambda h: signed(99, [C1.public_key, 1, ""]))),
    Bad("text where a key belongs", 400, "malformed",
        tx_post(lambda h: signed(Kind.TRANSFER, ["someone", 1, ""])), field="to"),
    # batches
    Bad("batch over max_batch", 413, "batch_too_large",
        post_bytes(json.dumps({"txs": ["00"] * 2001}).encode(),
                  "/v1/transactions/batch")),
    Bad("empty batch", 400, "invalid_body",
        post_bytes(b'{"txs": []}', "/v1/transactions/batch")),
    Bad("batch of numbers", 400, "invalid_body",
        post_bytes(b'{"txs": [1, 2]}', "/v1/transactions/batch"), field="txs[0]"),
    Bad("batch not a list", 400, "invalid_body",
        post_bytes(b'{"txs": "00"}', "/v1/transactions/batch"), field="txs"),
    Bad("msgpack batch not an array", 400, "invalid_body",
        post_bytes(msgpack.packb({"a": 1}), "/v1/transactions/batch",
                  "application/msgpack")),
    Bad("msgpack batch of ints", 400, "invalid_body",
        post_bytes(msgpack.packb([1, 2]), "/v1/transactions/batch",
                  "application/msgpack")),
    Bad("msgpack batch with trailing data", 400, "invalid_body",
        post_bytes(msgpack.packb([b"\x00"]) + b"\x00", "/v1/transactions/batch",
                  "application/msgpack")),
    Bad("truncated msgpack batch", 400, "invalid_body",
        post_bytes(msgpack.packb([b"\x00" * 10, b"\x00" * 10])[:-3],
                  "/v1/transactions/batch", "application/msgpack")),
    Bad("msgpack batch over max_batch", 413, "batch_too_large",
        post_bytes(msgpack.packb([b"\x00"] * 2001), "/v1/transactions/batch",
                  "application/msgpack")),
    # routes, paths and parameters
    Bad("unknown route", 404, "not_found", lambda h: h.get("/v1/nothing-here")),
    Bad("unversioned route", 404, "not_found", lambda h: h.get("/status")),
    Bad("wrong method", 405, "method_not_allowed",
        lambda h: h.call("DELETE", "/v1/transactions")),
    Bad("GET on a POST route", 405, "method_not_allowed",
        lambda h: h.get("/v1/transactions")),
    Bad("bad address", 400, "invalid_address", lambda h: h.get("/v1/accounts/bob")),
    Bad("address with a typo", 400, "invalid_address",
        lambda h: h.get("/v1/accounts/" + C1.address[:-1] + "q")),
    Bad("other prefix", 400, "invalid_address",
        lambda h: h.get("/v1/merchants/bc1" + C1.address[5:])),
    Bad("bad address in a stream", 400, "invalid_address",
        lambda h: h.get("/v1/stream/accounts/perk1xyz")),
    Bad("height not a number", 400, "invalid_height",
        lambda h: h.get("/v1/blocks/abc")),
    Bad("height 0", 400, "invalid_height", lambda h: h.get("/v1/blocks/0")),
    Bad("negative height", 400, "invalid_height", lambda h: h.get("/v1/blocks/-1")),
    Bad("height with a sign", 400, "invalid_height", lambda h: h.get("/v1/blocks/+1")),
    Bad("huge height", 400, "invalid_height",
        lambda h: h.get("/v1/blocks/99999999999999999999")),
    Bad("height beyond the tip", 404, "unknown_block", lambda h: h.get("/v1/blocks/7")),
    Bad("no block yet", 404, "unknown_block", lambda h: h.get("/v1/blocks/latest")),
    Bad("bad hash", 400, "invalid_hash", lambda h: h.get("/v1/transactions/abc")),
    Bad("unknown hash", 404, "unknown_transaction",
        lambda h: h.get("/v1/transactions/" + "ab" * 32)),
    Bad("unknown merchant", 404, "unknown_merchant",
        lambda h: h.get("/v1/merchants/" + NOT_A_MERCHANT.address)),
    Bad("unknown query parameter", 400, "invalid_parameter",
        lambda h: h.submit(h.award(C1, 100), "?wiat=true")),
    Bad("repeated query parameter", 400, "invalid_parameter",
        lambda h: h.submit(h.award(C1, 100), "?wait=true&wait=false")),
    Bad("wait=yes", 400, "invalid_parameter",
        lambda h: h.submit(h.award(C1, 100), "?wait=yes")),
    Bad("negative timeout", 400, "invalid_parameter",
        lambda h: h.submit(h.award(C1, 100), "?wait=true&timeout=-1")),
    Bad("timeout nan", 400, "invalid_parameter",
        lambda h: h.submit(h.award(C1, 100), "?wait=true&timeout=nan")),
    Bad("limit over 200", 400, "invalid_parameter",
        lambda h: h.get(f"/v1/accounts/{C1.address}?limit=201")),
    Bad("limit 0", 400, "invalid_parameter",
        lambda h: h.get(f"/v1/accounts/{C1.address}?limit=0")),
    Bad("cursor not hex", 400, "invalid_cursor",
        lambda h: h.get(f"/v1/accounts/{C1.address}?cursor=xyz")),
    Bad("cursor of another account", 400, "invalid_cursor",
        lambda h: h.get(f"/v1/accounts/{C1.address}?cursor="
                        + (b"h" + C2.public_key + bytes(13)).hex())),
    Bad("query on a route without any", 400, "invalid_parameter",
        lambda h: h.get("/v1/status?verbose=1")),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: case.name)
async def test_bad_request(api: Harness, case: Bad, caplog):
    caplog.set_level(logging.INFO, logger="node.api")
    before = state_of(api)

    doc = assert_problem(await case.send(api), case.status, case.code)

    if case.field is not None:
        assert doc.get("field") == case.field, doc
    assert state_of(api) == before
    status = await api.get("/v1/status")
    assert status.status == 200
    assert (status.doc["height"], status.doc["state_root"]) == before[:2]
    # Every refusal is deliberate: none went through the catch-all 500 path.
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# --- refusals that take more than one request ---------------------------------------


async def test_replayed_transaction_is_a_conflict(api: Harness):
    raw = api.award(C1, 100)
    assert (await api.submit(raw)).status == 202
    api.produce_block()
    before = state_of(api)

    for reply in (await api.submit(raw), await api.submit_msgpack(raw)):
        doc = assert_problem(reply, 409, "duplicate_tx")
        assert doc["hash"] == raw_hash(raw)
    assert state_of(api) == before
    assert (await api.get("/v1/status")).status == 200


async def test_resubmitting_pending_bytes_is_idempotent(api: Harness):
    raw = api.award(C1, 100)
    first = await api.submit(raw)
    again = await api.submit_msgpack(raw)
    assert (first.status, again.status) == (202, 202)
    assert first.doc == again.doc == {"hash": first.doc["hash"], "status": "pending"}
    assert len(api.node.mempool) == 1


async def test_award_by_unknown_merchant_is_refused_by_the_ledger(api: Harness):
    raw = api.award(C1, 1000, merchant=NOT_A_MERCHANT)
    root = api.node.store.state_root
    waiting = asyncio.create_task(api.submit(raw, "?wait=true&timeout=5"))
    await api.wait_pending(1)
    api.produce_block()

    doc = assert_problem(await waiting, 422, "unknown_merchant")
    assert (doc["height"], doc["index"]) == (1, 0)
    assert api.node.store.state_root == root  # recorded in a block, changed nothing
    status = await api.get(f"/v1/transactions/{doc['hash']}")
    assert status.doc["status"] == "committed"
    assert status.doc["receipt"]["code"] == "unknown_merchant"


async def test_full_mempool_answers_503_with_retry_after(tmp_path):
    async with running_node(tmp_path, mempool={"max_txs": 2}) as h:
        for amount in (100, 200):
            assert (await h.submit(h.award(C1, amount))).status == 202

        doc = assert_problem(await h.submit(h.award(C1, 300)), 503, "mempool_full")
        assert doc["hash"]
        reply = await h.submit(h.award(C1, 300))
        assert reply.headers["Retry-After"] == "1"

        raws = [h.award(C1, 400).hex(), h.award(C1, 500).hex()]
        batch = await h.call("POST", "/v1/transactions/batch", json_body={"txs": raws})
        assert batch.status == 200
        assert batch.headers["Retry-After"] == "1"
        assert [r["code"] for r in batch.doc["results"]] == ["mempool_full"] * 2
        assert [r["status"] for r in batch.doc["results"]] == [503, 503]
        assert len(h.node.mempool) == 2
        assert (await h.get("/v1/status")).status == 200


async def test_declared_body_over_the_limit_is_refused_unread(api: Harness):
    """50 MB announced, a few bytes sent: 413 at once and the connection closed,
    so the server neither waits for nor drains the rest."""
    for expect in (b"", b"Expect: 100-continue\r\n"):
        reader, writer = await asyncio.open_connection("127.0.0.1", api.node.api_port)
        writer.write(
            b"POST /v1/transactions HTTP/1.1\r\nHost: node\r\n"
            b"Content-Type: application/json\r\nContent-Length: 52428800\r\n"
            + expect
            + b"\r\n"
            + b'{"tx": "' * 100
        )
        await writer.drain()
        started = time.monotonic()
        response = await asyncio.wait_for(reader.read(), 5)  # until the server closes
        assert time.monotonic() - started < 2
        writer.close()

        head, _, body = response.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b"100 Continue" not in head
        problem = json.loads(body)
        assert (problem["code"], problem["limit"]) == ("body_too_large", 4 << 20)
    assert state_of(api)[0] == 0
    assert (await api.get("/v1/status")).status == 200


async def test_streamed_body_over_the_limit_is_refused(tmp_path):
    async with running_node(tmp_path, api={"max_body_bytes": 4096}) as h:

        async def chunks():  # no Content-Length: the limit applies while reading
            for _ in range(10):
                yield b" " * 1024

        async with h.session.post(
            h.url + "/v1/transactions",
            data=chunks(),
            headers={"Content-Type": "application/json"},
        ) as response:
            assert response.status == 413
            assert (await response.json(content_type=None))["code"] == "body_too_large"
        assert (await h.get("/v1/status")).status == 200


async def test_no_route_leaks_a_traceback(api: Harness, caplog, monkeypatch):
    """The catch-all: an unexpected failure is a 500 problem, logged, not shown."""

    def broken() -> dict:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(api.node, "status", broken)
    caplog.set_level(logging.ERROR, logger="node.api")

    reply = await api.get("/v1/status")

    doc = assert_problem(reply, 500, "internal_error")
    assert b"secret" not in reply.body and b"Traceback" not in reply.body
    assert set(doc) == PROBLEM_FIELDS
    errors = [r for r in caplog.records if r.name == "node.api"]
    assert len(errors) == 1 and errors[0].levelno == logging.ERROR
    assert errors[0].exc_info is not None
    assert (await api.get("/healthz")).status == 200
