"""Adversarial findings against the HTTP API, kept as regression tests.

Each test is small and deterministic: a JSON body built to make a naive
nesting check quadratic, a bad signature that must be verified once, and idle
connections that must not pile up past the configured cap.
"""

from __future__ import annotations

import asyncio
import socket
import time

import msgpack
import pytest

import node.verify as verify
from node.views import ApiError, parse_json
from state.tx import Transaction
from tests.node_helpers import C1, C2, running_node

# --- JSON parsing --------------------------------------------------------------------


def test_json_depth_prescan_on_unterminated_escaped_quotes_is_fast():
    # 24 KB of `"\` repeated: every quote starts a string whose closing quote
    # is escaped, so the nesting pre-scan regex (views._JSON_NESTING) scans to
    # the end of the body from every quote: quadratic. Sanity check that the
    # refusal itself is right, and that a small body is fast.
    body = b'"\\' * 200
    with pytest.raises(ApiError) as caught:
        parse_json(body)
    assert caught.value.doc["code"] == "invalid_json"


def test_json_prescan_is_linear_in_body_size():
    body = b'"\\' * 12_000  # 24 KB; linear work would take about a millisecond
    started = time.perf_counter()
    with pytest.raises(ApiError):
        parse_json(body)
    assert time.perf_counter() - started < 0.5


# --- signatures ----------------------------------------------------------------------


async def test_bad_signature_is_verified_once_per_submission(tmp_path, monkeypatch):
    sent, on_loop = 0, 0
    original_pairs, original_verify = verify.pairs, Transaction.verify_signature

    def counting_pairs(txs):
        nonlocal sent
        sent += len(txs)
        return original_pairs(txs)

    def counting_verify(self):
        nonlocal on_loop
        on_loop += 1
        return original_verify(self)

    # Each submitted transaction goes to the verify workers once; none is
    # verified again on the event loop after its check failed.
    monkeypatch.setattr(verify, "pairs", counting_pairs)
    monkeypatch.setattr(Transaction, "verify_signature", counting_verify)
    async with running_node(tmp_path) as h:
        raws = []
        for i in range(10):
            raw = h.award(C1 if i % 2 else C2, 1000 + i)
            raws.append(raw[:-64] + bytes(64))  # same bytes, signature zeroed
        reply = await h.call(
            "POST",
            "/v1/transactions/batch",
            data=msgpack.packb(raws, use_bin_type=True),
            headers={"Content-Type": "application/msgpack"},
        )
        assert reply.status == 200
        assert reply.doc["accepted"] == 0
        assert {r["code"] for r in reply.doc["results"]} == {"bad_signature"}
    assert (sent, on_loop) == (len(raws), 0)


# --- connections ---------------------------------------------------------------------


async def test_api_bounds_idle_connections(tmp_path):
    async with running_node(tmp_path, api={"max_connections": 8}) as h:
        loop = asyncio.get_running_loop()
        socks = []
        try:
            for _ in range(40):
                s = socket.socket()
                s.setblocking(False)
                await loop.sock_connect(s, ("127.0.0.1", h.node.api_port))
                s.send(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")  # never finished
                socks.append(s)
            await asyncio.sleep(0.3)
            open_now = len(h.node.api_runner.server.connections)
        finally:
            for s in socks:
                s.close()
    assert open_now <= 8


async def test_a_chunked_body_broken_after_the_headers_is_dropped_quietly(
    tmp_path, monkeypatch, caplog
):
    # The chunk declares 5 bytes and carries 8. The HTTP parser does not
    # report every such error to the reader, so the body just stops arriving:
    # the connection is dropped at the body deadline, the node logs why
    # (a warning, no traceback), and it goes on answering.
    monkeypatch.setattr("node.api_middleware.BODY_READ_S", 0.5)
    async with running_node(tmp_path) as h:
        reader, writer = await asyncio.open_connection("127.0.0.1", h.node.api_port)
        writer.write(
            b"POST /v1/transactions HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # the headers alone are handled first
        writer.write(b"5\r\nabcdefgh\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        status = await h.get("/v1/status")
    assert answer == b""  # dropped, with nobody to answer
    assert status.status == 200
    assert "body_too_slow" in caplog.text
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
    assert "Traceback" not in caplog.text
