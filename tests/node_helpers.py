"""An in-process node for the API tests: real store, mempool and HTTP server.

`running_node` starts a `Node` on 127.0.0.1 with an ephemeral port in a temp
home and yields a `Harness` holding it and a client session. Consensus is not
part of these tests, so `Harness.produce_block` makes the next block the way
the proposer would (reap, execute, commit) with an empty commit certificate.

Keys come from fixed seeds so failures reproduce. Genesis registers one
merchant (MERCHANT, 10 coins per 100 minor units of spend) and one admin.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgpack

from client import builders
from client.keys import Keypair
from node.config import Config
from node.service import Node
from state.block import Block
from state.genesis import Genesis, parse_genesis

CHAIN = "perk-api-test-1"
RATE = 10  # coins per 100 minor units of spend
TTL_S = 600


@functools.cache
def key(n: int) -> Keypair:
    return Keypair.from_seed(bytes([n]) * 32)


ADMIN = key(1)
VALIDATOR = key(2)
MERCHANT = key(10)
NOT_A_MERCHANT = key(11)
C1, C2, C3 = key(20), key(21), key(22)


def make_genesis(genesis_ms: int) -> Genesis:
    return parse_genesis(
        {
            "chain_id": CHAIN,
            "genesis_time_ms": genesis_ms,
            "validators": [{"name": "v1", "key": VALIDATOR.address}],
            "admins": [ADMIN.address],
            "merchants": [
                {
                    "key": MERCHANT.address,
                    "name": "Corner Café",
                    "rate": RATE,
                    "daily_cap": 10**12,
                }
            ],
        }
    )


@dataclass
class Reply:
    status: int
    headers: Any
    body: bytes
    doc: Any = None


@dataclass
class Harness:
    node: Node
    session: aiohttp.ClientSession
    url: str
    orders: int = field(default=0)

    @property
    def exp(self) -> int:
        """An expiry valid now and for the next few minutes."""
        return self.node.clock() // 1000 + TTL_S

    def produce_block(self) -> Block:
        node = self.node
        block = node.app.propose_block(
            node.store.height + 1, node.clock(), VALIDATOR.public_key
        )
        node.app.commit_block(block, b"")
        return block

    def award(
        self,
        customer: Keypair,
        amount: int,
        *,
        merchant: Keypair = MERCHANT,
        expires_at: int | None = None,
        chain_id: str = CHAIN,
    ) -> bytes:
        """A signed award for a fresh order id."""
        self.orders += 1
        return builders.award_purchase(
            merchant,
            chain_id,
            self.exp if expires_at is None else expires_at,
            customer.address,
            f"order-{self.orders}",
            amount,
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        headers = dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.url + path, data=data, headers=headers
        ) as response:
            body = await response.read()
            reply = Reply(response.status, response.headers, body)
        content_type = reply.headers.get("Content-Type", "")
        if not body:  # an answer to HEAD, say
            return reply
        if content_type.startswith(("application/json", "application/problem+json")):
            reply.doc = json.loads(body)
        elif content_type.startswith("application/msgpack"):
            reply.doc = msgpack.unpackb(body, raw=False)
        return reply

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.call("GET", path, **kw)

    async def submit(self, raw: bytes, query: str = "") -> Reply:
        return await self.call(
            "POST", "/v1/transactions" + query, json_body={"tx": raw.hex()}
        )

    async def submit_msgpack(self, raw: bytes, query: str = "") -> Reply:
        return await self.call(
            "POST",
            "/v1/transactions" + query,
            data=raw,
            headers={"Content-Type": "application/msgpack"},
        )

    async def wait_pending(self, count: int, timeout: float = 5.0) -> None:
        """Wait until the mempool holds `count` transactions."""
        deadline = time.monotonic() + timeout
        while len(self.node.mempool) < count:
            assert time.monotonic() < deadline, "transactions never reached the pool"
            await asyncio.sleep(0.01)


def make_config(home: Path, **sections: dict[str, Any]) -> Config:
    config = Config(home=home)
    config.node.name = "api-test"
    config.api.port = 0
    for section, values in sections.items():
        for name, value in values.items():
            setattr(getattr(config, section), name, value)
    return config


@asynccontextmanager
async def running_node(
    home: Path, **sections: dict[str, Any]
) -> AsyncIterator[Harness]:
    """A started node and a client session; both closed on exit."""
    genesis = make_genesis(time.time_ns() // 1_000_000 - 60_000)
    node = Node(
        make_config(home, **sections), genesis, VALIDATOR.seed, manual_blocks=True
    )
    await node.start()
    try:
        async with aiohttp.ClientSession() as session:
            yield Harness(node, session, f"http://127.0.0.1:{node.api_port}")
    finally:
        await node.stop()
