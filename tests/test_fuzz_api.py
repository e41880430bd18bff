"""The HTTP API under a fuzzer: schemathesis drives every described operation of
a real node on 127.0.0.1 with requests made from its OpenAPI document, valid and
invalid ones, and hypothesis sends hostile bodies to the POST routes.

What must hold for every request, whatever it holds:

- no 5xx: nothing a client sends makes the node fail;
- the answer is one the document describes for that operation (status, content
  type, schema, Allow header); a request the document says is invalid is
  refused with a 4xx;
- every refusal is an application/problem+json document whose `code` is one
  node.problem_codes documents, with the HTTP status it documents for it;
- nothing a refused request sends reaches the ledger or the mempool.

The node runs in a thread with its own event loop, because schemathesis calls
it synchronously through `requests`. Examples per operation are bounded for
`make test`; PERK_FUZZ_EXAMPLES raises them (and makes the runs random) for a
longer soak.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import msgpack
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from client import builders
from node.openapi import API_CODES, TX_CODES, build_document, status_of
from node.views import MAX_JSON_DEPTH
from state.codes import Code
from tests.node_helpers import C1, C2, Harness, running_node

SOAK_EXAMPLES = os.environ.get("PERK_FUZZ_EXAMPLES")
# Per operation, for each of schemathesis' generation modes.
EXAMPLES = int(SOAK_EXAMPLES or 50)
PROBLEM = "application/problem+json"
DOCUMENTED_CODES = {**{code: s for code, (s, _) in API_CODES.items()},
                    **{code.slug: status_of(code) for code in TX_CODES}}  # fmt: skip


# --- a node in a thread ---------------------------------------------------------------


class NodeThread:
    """A node (tests.node_helpers.running_node) served from a thread's loop.

    Blocks 1 and 2 hold an award and a transfer, so block, account and
    transaction reads find something as well as nothing.
    """

    def __init__(self, home: Path):
        self.home = home
        self.loop = asyncio.new_event_loop()
        self.harness: Harness | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="fuzz-node")

    @property
    def url(self) -> str:
        assert self.harness is not None
        return self.harness.url

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(30):
            raise TimeoutError("the node did not start within 30 s")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30) -> Any:
        """Run `coro` on the node's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def ledger(self) -> tuple[int, bytes, int]:
        """(height, state root, mempool size), read on the node's loop."""

        async def read() -> tuple[int, bytes, int]:
            node = self.harness.node
            return node.store.height, node.store.state_root, len(node.mempool)

        return self.run(read())

    def _main(self) -> None:
        self.loop.run_until_complete(self._serve())
        self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            # A short finality wait: fuzzed submissions with wait=true must not
            # hold a test for the default 30 s.
            async with running_node(self.home, api={"max_wait_s": 0.2}) as harness:
                await self._seed(harness)
                self.harness = harness
                self._started.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            self._started.set()

    @staticmethod
    async def _seed(harness: Harness) -> None:
        await harness.submit(harness.award(C1, 5000))
        harness.produce_block()
        transfer = builders.transfer(
            C1, harness.node.chain_id, harness.exp, C2.address, 7
        )
        await harness.submit(transfer)
        harness.produce_block()


@pytest.fixture(scope="module")
def live_node(tmp_path_factory):
    node = NodeThread(tmp_path_factory.mktemp("fuzz-api"))
    node.start()
    yield node
    node.stop()


# --- the documented-problem check -----------------------------------------------------


def check_problem(status: int, content_type: str, body: bytes) -> None:
    """An error answer must be a problem document with a documented code."""
    if status < 400:
        return
    assert status < 500, f"server error {status}: {body[:300]!r}"
    assert content_type.split(";")[0].strip() == PROBLEM, content_type
    doc = json.loads(body)
    code = doc.get("code")
    assert code in DOCUMENTED_CODES, f"undocumented problem code {code!r}"
    assert doc["status"] == status, doc
    # A transaction the ledger refused while the client waited is 422 whatever
    # its code; every other problem comes with its code's own status.
    if not (status == 422 and code in {c.slug for c in Code}):
        assert DOCUMENTED_CODES[code] == status, (code, status)
    assert {"type", "title", "detail"} <= set(doc), doc


@schemathesis.check
def problem_documented(ctx, response, case) -> bool:
    content_type = ",".join(response.headers.get("content-type", []))
    check_problem(response.status_code, content_type, response.content)
    return True


@schemathesis.serializer("application/msgpack")
def msgpack_body(ctx, value: Any) -> bytes:
    # The document describes a msgpack body as opaque bytes: a generated string
    # becomes its bytes, anything else (negative cases) its msgpack packing.
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return value
    return msgpack.packb(value, use_bin_type=True)


# --- schemathesis ---------------------------------------------------------------------

# Schema-valid input these operations still refuse by rules no JSON Schema can
# state: a transaction's signature and form, a bech32 checksum, a cursor this
# API issued, a period's from < to. Their refusals are still checked in full.
SEMANTIC_INPUT = [
    "/v1/transactions",
    "/v1/transactions/batch",
    "/v1/accounts/{address}",
    "/v1/merchants/{address}",
    "/v1/stream/accounts/{address}",
    "/v1/settlement",
    "/v1/analytics/daily",
]
CONFIG = f"""
request-timeout = 10

[generation]
max-examples = {EXAMPLES}
mode = "all"
deterministic = {"false" if SOAK_EXAMPLES else "true"}

[phases.stateful]
enabled = false

# Input the document rules out is refused with a 4xx: 413 is how this API
# refuses a batch over api.max_batch, so it counts as a refusal too.
[checks.negative_data_rejection]
expected-statuses = ["400", "404", "405", "409", "413", "415", "422", "429"]

# Event streams stay open for as long as the client does: read what comes in a
# moment, then let go.
[[operations]]
include-path-regex = "^/v1/stream/"
max-stream-events = 1
request-timeout = 0.5
""" + "".join(
    f"""
[[operations]]
include-path = "{path}"
checks.positive_data_acceptance.enabled = false
"""
    for path in SEMANTIC_INPUT
)

SCHEMA = schemathesis.openapi.from_dict(
    build_document(), config=schemathesis.Config.from_str(CONFIG)
)


def test_fuzzed_document_is_the_served_one(live_node: NodeThread):
    served = requests.get(live_node.url + "/v1/openapi.json", timeout=10).json()
    assert served == json.loads(json.dumps(build_document()))


@SCHEMA.parametrize()
def test_operation_answers_as_documented(case, live_node: NodeThread):
    before = live_node.ledger()

    case.call_and_validate(
        base_url=live_node.url, additional_checks=[problem_documented]
    )

    # Reads never change the ledger; generated transactions are never signed.
    assert live_node.ledger() == before


# --- hostile bodies to the POST routes ------------------------------------------------

POSTS = ["/v1/transactions", "/v1/transactions/batch"]
CONTENT_TYPES = ["application/json", "application/msgpack", "application/x-msgpack"]


def json_shapes() -> st.SearchStrategy[bytes]:
    """JSON close to the documented bodies, and JSON far from them."""
    leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=40)
    value = st.recursive(
        leaf,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(st.sampled_from(["tx", "txs", "x"]), inner, max_size=3)
        ),
        max_leaves=12,
    )
    hexes = st.binary(max_size=200).map(bytes.hex)
    near = st.one_of(
        st.fixed_dictionaries({"tx": hexes | value}),
        st.fixed_dictionaries({"txs": st.lists(hexes | value, max_size=5) | value}),
    )
    nested = st.integers(MAX_JSON_DEPTH - 2, MAX_JSON_DEPTH + 40).map(
        lambda n: ('{"tx":' + "[" * n + "]" * n + "}").encode()
    )
    return st.one_of(
        (near | value).map(lambda doc: json.dumps(doc).encode()),
        nested,
        st.sampled_from([b"NaN", b'{"tx": 1e999}', b'{"tx":"00","tx":"00"}']),
    )


def msgpack_shapes() -> st.SearchStrategy[bytes]:
    """Arrays of bin (the batch form), other msgpack values, and raw bytes."""
    leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    leaf = leaf | st.binary(max_size=64) | st.text(max_size=16) | st.floats()
    value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=4), max_leaves=10)
    return st.one_of(
        st.lists(st.binary(max_size=300), max_size=4).map(msgpack.packb),
        value.map(lambda v: msgpack.packb(v, use_bin_type=True)),
        st.binary(min_size=1, max_size=400),
    )


def encoded(body: bytes, encoding: str | None, compress: bool) -> bytes:
    """`body`, compressed as its Content-Encoding says when `compress`."""
    if compress and encoding == "gzip":
        return gzip.compress(body)
    if compress and encoding == "deflate":
        return zlib.compress(body)
    return body


@settings(
    max_examples=EXAMPLES * 8,
    derandomize=not SOAK_EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from(POSTS),
    content_type=st.sampled_from(CONTENT_TYPES),
    body=json_shapes() | msgpack_shapes(),
    query=st.sampled_from(["", "?wait=true", "?wait=true&timeout=0.1", "?x=1"]),
    expect=st.sampled_from([None, "100-continue", "bogus"]),
    encoding=st.sampled_from([None, "gzip", "deflate", "identity", "br", "bogus"]),
    compress=st.booleans(),
)
def test_hostile_post_bodies_get_documented_problems(
    live_node: NodeThread,
    path: str,
    content_type: str,
    body: bytes,
    query: str,
    expect: str | None,
    encoding: str | None,
    compress: bool,
):
    headers = {"Content-Type": content_type}
    if expect is not None:
        headers["Expect"] = expect
    if encoding is not None:
        headers["Content-Encoding"] = encoding
    documented = build_document()["paths"][path]["post"]["responses"]
    before = live_node.ledger()

    reply = requests.post(
        live_node.url + path + ("" if path.endswith("batch") else query),
        data=encoded(body, encoding, compress),
        headers=headers,
        timeout=10,
    )

    assert str(reply.status_code) in documented, reply.text[:300]
    check_problem(reply.status_code, reply.headers["Content-Type"], reply.content)
    if reply.status_code == 200:  # a batch: each item is refused on its own
        for result in reply.json()["results"]:
            assert result["status"] != "pending", result
            assert result["code"] in DOCUMENTED_CODES, result
    assert live_node.ledger() == before


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", b'{"tx": "00"}'),  # not gzip at all
        ("deflate", b"{}"),  # a deflate stream that stops short
        ("gzip", gzip.compress(b'{"tx": "00"}')),
    ],
)
def test_compressed_bodies_are_refused_unread_with_nothing_logged(
    live_node: NodeThread, caplog, encoding: str, body: bytes
):
    caplog.set_level(logging.WARNING)

    reply = requests.post(
        live_node.url + "/v1/transactions",
        data=body,
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
        timeout=5,
    )
    # aiohttp would log its own error after the answer, when it drains the body.
    time.sleep(0.2)

    assert reply.status_code == 415, reply.text
    assert reply.json()["code"] == "unsupported_media_type"
    assert reply.headers["Accept-Encoding"] == "identity"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


# --- query parameters no operation declares -------------------------------------------

SAMPLE_PATH_VALUES = {"height": "1", "hash": "00" * 32, "address": C1.address}
OPERATIONS = [
    (method, path, operation["responses"])
    for path, methods in build_document()["paths"].items()
    for method, operation in methods.items()
]


@pytest.mark.parametrize(
    ("method", "path", "documented"),
    OPERATIONS,
    ids=[f"{method.upper()} {path}" for method, path, _ in OPERATIONS],
)
@pytest.mark.parametrize("query", ["?unexpected=1", "?limit=1&limit=2", "?%ff=%00"])
def test_undeclared_query_parameters_get_documented_answers(
    live_node: NodeThread, method: str, path: str, documented: dict, query: str
):
    url = live_node.url + path.format(**SAMPLE_PATH_VALUES) + query

    reply = requests.request(method, url, json={"tx": "00"}, timeout=10, stream=True)
    with reply:
        # An event stream that opened would never end: only a refusal is read.
        opened = path.startswith("/v1/stream/") and reply.status_code == 200
        content = b"" if opened else reply.content

    assert str(reply.status_code) in documented, (reply.status_code, content[:200])
    check_problem(reply.status_code, reply.headers["Content-Type"], content)
