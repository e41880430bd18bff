"""Failure case C18, buy, spend, refund, through a node's API.

The ledger-level rules are in test_state_loyalty_refunds.py; here a running
node (tests.node_helpers) takes the transactions over HTTP, makes a block of
them, and a client reads what happened. Asserted:

- an award of 100 coins for order O, a redemption of 80 and a full refund of
  O: the refund's receipt claws back the 20 left and records 80 as debt; the
  customer's balance is 0 and its debt 80, and later earnings repay the debt
  before they count as balance;
- a second refund of O is refused as `refund_exceeds_order`, a refund of an
  unknown order as `unknown_order`, and neither changes a balance;
- a 40% refund of an order of 100 coins claws back 40;
- CYCLES buy-and-refund cycles leave the customer with nothing and owing
  nothing;
- at every height, the supply identity read from GET /v1/settlement holds:
  issued = held + redeemed + expired + clawed back - debt.
"""

from __future__ import annotations

import pytest

from client import builders
from state.codec import sha256
from tests.node_helpers import C1, C2, C3, CHAIN, MERCHANT, Harness, running_node

CYCLES = 50


@pytest.fixture
async def api(tmp_path):
    async with running_node(tmp_path) as harness:
        yield harness


async def commit(h: Harness, *raws: bytes) -> list[dict]:
    """Submit the transactions, make a block of them, check the supply
    identity at the new height; their receipts, in order."""
    for raw in raws:
        reply = await h.submit(raw)
        assert reply.status == 202, reply.body[:200]
    block = h.produce_block()
    assert len(block.txs) == len(raws)
    await assert_supply_identity(h)
    receipts = []
    for raw in raws:
        doc = (await h.get(f"/v1/transactions/{sha256(raw).hex()}")).doc
        assert doc["status"] == "committed", doc
        receipts.append(doc["receipt"])
    return receipts


async def assert_supply_identity(h: Harness) -> None:
    doc = (await h.get("/v1/settlement")).doc
    totals = doc["totals"]
    held = doc["liability"]["total"]
    right = (
        held + totals["redeemed"] + totals["expired"] + totals["clawed_back"]
    ) - doc["debt"]
    assert totals["issued"] == right, f"height {doc['height']}: {doc}"


async def account(h: Harness, who) -> tuple[int, int]:
    doc = (await h.get(f"/v1/accounts/{who.address}")).doc
    return doc["balance"], doc["debt"]


def award(h: Harness, customer, order: str, spend: int) -> bytes:
    return builders.award_purchase(
        MERCHANT, CHAIN, h.exp, customer.address, order, spend
    )


def refund(h: Harness, order: str, spend: int, attempt: int = 0) -> bytes:
    """A refund; `attempt` makes the same refund signed anew (other bytes)."""
    return builders.refund_purchase(MERCHANT, CHAIN, h.exp - attempt, order, spend)


def events(receipt: dict) -> dict[str, int]:
    return {e["event"]: e["delta"] for e in receipt["events"]}


async def test_c18_buy_spend_refund(api: Harness):
    # Award 100 coins for order O; the customer spends 80 of them.
    (ok,) = await commit(api, award(api, C1, "O", 1000))
    assert ok["code"] == "ok"
    redeem = builders.redeem(C1, CHAIN, api.exp, MERCHANT.address, 80, "coffee")
    assert [r["code"] for r in await commit(api, redeem)] == ["ok"]
    assert await account(api, C1) == (20, 0)

    # The merchant refunds O in full: 20 clawed back, 80 owed.
    (refunded,) = await commit(api, refund(api, "O", 1000))
    assert refunded["code"] == "ok"
    assert events(refunded)["clawback"] == -20
    assert events(refunded)["debt"] == 80
    assert await account(api, C1) == (0, 80)

    # A second refund of O and a refund of an unknown order change nothing.
    again, unknown = await commit(
        api, refund(api, "O", 1000, attempt=1), refund(api, "no-such-order", 10)
    )
    assert (again["code"], unknown["code"]) == ("refund_exceeds_order", "unknown_order")
    assert await account(api, C1) == (0, 80)

    # Later earnings repay the debt first: 50, then 60 of which 30 remain.
    await commit(api, award(api, C1, "P", 500))
    assert await account(api, C1) == (0, 30)
    await commit(api, award(api, C1, "Q", 600))
    assert await account(api, C1) == (30, 0)


async def test_c18_partial_refund_claws_back_its_share(api: Harness):
    await commit(api, award(api, C2, "R", 1000))  # 100 coins
    (partial,) = await commit(api, refund(api, "R", 400))  # 40% of the order
    assert partial["code"] == "ok"
    assert events(partial)["clawback"] == -40
    assert await account(api, C2) == (60, 0)


async def test_c18_buy_and_refund_cycles_leave_the_customer_at_zero(api: Harness):
    for n in range(CYCLES):
        spend = 1000 + 10 * n
        (bought,) = await commit(api, award(api, C3, f"cycle-{n}", spend))
        assert bought["code"] == "ok"
        (refunded,) = await commit(api, refund(api, f"cycle-{n}", spend))
        assert refunded["code"] == "ok"
        assert events(refunded)["clawback"] == -(spend // 10)
    assert await account(api, C3) == (0, 0)
    (row,) = (await api.get("/v1/settlement")).doc["rows"]
    assert (
        row["issued"]
        == row["clawed_back"]
        == sum((1000 + 10 * n) // 10 for n in range(CYCLES))
    )
