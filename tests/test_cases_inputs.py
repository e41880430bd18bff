"""Failure cases C08, C12, C14, C15 and C16: inputs a client gets wrong,
forges, or sends to overwhelm a node.

C08, chain id look-alikes: a transaction signed for another chain, or for an
id that differs from ours only by case, a trailing space, a suffix digit or a
look-alike Unicode letter, is refused as `wrong_chain` (an id with invisible
characters as `malformed`, naming `chain_id`), alone or in a batch; the
mempool, height and state root stay as they were and the next block is empty.

C14, amount edge values (-1, 0, 2^63, 2^64, 2^64+1, 1.5, "100", 1e3, null,
true) in an award, a redemption and a transfer: each is refused with a
problem naming the field `amount`; no block includes any of them; nothing at
ERROR and no traceback is logged.

C15, bodies that are not what they claim (null, [null], [], {}, "x", 123,
truncated JSON, invalid UTF-8, duplicate keys, arrays nested 10,000 deep, a
1 MB transaction, a wrong content type, an empty body) on both submission
routes, and malformed transaction ids up to 1 MB on the lookup: each gets a
4xx problem document, and /v1/status answers 200 with the unchanged height
after each one.

These three run against an in-process node (tests.node_helpers), where the
ledger and the logs can be read directly. The next two measure what an
attack costs a node process of a cluster (tests.harness.cluster):

C12 `mempool_flood`, shortened (the case: 20,000 transactions with 500 KB
memos and 100,000 minimal ones): 10 accounts send FLOOD_OVERSIZED oversized
and FLOOD_MINIMAL minimal transfers through the four validators' APIs while
another user buys steadily. Each oversized one gets 400 or 413; the mempool
bytes /metrics reports stay under the cap and return to 0; each validator's
memory grows by less than a bound per pooled transaction; the other user's
awards are final within STEADY_FINAL_S throughout; every account's balance
is what its admitted transfers make it, on every node.

C16 `huge_bodies`: 50 MB with a length, 50 MB chunked, 10 GB declared with a
slow body, 100 parallel 5 MB bodies: each refused (413; or 429 / 503 before
its body is read, past the per-client or node-wide limits) within a second
of passing the limit, memory grows under 30 MB, /v1/status answers within a
second throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import socket
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import msgpack
import pytest

from client.http import ApiError as HttpApiError
from client.http import Client, NodeUnreachable
from client.keys import Keypair
from node import api_middleware
from state.tx import Kind, build_signed
from tests.cases_support import MemoryWatch, StatusLatency
from tests.harness.cluster import MERCHANT_RATE, launched_cluster
from tests.node_helpers import C1, C2, CHAIN, MERCHANT, Harness, Reply, running_node

log = logging.getLogger("tests.network")

PROBLEM_TYPE = "application/problem+json"
MB = 1 << 20
HUGE_BODY = 50 * MB
PARALLEL_UPLOADS = 100
PARALLEL_BODY = 5 * MB


@pytest.fixture
async def api(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    async with running_node(tmp_path) as harness:
        yield harness


def ledger_state(h: Harness) -> tuple[int, str, int]:
    store = h.node.store
    return store.height, store.state_root.hex(), len(h.node.mempool)


def assert_problem(reply: Reply, status: int | None, code: str | None) -> dict:
    """A problem document; `status`/`code` None accept any 4xx / any code."""
    assert reply.headers.get("Content-Type") == PROBLEM_TYPE, (
        reply.status,
        reply.headers.get("Content-Type"),
        reply.body[:200],
    )
    if status is None:
        assert 400 <= reply.status < 500, (reply.status, reply.body[:200])
    else:
        assert reply.status == status, (reply.status, reply.body[:200])
    if code is not None:
        assert reply.doc["code"] == code, reply.doc
    assert reply.doc["status"] == reply.status
    return reply.doc


def assert_no_trouble_logged(caplog) -> None:
    """Refusals are deliberate: nothing went through an error path."""
    trouble = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info is not None
    ]
    assert not trouble, trouble[:3]
    assert "Traceback" not in caplog.text


def expiry() -> int:
    return time.time_ns() // 10**9 + 600


# --- C08: chain id look-alikes -----------------------------------------------------

LOOK_ALIKES = [
    "perk-staging-1",  # another chain of the same operator
    CHAIN.upper(),
    CHAIN[0].upper() + CHAIN[1:],
    CHAIN + " ",
    " " + CHAIN,
    CHAIN + "0",
    CHAIN[:-1] + "2",
    CHAIN.replace("e", "\u0435"),  # Cyrillic small ie
    CHAIN.replace("p", "\u0440", 1),  # Cyrillic small er
    "\uff50" + CHAIN[1:],  # fullwidth p
]
# Invisible characters are not even a well-formed chain id: refused as
# malformed, naming the field, before the chain is compared.
INVISIBLE = [CHAIN + "\u200b", "\u2060" + CHAIN, CHAIN.replace("-", "\u00ad", 1)]


@pytest.mark.parametrize(
    "chain_id",
    [*LOOK_ALIKES, *INVISIBLE],
    ids=ascii,
)
async def test_c08_chain_id_look_alike_is_refused_as_wrong_chain(
    api: Harness, chain_id: str, caplog
):
    code = "malformed" if chain_id in INVISIBLE else "wrong_chain"
    status = 400 if chain_id in INVISIBLE else 422
    before = ledger_state(api)
    # Signed as the merchant's own software would, without the client
    # library's checks of the chain id's characters.
    raw = build_signed(
        chain_id, Kind.AWARD_PURCHASE, MERCHANT.public_key, expiry(),
        [C1.public_key, "order-c08", 1000], MERCHANT.sign,
    )  # fmt: skip

    for reply in (await api.submit(raw), await api.submit_msgpack(raw)):
        doc = assert_problem(reply, status, code)
        if code == "malformed":
            assert doc["field"] == "chain_id", doc
    batch = await api.call(
        "POST", "/v1/transactions/batch", json_body={"txs": [raw.hex()]}
    )
    assert batch.status == 200, batch.body[:200]
    assert [r["code"] for r in batch.doc["results"]] == [code]

    assert ledger_state(api) == before
    assert not api.produce_block().txs
    assert (await api.get(f"/v1/accounts/{C1.address}")).doc["balance"] == 0
    assert_no_trouble_logged(caplog)


async def test_c08_the_real_chain_id_is_accepted(api: Harness):
    """The control for the look-alikes: the same award for our chain commits."""
    reply = await api.submit(api.award(C1, 1000))
    assert reply.status == 202, reply.body[:200]
    assert len(api.produce_block().txs) == 1
    assert (await api.get(f"/v1/accounts/{C1.address}")).doc["balance"] == 100


# --- C14: amount edge values ----------------------------------------------------------


class Text(str):
    """An amount a client sent as text ("100" or a number too big for msgpack)."""


EDGE_AMOUNTS: list[tuple[str, Any]] = [
    ("-1", -1),
    ("0", 0),
    ("2^63", 2**63),
    # msgpack integers stop at 2^64 - 1: beyond, a client can only send a
    # float or text, and each must be refused as not an integer.
    ("2^64 as float", float(2**64)),
    ("2^64 as text", Text(str(2**64))),
    ("2^64+1 as text", Text(str(2**64 + 1))),
    ("1.5", 1.5),
    ('"100"', Text("100")),
    ("1e3", 1e3),
    ("null", None),
    ("true", True),
]

# (kind, the payload around an amount) for the three kinds that move coins.
AMOUNT_PAYLOADS = {
    "award": (Kind.AWARD_PURCHASE, lambda a: [C1.public_key, "order-c14", a]),
    "redeem": (Kind.REDEEM, lambda a: [MERCHANT.public_key, a, "c14"]),
    "transfer": (Kind.TRANSFER, lambda a: [C2.public_key, a, "c14"]),
}


def with_amount(kind_name: str, amount: Any) -> bytes:
    kind, payload = AMOUNT_PAYLOADS[kind_name]
    signer = MERCHANT if kind == Kind.AWARD_PURCHASE else C1
    value = str(amount) if isinstance(amount, Text) else amount
    return build_signed(
        CHAIN, kind, signer.public_key, expiry(), payload(value), signer.sign
    )


@pytest.mark.parametrize("kind_name", list(AMOUNT_PAYLOADS))
async def test_c14_amount_edge_values_are_refused_with_a_field_error(
    api: Harness, kind_name: str, caplog
):
    # C1 holds coins, so a redemption or transfer is refused for its amount,
    # not for an empty balance.
    assert (await api.submit(api.award(C1, 10_000))).status == 202
    api.produce_block()
    before = ledger_state(api)

    refused = {}
    for label, amount in EDGE_AMOUNTS:
        raw = with_amount(kind_name, amount)
        for reply in (await api.submit(raw), await api.submit_msgpack(raw)):
            doc = assert_problem(reply, None, None)
            assert doc["code"] in ("amount_out_of_range", "malformed"), (label, doc)
            assert doc.get("field") == "amount", (label, doc)
        refused[label] = doc["code"]

    assert ledger_state(api) == before
    block = api.produce_block()
    assert not block.txs, f"a block included {len(block.txs)} of them"
    assert (await api.get(f"/v1/accounts/{C1.address}")).doc["balance"] == 1000
    assert_no_trouble_logged(caplog)
    # In range but the wrong type is a form error; an integer out of range is
    # a range error.
    assert refused["0"] == refused["-1"] == refused["2^63"] == "amount_out_of_range"
    assert refused["1.5"] == refused["null"] == refused["true"] == "malformed"


# --- C15: bodies that are not what they claim -----------------------------------------


@dataclass(frozen=True)
class Body:
    name: str
    data: bytes
    content_type: str = "application/json"


NESTED = b"[" * 10_000 + b"]" * 10_000
BODIES = [
    Body("null", b"null"),
    Body("[null]", b"[null]"),
    Body("[]", b"[]"),
    Body("{}", b"{}"),
    Body('"x"', b'"x"'),
    Body("123", b"123"),
    Body("truncated json", b'{"tx": "00'),
    Body("invalid utf-8", b'{"tx": "\xc3\x28"}'),
    Body("invalid utf-8 outside strings", b'{"tx"\xff: "00"}'),
    Body("duplicate keys", b'{"tx": "00", "tx": "00"}'),
    Body("10,000-deep arrays", NESTED),
    Body("10,000-deep objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000),
    Body("1 MB transaction", json.dumps({"tx": "ab" * (MB // 2)}).encode()),
    Body("wrong content type", b'{"tx": "00"}', "text/plain"),
    Body("form content type", b"tx=00", "application/x-www-form-urlencoded"),
    Body("no content type", b'{"tx": "00"}', ""),
    Body("empty body", b""),
]
ROUTES = ["/v1/transactions", "/v1/transactions/batch"]


@pytest.mark.parametrize("route", ROUTES)
async def test_c15_malformed_bodies_get_a_problem_and_status_stays_up(
    api: Harness, route: str, caplog
):
    before = ledger_state(api)
    for body in BODIES:
        headers = {"Content-Type": body.content_type} if body.content_type else {}
        reply = await api.call("POST", route, data=body.data, headers=headers)
        assert_problem(reply, None, None)

        status = await api.get("/v1/status")
        assert status.status == 200, (body.name, status.status)
        assert status.doc["height"] == before[0]
    assert ledger_state(api) == before
    assert_no_trouble_logged(caplog)


@pytest.mark.parametrize(
    "tx_id",
    [
        "ab" * (MB // 2),  # 1 MB: longer than any request line the server reads
        "ab" * 4000,  # fits in a request line, far longer than a hash
        "zz" * 32,
        "%00" * 32,
        "%ff" * 32,
    ],
    ids=["1 MB", "8 KB", "not hex", "NUL bytes", "invalid utf-8"],
)
async def test_c15_a_malformed_transaction_id_gets_a_problem(
    api: Harness, tx_id: str, caplog
):
    reply = await api.get(f"/v1/transactions/{tx_id}")
    assert_problem(reply, None, None)
    status = await api.get("/v1/status")
    assert status.status == 200
    assert_no_trouble_logged(caplog)


# --- on a network of node processes -------------------------------------------------
#
# C12 and C16 measure what an attack costs a node, so the node runs in a
# process of its own (tests.harness.cluster) whose memory the test can read.
# The attacking connections come from 127.0.0.2, as from another host: the
# API counts requests in flight per client address, and the operator's status
# checks (from 127.0.0.1) must not be held up by the attacker's share.

ATTACKER_ADDR = "127.0.0.2"
MAX_BODY = 4 * MB  # the node's default api.max_body_bytes
CHUNK = 64 * 1024
SEND_BUFFER = 64 * 1024


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("cases-inputs") / "devnet"
    with launched_cluster(root, request) as running:
        yield running


@dataclass
class Upload:
    """What one oversized upload saw: the answer and when it came."""

    status: int | None = None
    doc: dict | None = None
    sent: int = 0
    passed_limit_at: float | None = None
    answered_at: float | None = None
    error: str = ""

    @property
    def delay_after_limit(self) -> float:
        """Seconds from the body passing the limit (or from the request, if
        the declared length did) to the answer."""
        return self.answered_at - (self.passed_limit_at or self.answered_at)


async def upload(
    port: int,
    size: int,
    *,
    declared: int | None,
    pause_s: float = 0.0,
    chunk: bytes = b"0" * CHUNK,
) -> Upload:
    """POST `size` bytes of a JSON body to /v1/transactions, with the length
    `declared` (None: chunked, no length) and `pause_s` between chunks;
    stops sending as soon as the node starts to answer, as HTTP clients do."""
    loop = asyncio.get_running_loop()
    seen = Upload()
    # A small send buffer, so that what counts as sent has mostly reached
    # the node, not a queue in our own kernel.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
    sock.bind((ATTACKER_ADDR, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    length = (
        f"Content-Length: {declared}\r\n"
        if declared is not None
        else "Transfer-Encoding: chunked\r\n"
    )
    head = (
        "POST /v1/transactions HTTP/1.1\r\nHost: node\r\n"
        f"Content-Type: application/json\r\n{length}\r\n"
    ).encode()

    async def read_answer() -> None:
        # The node closes after a refusal, perhaps with a reset (our unread
        # body in its socket): keep whatever came before.
        response = b""
        with contextlib.suppress(ConnectionError):
            while piece := await reader.read(65536):
                if not response:
                    seen.answered_at = loop.time()
                response += piece
        seen.answered_at = seen.answered_at or loop.time()
        head, _, body = response.partition(b"\r\n\r\n")
        if head:
            seen.status = int(head.split()[1])
            with contextlib.suppress(ValueError):
                seen.doc = json.loads(body)

    answer = asyncio.create_task(read_answer())
    if declared is not None and declared > MAX_BODY:
        seen.passed_limit_at = loop.time()
    try:
        await send_body(writer, head, seen, size, declared, pause_s, chunk)
        await asyncio.wait_for(answer, 10)
    finally:
        answer.cancel()
        writer.transport.abort()
    return seen


async def send_body(writer, head, seen, size, declared, pause_s, chunk) -> None:
    loop = asyncio.get_running_loop()
    try:
        writer.write(head)
        while seen.sent < size and seen.answered_at is None:
            piece = chunk[: size - seen.sent]
            framed = (
                piece if declared is not None else b"%x\r\n%s\r\n" % (len(piece), piece)
            )
            writer.write(framed)
            await writer.drain()
            seen.sent += len(piece)
            if seen.passed_limit_at is None and seen.sent > MAX_BODY:
                seen.passed_limit_at = loop.time()
            if pause_s:
                await asyncio.sleep(pause_s)
        if declared is None and seen.answered_at is None:
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (ConnectionError, OSError) as exc:
        seen.error = type(exc).__name__  # cut off: the answer says why


def assert_refused_in_time(seen: Upload, what: str, allowed=(413,)) -> None:
    assert seen.status in allowed, f"{what}: {seen}"
    if seen.status == 413:
        assert seen.doc["code"] == "body_too_large", f"{what}: {seen.doc}"
    assert seen.delay_after_limit < 1.0, (
        f"{what}: answered {seen.delay_after_limit:.2f}s after passing the limit"
    )


def huge_bodies(
    cluster,
    name: str = "v1",
    big: int = HUGE_BODY,
    parallel: int = PARALLEL_UPLOADS,
    each: int = PARALLEL_BODY,
) -> None:
    """C16 against one node of a running cluster: `big` bytes with a length
    and chunked without one, 10 GB declared with a slow body, `parallel`
    bodies of `each` bytes at once (half chunked). Checks what the case
    asserts; a soak calls it with other sizes."""
    node = cluster.nodes[name]
    port = node.plan.api_port
    height = cluster.height(name)

    async def attack() -> dict[str, list[Upload]]:
        return {
            "huge with a length": [await upload(port, big, declared=big)],
            "huge chunked": [await upload(port, big, declared=None)],
            "10 GB declared, slow body": [
                await upload(
                    port,
                    3 * CHUNK,
                    declared=10 << 30,
                    pause_s=0.3,
                    chunk=b"0" * 1024,
                )
            ],  # fmt: skip
            "parallel bodies": await asyncio.gather(
                *(
                    upload(port, each, declared=each if i % 2 else None)
                    for i in range(parallel)
                )
            ),
        }

    with StatusLatency(node.api_url) as status, MemoryWatch(node.process.pid) as mem:
        results = asyncio.run(attack())

    for what, uploads in results.items():
        for seen in uploads:
            # Past the per-client limit of requests in flight (429) or the
            # node-wide budget for bodies (503), a request is refused before
            # its body is read, which is as good.
            assert_refused_in_time(seen, what, allowed=(413, 429, 503))
    log.info("%s under huge bodies: %s", name, mem.describe())
    assert mem.growth < 30 * MB, mem.describe()
    assert not status.failures, status.failures[:3]
    assert status.slowest < 1.0, f"status took {status.slowest:.2f}s"
    cluster.wait_for_height(cluster.members, height + 2)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_c16_huge_bodies_are_refused_fast_at_bounded_memory(cluster):
    huge_bodies(cluster)
    assert_no_traceback(cluster)


async def test_c16_bodies_held_at_once_are_bounded_node_wide(tmp_path, monkeypatch):
    """Chunked uploads that stall under the per-request limit hold their share
    of the node-wide budget (BODIES_IN_FLIGHT times the limit); one more is
    refused at once with 503 and Retry-After; the stalled ones are dropped
    when their bodies are overdue, and the budget is free again."""
    monkeypatch.setattr(api_middleware, "BODY_READ_S", 1.5)
    async with running_node(tmp_path, api={"max_body_bytes": 4096}) as h:
        port = h.node.api_port
        stalled = [
            asyncio.create_task(
                upload(port, 2048, declared=None, pause_s=3.0, chunk=b" " * 1024)
            )
            for _ in range(api_middleware.BODIES_IN_FLIGHT)
        ]
        await asyncio.sleep(0.5)

        busy = await upload(port, 1024, declared=None)
        assert busy.status == 503, busy
        assert busy.doc["code"] == "server_busy"
        status = await h.get("/v1/status")
        assert status.status == 200

        # The tricklers are dropped once their bodies are overdue, and their
        # shares of the budget are free again.
        for seen in await asyncio.gather(*stalled):
            assert seen.status is None and seen.answered_at is not None, seen
        reply = await h.submit(h.award(C1, 100))
        assert reply.status == 202, reply.body[:200]
        assert budget_of(h).used == 0


async def test_c16_a_body_once_read_holds_only_its_size(tmp_path):
    """A chunked submission reserves the whole limit until its body is in, then
    only the body's size, however long it then waits for finality; a request
    whose body the API never reads (a stream) holds nothing."""
    async with running_node(tmp_path) as h:
        budget = budget_of(h)
        waiting = asyncio.create_task(
            h.call(
                "POST",
                "/v1/transactions?wait=true&timeout=2",
                data=chunked(json.dumps({"tx": h.award(C1, 100).hex()}).encode()),
                headers={"Content-Type": "application/json"},
            )
        )
        await asyncio.sleep(0.5)  # admitted, waiting for a block
        assert 0 < budget.used < 4096, budget.used
        reply = await waiting
        assert reply.status == 202, reply.body[:200]
        assert budget.used == 0


def budget_of(h: Harness):
    return h.node.api_runner.app[api_middleware.BODY_BUDGET]


async def chunked_body(data: bytes):
    yield data


def chunked(data: bytes):
    return chunked_body(data)


# --- C12: a mempool flood ------------------------------------------------------------

FLOOD_ACCOUNTS = 10
FLOOD_OVERSIZED = 200  # the case: 20,000
FLOOD_MINIMAL = 2_000  # the case: 100,000
MEMO_BYTES = 500_000
FLOOD_BATCH = 200
FLOOD_CONCURRENCY = 8
FUNDS = 10_000  # coins each flooding account starts with
# Resident memory a validator may add while it holds the flood, beyond what
# the transactions in its pool take: every admitted transaction costs its
# bytes plus its decoded form and the caches that know it.
MEMORY_SLACK = 40 * MB
MEMORY_PER_POOLED_TX = 4096
# Another user's award must be final this soon, flood or not.
STEADY_INTERVAL_S = 0.5
STEADY_FINAL_S = 10.0
STEADY_MIN_S = 4.0
MEMPOOL_CAP = 64 * MB  # the nodes' default mempool.max_bytes


@dataclass
class FloodReport:
    oversized: Counter = field(default_factory=Counter)
    minimal: Counter = field(default_factory=Counter)
    # How many coins each flooding account sent in admitted transfers.
    sent: Counter = field(default_factory=Counter)
    received: Counter = field(default_factory=Counter)


def mempool_flood(
    cluster,
    accounts: int = FLOOD_ACCOUNTS,
    oversized: int = FLOOD_OVERSIZED,
    minimal: int = FLOOD_MINIMAL,
    memo_bytes: int = MEMO_BYTES,
    steady_final_s: float = STEADY_FINAL_S,
) -> list[float]:
    """C12 on a running cluster: `accounts` accounts send `oversized`
    transfers with a `memo_bytes` memo and `minimal` one-coin transfers
    through every validator's API while another user keeps buying, each of
    whose purchases must be final within `steady_final_s`. Checks what the
    case asserts, and returns the other user's submit-to-final times; a soak
    calls it with the case's full sizes."""
    targets = cluster.validators
    flooders = [Keypair.generate() for _ in range(accounts)]
    shop = cluster.register_merchant(via="v1", name="Flood Shop")
    spend = FUNDS * 100 // MERCHANT_RATE
    cluster.submit_concurrently(
        [
            (targets[i % len(targets)], cluster.award_tx(shop, f, spend))
            for i, f in enumerate(flooders)
        ],
        timeout=30,
    )
    buyer, customer = cluster.register_merchant(via="v2"), Keypair.generate()

    watches = {name: MemoryWatch(cluster.nodes[name].process.pid) for name in targets}
    with (
        SteadyBuyer(cluster, buyer, customer, steady_final_s) as steady,
        MempoolGauge(cluster, targets) as gauge,
        contextlib.ExitStack() as stack,
    ):
        for watch in watches.values():
            stack.enter_context(watch)
        started = time.monotonic()
        report = asyncio.run(flood(cluster, flooders, oversized, minimal, memo_bytes))
        log.info("flood sent %s; waiting for the pools to drain", report)
        cluster.wait_until(
            lambda: all(cluster.status(n)["mempool_txs"] == 0 for n in targets),
            60 + minimal / 500,
            "every validator's mempool to drain",
            targets,
        )
        # A short flood still sees a few of the other user's purchases.
        time.sleep(max(0.0, STEADY_MIN_S - (time.monotonic() - started)))

    assert set(report.oversized) <= {400, 413}, report.oversized
    assert report.oversized.total() == oversized
    assert set(report.minimal) == {"pending"}, report.minimal
    assert gauge.peak <= MEMPOOL_CAP, f"mempool bytes peaked at {gauge.peak}"
    assert gauge.peak > 0, "the flood never showed in /metrics"
    # Once every pool has drained (the other user stopped), /metrics says so.
    cluster.wait_until(
        lambda: all(gauge.read(cluster.nodes[n].api_url) == 0 for n in targets),
        30,
        "/metrics to show empty mempools",
        targets,
    )
    for name, watch in watches.items():
        bound = MEMORY_SLACK + MEMORY_PER_POOLED_TX * minimal
        assert watch.growth < bound, f"{name}: {watch.describe()}"

    assert not steady.failures, steady.failures[:3]
    assert len(steady.final) >= 3, "the other user bought nothing meanwhile"
    assert max(steady.final) < steady_final_s, (
        f"the other user waited up to {max(steady.final):.1f}s: {steady.final}"
    )

    log.info("nothing lost: each account holds what its transfers say")
    cluster.wait_for_same_height(cluster.members, timeout=20)
    for i, account in enumerate(flooders):
        expected = FUNDS - report.sent[i] + report.received[i]
        assert cluster.balances(account, cluster.members) == dict.fromkeys(
            cluster.members, expected
        ), f"flooding account {i}"
    assert cluster.balances(customer, cluster.members) == dict.fromkeys(
        cluster.members, steady.earned
    )
    return steady.final


async def flood(cluster, flooders, oversized, minimal, memo_bytes) -> FloodReport:
    report = FloodReport()
    urls = [cluster.nodes[n].api_url for n in cluster.validators]
    gate = asyncio.Semaphore(FLOOD_CONCURRENCY)
    expires = cluster.expiry()
    memo = "m" * memo_bytes

    def transfer(n: int, memo: str) -> tuple[int, int, bytes]:
        # Account i sends i + 1 coins to the next one, so a lost or doubled
        # transfer shows in both balances.
        i = n % len(flooders)
        to = (i + 1) % len(flooders)
        raw = build_signed(
            cluster.chain_id, Kind.TRANSFER, flooders[i].public_key, expires,
            [flooders[to].public_key, i + 1, memo], flooders[i].sign,
        )  # fmt: skip
        return i, to, raw

    async def send_oversized(session, n: int) -> None:
        async with gate:
            # Built once its turn comes: at the case's size, all at once would
            # take gigabytes here.
            _, _, raw = transfer(n, f"{n}:{memo}")
            body, ctype = (
                (raw, "application/msgpack")
                if n % 2
                else (json.dumps({"tx": raw.hex()}).encode(), "application/json")
            )
            async with session.post(
                urls[n % len(urls)] + "/v1/transactions",
                data=body,
                headers={"Content-Type": ctype},
            ) as response:
                await response.read()
                report.oversized[response.status] += 1

    async def send_minimal(session, first: int, count: int) -> None:
        async with gate:
            txs = [transfer(n, str(n)) for n in range(first, first + count)]
            async with session.post(
                urls[first // FLOOD_BATCH % len(urls)] + "/v1/transactions/batch",
                data=msgpack.packb([raw for _, _, raw in txs]),
                headers={"Content-Type": "application/msgpack"},
            ) as response:
                doc = await response.json(content_type=None)
        assert response.status == 200, doc
        for (i, to, _), result in zip(txs, doc["results"], strict=True):
            report.minimal[result["status"]] += 1
            if result["status"] == "pending":
                report.sent[i] += i + 1
                report.received[to] += i + 1

    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(
            *(send_oversized(session, n) for n in range(oversized)),
            *(
                send_minimal(session, first, min(FLOOD_BATCH, minimal - first))
                for first in range(0, minimal, FLOOD_BATCH)
            ),
        )
    return report


class SteadyBuyer:
    """Another user: one award every STEADY_INTERVAL_S, each waited for until
    final, through the validators in turn; keeps how long each took."""

    def __init__(
        self,
        cluster,
        merchant: Keypair,
        customer: Keypair,
        final_s: float = STEADY_FINAL_S,
    ):
        self.cluster = cluster
        self.final_s = final_s
        self.merchant = merchant
        self.customer = customer
        self.final: list[float] = []
        self.failures: list[str] = []
        self.earned = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> SteadyBuyer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(self.final_s * 3)

    def run(self) -> None:
        names = self.cluster.validators
        clients = {n: Client(self.cluster.nodes[n].api_url) for n in names}
        try:
            for i in itertools.count():
                if self._stop.wait(STEADY_INTERVAL_S):
                    return
                self.buy(clients[names[i % len(names)]], 1000 + i)
        finally:
            for client in clients.values():
                client.close()

    def buy(self, client: Client, spend: int) -> None:
        raw = self.cluster.award_tx(self.merchant, self.customer, spend)
        started = time.monotonic()
        try:
            doc = client.submit(raw, wait=True, timeout=self.final_s * 2)
        except (HttpApiError, NodeUnreachable) as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
            return
        if doc["status"] != "committed":
            self.failures.append(f"not final: {doc}")
            return
        self.earned += spend * MERCHANT_RATE // 100
        self.final.append(time.monotonic() - started)


class MempoolGauge:
    """Reads perk_mempool_bytes from every node's /metrics while a test runs."""

    def __init__(self, cluster, names: list[str], interval_s: float = 0.2):
        self.urls = [cluster.nodes[n].api_url for n in names]
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> MempoolGauge:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            for url in self.urls:
                self.peak = max(self.peak, self.read(url))

    def read(self, url: str) -> int:
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return 0
        match = re.search(r"^perk_mempool_bytes (\S+)$", text, re.MULTILINE)
        return int(float(match.group(1))) if match else 0


async def test_c12_refused_transactions_do_not_hold_their_batch(tmp_path):
    """A refusal kept as a value carries no traceback: one would hold the
    frame of the batch, and with it every transaction of the batch, in a
    reference cycle that only a (rare) full garbage collection frees."""
    async with running_node(tmp_path) as h:
        oversized = build_signed(
            CHAIN, Kind.TRANSFER, C1.public_key, expiry(),
            [C2.public_key, 1, "m" * 4000], C1.sign,
        )  # fmt: skip
        results = await h.node.submit_batch([oversized, h.award(C1, 0)])
        assert [r.code.slug for r in results] == ["malformed", "amount_out_of_range"]
        assert all(r.__traceback__ is None for r in results)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_c12_mempool_flood(cluster):
    mempool_flood(cluster)
    cluster.assert_consistent(cluster.members)
    assert_no_traceback(cluster)


def assert_no_traceback(cluster) -> None:
    for name in cluster.members:
        assert not cluster.log_matches(name, "Traceback|level=error"), name
