"""The node's HTTP API end to end: a real node on a real port, driven as an app
would drive it. Coins are awarded, committed, read back, transferred, redeemed
and streamed, with the exact figures the ledger rules give.

Blocks are made by the test (Harness.produce_block) rather than consensus, so
each test decides exactly which transactions share a block.
"""

from __future__ import annotations

import asyncio
import json
import logging

import msgpack
import pytest

from client import builders
from node import api as node_api
from tests.node_helpers import (
    C1,
    C2,
    C3,
    CHAIN,
    MERCHANT,
    RATE,
    VALIDATOR,
    Harness,
    running_node,
)

MSGPACK = "application/msgpack"


@pytest.fixture
async def api(tmp_path):
    async with running_node(tmp_path) as harness:
        yield harness


def coins(amount: int) -> int:
    """Coins earned for a purchase of `amount` minor units at the merchant."""
    return amount * RATE // 100


async def read_event(response, timeout: float = 5.0) -> tuple[str, dict]:
    """The next server-sent event (name, data), skipping comment lines."""
    name, data = None, None
    async with asyncio.timeout(timeout):
        while True:
            line = (await response.content.readline()).decode().rstrip("\n")
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
            elif line == "" and name is not None:
                return name, data


# --- submit, commit, status ----------------------------------------------------------


async def test_submit_json_then_commit_gives_committed_status(api: Harness):
    raw = api.award(C1, 2500)
    reply = await api.submit(raw)
    assert reply.status == 202
    tx_hash = reply.doc["hash"]
    assert reply.doc == {"hash": tx_hash, "status": "pending"}

    pending = await api.get(f"/v1/transactions/{tx_hash}")
    assert pending.status == 200
    assert pending.doc["status"] == "pending"
    assert pending.doc["tx"]["raw"] == raw.hex()

    block = api.produce_block()
    committed = await api.get(f"/v1/transactions/{tx_hash}")

    doc = committed.doc
    assert (doc["status"], doc["height"], doc["index"]) == ("committed", 1, 0)
    assert doc["receipt"] == {
        "code": "ok",
        "code_number": 0,
        "events": [
            {"event": "earn", "account": C1.address, "delta": coins(2500)},
            {"event": "issue", "account": MERCHANT.address, "delta": coins(2500)},
        ],
    }
    tx = doc["tx"]
    assert (tx["hash"], tx["kind"], tx["signer"]) == (
        tx_hash,
        "award_purchase",
        MERCHANT.address,
    )
    assert tx["payload"] == {
        "customer": C1.address,
        "order_id": "order-1",
        "amount": 2500,
    }
    assert tx["chain_id"] == CHAIN
    assert block.height == 1


async def test_submit_msgpack_and_read_msgpack(api: Harness):
    raw = api.award(C1, 1000)
    reply = await api.submit_msgpack(raw)
    assert reply.status == 202
    api.produce_block()

    accept = {"Accept": "application/msgpack"}
    status = await api.get(f"/v1/transactions/{reply.doc['hash']}", headers=accept)
    assert status.headers["Content-Type"] == "application/msgpack"
    assert status.doc["status"] == "committed"
    assert status.doc["tx"]["raw"] == raw.hex()  # the same document, packed
    as_json = await api.get(f"/v1/transactions/{reply.doc['hash']}")
    assert as_json.doc == status.doc
    # JSON stays the default whenever the client prefers it or does not say.
    for header in ("*/*", "application/json, application/msgpack;q=0.5", ""):
        plain = await api.get("/v1/status", headers={"Accept": header})
        assert plain.headers["Content-Type"] == "application/json"


async def test_wait_returns_once_the_block_commits(api: Harness):
    raw = api.award(C1, 4000)
    waiting = asyncio.create_task(api.submit(raw, "?wait=true&timeout=10"))
    await api.wait_pending(1)
    assert not waiting.done()
    api.produce_block()

    reply = await waiting
    assert reply.status == 200
    assert reply.doc["status"] == "committed"
    assert (reply.doc["height"], reply.doc["index"]) == (1, 0)
    assert reply.doc["receipt"]["code"] == "ok"


async def test_wait_times_out_as_pending(api: Harness):
    reply = await api.submit_msgpack(api.award(C1, 4000), "?wait=true&timeout=0.2")
    assert reply.status == 202
    assert reply.doc["status"] == "pending"


async def test_wait_is_capped_by_max_wait(tmp_path):
    async with running_node(tmp_path, api={"max_wait_s": 0.2}) as h:
        started = asyncio.get_running_loop().time()
        reply = await h.submit(h.award(C1, 100), "?wait=true&timeout=60")
        assert reply.status == 202
        assert asyncio.get_running_loop().time() - started < 5


# --- accounts, merchants, blocks, validators -----------------------------------------


async def test_balances_lots_and_history_pages(api: Harness):
    amounts = [1000, 2000, 3000, 4000, 5000, 6000, 7000]
    for start in (0, 3, 5):  # three blocks: 3 + 2 + 2 awards
        for amount in amounts[start : start + (3 if start == 0 else 2)]:
            assert (await api.submit(api.award(C1, amount))).status == 202
        api.produce_block()
    transfer = builders.transfer(C1, CHAIN, api.exp, C2.address, 250, "lunch")
    assert (await api.submit(transfer)).status == 202
    api.produce_block()

    earned = sum(coins(a) for a in amounts)
    doc = (await api.get(f"/v1/accounts/{C1.address}")).doc
    assert doc["balance"] == earned - 250
    assert (doc["frozen"], doc["debt"], doc["address"]) == (False, 0, C1.address)
    assert doc["lots"] == [
        {
            "amount": earned - 250,
            "expires_at": 0,
            "issuer": MERCHANT.address,
            "earned_at": doc["lots"][0]["earned_at"],
            "live": True,
        }
    ]
    assert doc["as_of"] == api.node.store.time_ms // 1000
    receiver = (await api.get(f"/v1/accounts/{C2.address}")).doc
    assert receiver["balance"] == 250
    assert receiver["history"][0]["event"] == "transfer_in"
    nobody = (await api.get(f"/v1/accounts/{C3.address}")).doc
    assert (nobody["balance"], nobody["lots"], nobody["history"]) == (0, [], [])
    assert nobody["next_cursor"] is None

    # All eight events, newest first, walked in pages of three.
    full = doc["history"]
    assert [(e["height"], e["event"], e["delta"]) for e in full] == [
        (4, "transfer_out", -250),
        (3, "earn", coins(7000)),
        (3, "earn", coins(6000)),
        (2, "earn", coins(5000)),
        (2, "earn", coins(4000)),
        (1, "earn", coins(3000)),
        (1, "earn", coins(2000)),
        (1, "earn", coins(1000)),
    ]
    assert doc["next_cursor"] is None
    pages, cursor = [], None
    while True:
        query = "?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = (await api.get(f"/v1/accounts/{C1.address}{query}")).doc
        pages.append(page["history"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [e for p in pages for e in p] == full
    exact = (await api.get(f"/v1/accounts/{C1.address}?limit=8")).doc
    assert exact["next_cursor"] is None  # no cursor to an empty page


async def test_merchant_counters(api: Harness):
    for amount in (10_000, 5_000):
        await api.submit(api.award(C1, amount))
    api.produce_block()
    redeem = builders.redeem(C1, CHAIN, api.exp, MERCHANT.address, 300, "coffee")
    await api.submit(redeem)
    api.produce_block()

    doc = (await api.get(f"/v1/merchants/{MERCHANT.address}")).doc
    issued = coins(10_000) + coins(5_000)
    assert doc["address"] == MERCHANT.address
    assert (doc["name"], doc["rate"], doc["daily_cap"], doc["active"]) == (
        "Corner Café",
        RATE,
        10**12,
        True,
    )
    assert (doc["issued"], doc["redeemed"]) == (issued, 300)
    assert doc["issued_on_day"] == doc["issued_today"] == issued
    assert doc["day"] == doc["today"] == api.node.store.time_ms // 1000 // 86_400
    assert (await api.get(f"/v1/accounts/{C1.address}")).doc["balance"] == issued - 300


async def test_blocks_latest_and_by_height(api: Harness):
    first = api.award(C1, 1000)
    await api.submit(first)
    one = api.produce_block()
    await api.submit(api.award(C2, 2000))
    await api.submit(api.award(C3, 3000))
    two = api.produce_block()

    latest = (await api.get("/v1/blocks/latest")).doc
    assert latest == (await api.get("/v1/blocks/2")).doc
    assert (latest["height"], latest["hash"], latest["tx_count"]) == (
        2,
        two.hash.hex(),
        2,
    )
    header = latest["header"]
    assert header["parent_hash"] == one.hash.hex()
    assert header["proposer"] == VALIDATOR.address
    assert header["state_root"] == api.node.store.state_root.hex()
    assert header["time_ms"] == two.header.time_ms
    assert [t["index"] for t in latest["txs"]] == [0, 1]
    assert [t["payload"]["customer"] for t in latest["txs"]] == [C2.address, C3.address]
    assert all(t["receipt"]["code"] == "ok" for t in latest["txs"])
    assert latest["commit"] == ""  # the tests commit with an empty certificate

    block_one = (await api.get("/v1/blocks/1")).doc
    assert block_one["txs"][0]["raw"] == first.hex()
    assert block_one["header"]["height"] == 1
    assert (await api.get("/v1/blocks/3")).status == 404

    # The raw form: the stored bytes, hex in JSON and bin in msgpack.
    stored = api.node.store
    raw_json = (await api.get("/v1/blocks/2/raw")).doc
    packed = await api.get("/v1/blocks/2/raw", headers={"Accept": MSGPACK})
    assert packed.headers["Content-Type"].startswith(MSGPACK)
    for doc, as_bytes in ((raw_json, bytes.fromhex), (packed.doc, bytes)):
        assert doc["height"] == 2
        assert as_bytes(doc["block"]) == stored.block_bytes(2)
        assert as_bytes(doc["receipts"]) == stored.receipts_bytes(2)
        assert as_bytes(doc["commit"]) == b""


async def test_validators_health_readiness_and_metrics(api: Harness):
    validators = (await api.get("/v1/validators")).doc
    assert validators["validators"] == [{"name": "v1", "address": VALIDATOR.address}]
    assert validators["validators_hash"] == api.node.store.validators_hash.hex()
    assert (await api.get("/healthz")).doc == {"status": "ok"}
    assert (await api.get("/readyz")).doc == {"status": "ready", "height": 0}

    api.node.started = False  # as while starting or stopping
    not_ready = await api.get("/readyz")
    assert (not_ready.status, not_ready.doc["code"]) == (503, "not_ready")
    api.node.started = True

    await api.get("/v1/blocks/abc")
    metrics = await api.get("/metrics")
    assert metrics.headers["Content-Type"].startswith("text/plain")
    text = metrics.body.decode()
    assert (
        'perk_http_request_seconds_count{method="GET",route="/v1/blocks/{height}",'
        'status="400"} 1.0'
    ) in text
    assert 'route="/readyz",status="503"' in text


async def test_head_answers_like_get_without_a_body(api: Harness):
    for path in ("/healthz", "/readyz", "/v1/status", "/metrics", "/v1/blocks/1"):
        got, head = await api.get(path), await api.call("HEAD", path)
        assert head.status == got.status, path
        assert head.body == b"", path
        assert head.headers["Content-Type"] == got.headers["Content-Type"], path
    # A stream would never end for HEAD; it is not offered.
    stream = await api.call("HEAD", "/v1/stream/blocks")
    assert (stream.status, stream.headers["Allow"]) == (405, "GET")


# --- batches -------------------------------------------------------------------------


async def test_batch_of_500_in_msgpack(api: Harness):
    raws = [api.award(C1 if i % 2 else C2, 100 + i) for i in range(500)]
    reply = await api.call(
        "POST",
        "/v1/transactions/batch",
        data=msgpack.packb(raws),
        headers={
            "Content-Type": "application/msgpack",
            "Accept": "application/msgpack",
        },
    )
    assert reply.status == 200
    assert reply.doc["accepted"] == 500
    assert [r["status"] for r in reply.doc["results"]] == ["pending"] * 500
    assert len(api.node.mempool) == 500

    api.produce_block()
    latest = (await api.get("/v1/blocks/latest")).doc
    assert latest["tx_count"] == 500
    assert [t["hash"] for t in latest["txs"]] == [
        r["hash"] for r in reply.doc["results"]
    ]
    balance = (await api.get(f"/v1/accounts/{C1.address}")).doc["balance"]
    assert balance == sum(coins(100 + i) for i in range(1, 500, 2))


async def test_batch_results_keep_order_and_refuse_one_by_one(api: Harness):
    good, committed = api.award(C1, 100), api.award(C2, 100)
    await api.submit(committed)
    api.produce_block()
    expired = api.award(C1, 100, expires_at=api.exp - 3600)
    txs = [good.hex(), "zz", committed.hex(), expired.hex(), good.hex()]

    reply = await api.call("POST", "/v1/transactions/batch", json_body={"txs": txs})

    assert reply.status == 200
    results = reply.doc["results"]
    assert reply.doc["accepted"] == 2
    assert results[0] == results[4] == {"hash": results[0]["hash"], "status": "pending"}
    assert [(r["status"], r["code"]) for r in results[1:4]] == [
        (400, "invalid_hex"),
        (409, "duplicate_tx"),
        (422, "expired"),
    ]
    assert results[1]["field"] == "txs[1]"


async def test_every_refusal_that_names_a_hash_can_be_looked_up(api: Harness):
    other_chain = api.award(C1, 100, chain_id="perk-other-1")
    truncated = api.award(C1, 100)[:-5]
    expired = api.award(C1, 100, expires_at=api.exp - 3600)
    txs = [other_chain.hex(), truncated.hex(), expired.hex()]

    reply = await api.call("POST", "/v1/transactions/batch", json_body={"txs": txs})

    results = reply.doc["results"]
    assert [r["code"] for r in results] == ["wrong_chain", "malformed", "expired"]
    for result in results:
        looked_up = await api.get(f"/v1/transactions/{result['hash']}")
        assert looked_up.status == 200, result
        assert (looked_up.doc["status"], looked_up.doc["code"]) == (
            "rejected",
            result["code"],
        )


async def test_batch_limit_follows_config(tmp_path):
    async with running_node(tmp_path, api={"max_batch": 3}) as h:
        txs = [h.award(C1, 100 + i).hex() for i in range(4)]
        over = await h.call("POST", "/v1/transactions/batch", json_body={"txs": txs})
        assert (over.status, over.doc["code"], over.doc["limit"]) == (
            413,
            "batch_too_large",
            3,
        )
        fits = await h.call(
            "POST", "/v1/transactions/batch", json_body={"txs": txs[:3]}
        )
        assert fits.status == 200 and fits.doc["accepted"] == 3


# --- streams -------------------------------------------------------------------------


async def test_block_stream_receives_committed_blocks(api: Harness):
    async with api.session.get(api.url + "/v1/stream/blocks") as stream:
        assert stream.status == 200
        assert stream.headers["Content-Type"] == "text/event-stream"
        await api.submit(api.award(C1, 1000))
        await api.submit(api.award(C2, 1000))
        block = api.produce_block()

        assert await read_event(stream) == (
            "block",
            {
                "height": 1,
                "hash": block.hash.hex(),
                "time_ms": block.header.time_ms,
                "txs": 2,
            },
        )
        api.produce_block()
        name, data = await read_event(stream)
        assert (name, data["height"], data["txs"]) == ("block", 2, 0)


async def test_account_stream_receives_its_events_only(api: Harness):
    async with api.session.get(f"{api.url}/v1/stream/accounts/{C1.address}") as stream:
        await api.submit(api.award(C2, 5000))  # someone else's
        api.produce_block()
        award = await api.submit(api.award(C1, 3000))
        api.produce_block()

        name, data = await read_event(stream)
        assert name == "account"
        assert (data["height"], data["index"], data["hash"]) == (
            2,
            0,
            award.doc["hash"],
        )
        assert (data["event"], data["delta"]) == ("earn", coins(3000))


async def test_stream_heartbeats_and_ends_when_client_leaves(api: Harness, monkeypatch):
    monkeypatch.setattr(node_api, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(node_api, "DISCONNECT_POLL_S", 0.05)
    streams = api.node.api_runner.app[node_api.STREAMS]
    async with api.session.get(api.url + "/v1/stream/blocks") as stream:
        assert await stream.content.readline() == b": stream open\n"
        assert await stream.content.readline() == b"\n"
        assert await stream.content.readline() == b": heartbeat\n"
        assert len(streams) == 1
    async with asyncio.timeout(5):
        while streams:  # noticed at the next poll, without any event to send
            await asyncio.sleep(0.02)


async def test_stop_ends_streams_and_waits_promptly(tmp_path):
    async with running_node(tmp_path) as h:
        stream = await h.session.get(h.url + "/v1/stream/blocks")
        waiting = asyncio.create_task(h.submit(h.award(C1, 100), "?wait=true"))
        await h.wait_pending(1)
        started = asyncio.get_running_loop().time()

        await h.node.stop()

        assert asyncio.get_running_loop().time() - started < 5
        assert await read_event(stream) == ("end", {"reason": "node stopping"})
        reply = await waiting
        assert (reply.status, reply.doc["status"]) == (202, "pending")
        stream.close()


# --- cross-cutting: CORS, per-client limit ------------------------------------------


async def test_cors_only_for_configured_origins(tmp_path):
    origin = "https://wallet.example"
    async with running_node(tmp_path, api={"cors_origins": [origin]}) as h:
        allowed = await h.get("/v1/status", headers={"Origin": origin})
        assert allowed.headers["Access-Control-Allow-Origin"] == origin
        other = await h.get("/v1/status", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers
        problem = await h.get("/v1/blocks/0", headers={"Origin": origin})
        assert problem.headers["Access-Control-Allow-Origin"] == origin

        preflight = {"Origin": origin, "Access-Control-Request-Method": "POST"}
        ok = await h.call("OPTIONS", "/v1/transactions", headers=preflight)
        assert ok.status == 204
        assert ok.headers["Access-Control-Allow-Methods"] == "POST"
        assert ok.headers["Access-Control-Allow-Origin"] == origin
        preflight["Origin"] = "https://evil.example"
        refused = await h.call("OPTIONS", "/v1/transactions", headers=preflight)
        assert (refused.status, refused.doc["code"]) == (403, "origin_not_allowed")


async def test_no_cors_headers_unless_configured(api: Harness):
    reply = await api.get("/v1/status", headers={"Origin": "https://wallet.example"})
    assert "Access-Control-Allow-Origin" not in reply.headers


async def test_requests_in_flight_per_client_are_limited(api: Harness, monkeypatch):
    monkeypatch.setattr(node_api, "MAX_IN_FLIGHT_PER_CLIENT", 2)
    monkeypatch.setattr(node_api, "DISCONNECT_POLL_S", 0.05)
    in_flight = api.node.api_runner.app[node_api.IN_FLIGHT]
    streams = [await api.session.get(api.url + "/v1/stream/blocks") for _ in range(2)]

    over = await api.get("/v1/status")
    assert (over.status, over.doc["code"]) == (429, "too_many_requests")
    assert over.headers["Retry-After"] == "1"

    for stream in streams:
        stream.close()
    async with asyncio.timeout(5):
        while in_flight:
            await asyncio.sleep(0.02)
    assert (await api.get("/v1/status")).status == 200


async def test_request_logs_are_structured(api: Harness, caplog):
    caplog.set_level(logging.DEBUG, logger="node.api")
    await api.get("/v1/blocks/abc")
    [record] = [r for r in caplog.records if r.name == "node.api"]
    assert record.getMessage() == (
        "request refused method=GET route=/v1/blocks/{height} status=400 "
        "code=invalid_height"
    )
