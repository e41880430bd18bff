"""A loyalty node for the HTTP tests: a real node on 127.0.0.1 whose clock the
test sets to the second, with a genesis of the test's choosing.

`loyalty_node(home, program=..., merchants=...)` yields a `LoyaltyNode`:
`at(t)` sets the clock to block time `t` (seconds), `tx(...)` builds a
transaction that expires shortly after it, and `run(*txs)` submits them
through the API, makes one block and returns each transaction's receipt;
`books()` checks the indexer's liability and debt against a full scan of the
ledger and the supply identity. The tests here cover the harness itself and
the indexer's catch-up.

Times are seconds from GENESIS_S, 2025-12-01T00:00:00Z (a Monday).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from client import builders
from client.keys import Keypair
from node.indexer import INDEX_PREFIX
from node.service import Node
from state.address import address_of
from state.execute import Executor
from state.genesis import parse_genesis
from state.settlement import settlement, supply
from state.store import Store
from state.tx import decode_tx
from tests.node_helpers import Harness, Reply, key, make_config

CHAIN = "perk-loyalty-test-1"
GENESIS_S = 1_764_547_200  # 2025-12-01T00:00:00Z
DAY = 86_400
DAY0 = GENESIS_S // DAY  # program day of genesis at UTC+0
TTL_S = 600

VALIDATOR = key(2)
A1, A2, A3 = key(1), key(3), key(4)


def merchant(kp: Keypair, name: str, rate: int, cap: int = 10**12) -> dict:
    return {"key": kp.address, "name": name, "rate": rate, "daily_cap": cap}


def genesis_doc(program: dict, merchants: list[dict], admins=(A1,)) -> dict:
    return {
        "chain_id": CHAIN,
        "genesis_time_ms": GENESIS_S * 1000,
        "validators": [{"name": "v1", "key": VALIDATOR.address}],
        "admins": [a.address for a in admins],
        "program": program,
        "merchants": merchants,
    }


class LoyaltyNode:
    def __init__(self, harness: Harness):
        self.h = harness
        self.node = harness.node
        self.now_ms = GENESIS_S * 1000
        # The node reads its clock through this attribute (mempool admission
        # and block time alike); the test moves it to the second.
        self.node._clock = lambda: self.now_ms
        self.refs = 0

    @property
    def store(self) -> Store:
        return self.node.store

    def exp(self) -> int:
        return self.now_ms // 1000 + TTL_S

    def at(self, t: int) -> None:
        self.now_ms = t * 1000

    async def run(self, *raws: bytes, at: int | None = None) -> list[dict[str, Any]]:
        """Submit `raws`, commit one block at the clock's time (moved to `at`
        first when given: transactions must then be built after `at(...)`)."""
        if at is not None:
            self.at(at)
        assert self.now_ms > self.store.time_ms, "blocks only move forward"
        for raw in raws:
            reply = await self.h.submit(raw)
            assert reply.status == 202, reply.doc
        block = self.node.app.propose_block(
            self.store.height + 1, self.now_ms, VALIDATOR.public_key
        )
        self.node.app.commit_block(block, b"")
        assert len(block.txs) == len(raws)
        out = []
        for raw in raws:
            tx_hash = decode_tx(raw).hash.hex()
            doc = (await self.h.get(f"/v1/transactions/{tx_hash}")).doc
            assert doc["status"] == "committed", doc
            out.append(doc["receipt"])
        return out

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.h.get(path, **kw)

    async def doc(self, path: str) -> Any:
        reply = await self.h.get(path)
        assert reply.status == 200, reply.doc
        return reply.doc

    async def csv(self, path: str, **kw: Any) -> list[dict[str, str]]:
        reply = await self.h.get(path, **kw)
        assert reply.status == 200, reply.body
        assert reply.headers["Content-Type"] == "text/csv; charset=utf-8"
        return list(csv.DictReader(io.StringIO(reply.body.decode())))

    def tx(self, fn, signer: Keypair, *args: Any) -> bytes:
        """A transaction built now, with this harness's chain and expiry."""
        return fn(signer, CHAIN, self.exp(), *args)

    def ref(self) -> str:
        self.refs += 1
        return f"ref-{self.refs}"

    async def books(self) -> dict[str, Any]:
        """The settlement document, checked against a full scan of the state:
        the indexer's liability and debt, and the supply identity."""
        doc = await self.doc("/v1/settlement")
        now_s = self.store.time_ms // 1000
        scanned = settlement(self.store.state_items(), now_s=now_s)
        assert doc["liability"]["total"] == scanned.liability
        assert {i["issuer"]: i["coins"] for i in doc["liability"]["by_issuer"]} == {
            address_of(k): v for k, v in scanned.liability_by_issuer.items() if v
        }
        assert doc["debt"] == scanned.debt
        assert supply(self.store.state_items()).holds
        for name in ("issued", "redeemed", "expired", "clawed_back", "fee", "net"):
            assert doc["totals"][name] == scanned.total(name)
            assert doc["totals"][name] == sum(r[name] for r in doc["rows"])
        return doc


def status_of(receipt: dict[str, Any]) -> str:
    return receipt["code"]


def events(receipt: dict[str, Any]) -> list[tuple[str, str, int]]:
    return [(e["event"], e["account"], e["delta"]) for e in receipt["events"]]


@asynccontextmanager
async def loyalty_node(
    home: Path,
    program: dict | None = None,
    merchants: list[dict] | None = None,
    admins: tuple[Keypair, ...] = (A1,),
) -> AsyncIterator[LoyaltyNode]:
    genesis = parse_genesis(genesis_doc(program or {}, merchants or [], admins))
    node = Node(make_config(home), genesis, VALIDATOR.seed, manual_blocks=True)
    await node.start()
    try:
        async with aiohttp.ClientSession() as session:
            harness = Harness(node, session, f"http://127.0.0.1:{node.api_port}")
            yield LoyaltyNode(harness)
    finally:
        await node.stop()


# --- the harness and the indexer's catch-up ---------------------------------------

SHOP, CUSTOMER = key(30), key(40)
SCHOOL_PROGRAM = {"expiry": {"policy": "days", "days": 1}}


async def test_block_time_follows_the_test_clock(tmp_path):
    async with loyalty_node(tmp_path, merchants=[merchant(SHOP, "Shop", 10)]) as n:
        n.at(GENESIS_S + 3600)
        award = n.tx(builders.award_purchase, SHOP, CUSTOMER.address, "o-1", 1000)
        [receipt] = await n.run(award)
        assert status_of(receipt) == "ok"
        assert n.store.time_ms == (GENESIS_S + 3600) * 1000
        assert n.node.app.indexer.height == n.store.height == 1
        # The index entries went into the block's own batch.
        assert n.store.db.get(b"im") is not None


async def test_catch_up_indexes_blocks_committed_without_the_indexer(tmp_path):
    """Blocks written straight to the store (as an audit tool would) are
    indexed when the node starts, expiry included, with the same figures the
    live indexer gives."""
    shop = [merchant(SHOP, "Shop", 10)]
    t0 = GENESIS_S + 10 * 3600
    plan = [
        (t0, [("award", "o-1", 5000)]),
        (t0 + 600, [("redeem", 100)]),
        (t0 + DAY, [("award", "o-2", 2000)]),
        # Coins of day 0 expire at the start of day 2.
        (GENESIS_S + 2 * DAY, []),
        (GENESIS_S + 2 * DAY + 60, [("refund", "o-2", 1000)]),
    ]

    def build(n: LoyaltyNode | None, t: int, steps, exp: int) -> list[bytes]:
        raws = []
        for step in steps:
            if step[0] == "award":
                raws.append(
                    builders.award_purchase(
                        SHOP, CHAIN, exp, CUSTOMER.address, step[1], step[2]
                    )
                )
            elif step[0] == "redeem":
                raws.append(
                    builders.redeem(CUSTOMER, CHAIN, exp, SHOP.address, step[1], "r")
                )
            else:
                raws.append(builders.refund_purchase(SHOP, CHAIN, exp, *step[1:]))
        return raws

    live_home, direct_home = tmp_path / "live", tmp_path / "direct"
    async with loyalty_node(live_home, SCHOOL_PROGRAM, shop) as n:
        for t, steps in plan:
            await n.run(*build(n, t, steps, t + TTL_S), at=t)
        expected = await n.doc(f"/v1/analytics/daily?from={DAY0}&to={DAY0 + 4}")
        expected_summary = await n.doc("/v1/analytics/summary")
        await n.books()
    assert sum(d["expired"] for d in expected["days"]) == 500 - 100

    genesis = parse_genesis(genesis_doc(SCHOOL_PROGRAM, shop))
    store = Store(make_config(direct_home).data_dir, genesis)
    executor = Executor(store)
    for t, steps in plan:
        block, result = executor.build_block(
            t * 1000, VALIDATOR.public_key,
            [executor.signatures.decode(r) for r in build(None, t, steps, t + TTL_S)],
        )  # fmt: skip
        store.commit_block(block, b"", result)
    assert not list(store.db.iterator(prefix=INDEX_PREFIX))
    store.close()

    async with loyalty_node(direct_home, SCHOOL_PROGRAM, shop) as n:
        assert n.node.app.indexer.height == len(plan)
        got = await n.doc(f"/v1/analytics/daily?from={DAY0}&to={DAY0 + 4}")
        assert got["days"] == expected["days"]
        summary = await n.doc("/v1/analytics/summary")
        assert summary["totals"] == expected_summary["totals"]
        assert summary["liability"] == expected_summary["liability"]
        await n.books()


async def test_restart_keeps_the_index(tmp_path):
    shop = [merchant(SHOP, "Shop", 10)]
    async with loyalty_node(tmp_path, merchants=shop) as n:
        n.at(GENESIS_S + 60)
        award = n.tx(builders.award_purchase, SHOP, CUSTOMER.address, "o-1", 1000)
        await n.run(award)
        before = await n.doc("/v1/analytics/summary")
    started = time.monotonic()
    async with loyalty_node(tmp_path, merchants=shop) as n:
        assert n.node.app.indexer.height == 1
        after = await n.doc("/v1/analytics/summary")
    assert after == before
    assert time.monotonic() - started < 10
