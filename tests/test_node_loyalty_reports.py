"""Settlement and analytics through the HTTP API on a random history: totals
equal the sums of the rows, periods add up to all time, CSV exports parse and
match the JSON, day ranges are half-open, bad parameters are 400 problems with
stable codes, and every loyalty document matches its OpenAPI schema.
"""

from __future__ import annotations

import random

import pytest

from client import builders
from state.changes import ChangeAction
from state.tx import EngagementKind
from tests.node_helpers import key
from tests.test_node_api_openapi import schema_checker
from tests.test_node_loyalty_harness import (
    A1,
    DAY,
    DAY0,
    GENESIS_S,
    LoyaltyNode,
    loyalty_node,
    merchant,
)

MERCHANTS = [key(50), key(51), key(52)]
CUSTOMERS = [key(60 + i) for i in range(6)]
PROGRAM = {
    "pending_seconds": 3600,
    "expiry": {"policy": "days", "days": 2},
    "engagement": {"survey": {"coins": 25, "daily_cap": 1}},
}
DAYS = 8


async def random_history(n: LoyaltyNode, seed: int) -> None:
    """Eight days of awards, engagement, redemptions, reversals, transfers and
    refunds from a seeded generator; failures (caps, balances) are part of it."""
    rng = random.Random(seed)
    n.at(GENESIS_S + 600)
    terms = [
        n.tx(builders.propose_change, A1, ChangeAction.MERCHANT_TERMS,
             [m.public_key, 1 + i, 2 + i, []], GENESIS_S + DAY)
        for i, m in enumerate(MERCHANTS)
    ]  # fmt: skip
    await n.run(*terms)
    orders: list[tuple] = []
    redemptions: list[tuple] = []
    for day in range(DAYS):
        for hour in (9, 13, 18):
            n.at(GENESIS_S + day * DAY + hour * 3600 + rng.randrange(600))
            txs = []
            for _ in range(rng.randrange(2, 7)):
                c, m = rng.choice(CUSTOMERS), rng.choice(MERCHANTS)
                action = rng.random()
                if action < 0.45:
                    order = n.ref()
                    amount = rng.randrange(500, 40_000)
                    orders.append((m, order, amount))
                    txs.append(
                        n.tx(builders.award_purchase, m, c.address, order, amount)
                    )
                elif action < 0.55:
                    txs.append(n.tx(builders.engagement_reward, m, c.address,
                                    EngagementKind.SURVEY, n.ref()))  # fmt: skip
                elif action < 0.75:
                    raw = n.tx(builders.redeem, c, m.address, rng.randrange(1, 400),
                               n.ref())  # fmt: skip
                    redemptions.append((m, raw))
                    txs.append(raw)
                elif action < 0.85 and orders:
                    m, order, amount = rng.choice(orders)
                    txs.append(n.tx(builders.refund_purchase, m, order,
                                    rng.randrange(1, amount + 1)))  # fmt: skip
                elif action < 0.92 and redemptions:
                    m, raw = rng.choice(redemptions)
                    tx_hash = builders.decode_tx(raw).hash
                    txs.append(n.tx(builders.reverse_redemption, m, tx_hash))
                else:
                    to = rng.choice(CUSTOMERS)
                    if to != c:
                        txs.append(n.tx(builders.transfer, c, to.address,
                                        rng.randrange(1, 200), n.ref()))  # fmt: skip
            await n.run(*txs)


@pytest.fixture
async def history(tmp_path):
    merchants = [merchant(m, f"Merchant {i}", 5 + 5 * i) for i, m in
                 enumerate(MERCHANTS)]  # fmt: skip
    async with loyalty_node(tmp_path, PROGRAM, merchants) as n:
        await random_history(n, 7)
        yield n


async def test_settlement_totals_are_the_sums_of_the_rows(history: LoyaltyNode):
    n = history
    everything = await n.books()  # also checks liability against a full scan
    assert everything["totals"]["issued"] > 0
    assert everything["totals"]["expired"] > 0
    assert everything["period"]["all_time"] is True
    matrix = {}
    for row in everything["rows"]:
        for split in row["redeemed_by_issuer"]:
            matrix[(row["merchant"], split["issuer"])] = split["coins"]
        assert row["redeemed"] == sum(s["coins"] for s in row["redeemed_by_issuer"])
        assert (
            row["fee"] == (row["issued"] - row["clawed_back"]) * row["price_per_coin"]
        )
        assert row["net"] == row["reimbursement"] - row["fee"]
    assert matrix == {(m["redeemer"], m["issuer"]): m["coins"]
                      for m in everything["matrix"]}  # fmt: skip
    assert everything["liability"]["total"] == sum(
        i["coins"] for i in everything["liability"]["by_issuer"]
    )

    # Periods that tile the history add up to all time, row by row.
    cuts = [DAY0, DAY0 + 3, DAY0 + 5, DAY0 + DAYS + 1]
    parts = [
        await n.doc(f"/v1/settlement?from={a}&to={b}")
        for a, b in zip(cuts, cuts[1:], strict=False)
    ]
    for part in parts:
        for name, total in part["totals"].items():
            assert total == sum(row[name] for row in part["rows"]), name
    for name in ("issued", "redeemed", "expired", "clawed_back", "fee", "net"):
        assert sum(p["totals"][name] for p in parts) == everything["totals"][name]
        for i, row in enumerate(everything["rows"]):
            assert sum(p["rows"][i][name] for p in parts) == row[name]


async def test_settlement_csv_matches_json(history: LoyaltyNode):
    n = history
    query = f"from={DAY0 + 1}&to=2025-12-06"
    doc = await n.doc(f"/v1/settlement?{query}")
    assert doc["period"]["to"] == DAY0 + 5
    by_format = await n.csv(f"/v1/settlement?{query}&format=csv")
    by_accept = await n.csv(f"/v1/settlement?{query}", headers={"Accept": "text/csv"})
    assert by_format == by_accept
    rows = by_format
    *merchant_rows, total = rows
    assert [r["merchant"] for r in merchant_rows] == [
        r["merchant"] for r in doc["rows"]
    ]
    for line, row in zip(merchant_rows, doc["rows"], strict=True):
        for name in ("issued", "redeemed", "expired", "clawed_back", "fee",
                     "reimbursement", "net", "liability"):  # fmt: skip
            assert int(line[name]) == row[name], name
        split = {s["issuer"]: s["coins"] for s in row["redeemed_by_issuer"]}
        for column, value in line.items():
            if column.startswith("redeemed_from:"):
                assert int(value) == split.get(column.split(":", 1)[1], 0)
    assert total["merchant"] == "total"
    for name, value in doc["totals"].items():
        assert int(total[name]) == value


async def test_daily_analytics_ranges_and_csv(history: LoyaltyNode):
    n = history
    week = await n.doc(f"/v1/analytics/daily?from={DAY0}&to={DAY0 + 7}")
    assert [d["day"] for d in week["days"]] == list(range(DAY0, DAY0 + 7))
    assert week["period"] == {
        "from": DAY0,
        "to": DAY0 + 7,
        "from_date": "2025-12-01",
        "to_date": "2025-12-08",
    }
    # Half-open, and dates name the same days as numbers.
    same = await n.doc("/v1/analytics/daily?from=2025-12-01&to=2025-12-08")
    assert same["days"] == week["days"]
    two = await n.doc(f"/v1/analytics/daily?from={DAY0 + 2}&to={DAY0 + 4}")
    assert two["days"] == week["days"][2:4]
    # The default: the 30 days up to the latest block's.
    latest_day = n.store.time_ms // 1000 // DAY
    default = await n.doc("/v1/analytics/daily")
    assert [d["day"] for d in default["days"]] == list(
        range(latest_day - 29, latest_day + 1)
    )
    # Day figures add up to the indexer's totals and the settlement's.
    everything = await n.doc(f"/v1/analytics/daily?from={DAY0 - 1}&to={DAY0 + 30}")
    summary = await n.doc("/v1/analytics/summary")
    books = await n.books()
    for name in ("issued", "clawed_back", "expired", "redeemed"):
        total = sum(d[name] for d in everything["days"])
        assert total == books["totals"][name] == summary["totals"][name], name
    for d in everything["days"]:
        if d["issued"]:
            assert d["redemption_rate_bp"] == d["redeemed"] * 10_000 // d["issued"]
        else:
            assert d["redemption_rate_bp"] is None
        assert d["issued"] == d["purchase_issued"] + d["engagement_issued"]
    assert summary["last_7_days"]["issued"] == sum(
        d["issued"]
        for d in everything["days"]
        if latest_day - 6 <= d["day"] <= latest_day
    )

    rows = await n.csv(f"/v1/analytics/daily?from={DAY0}&to={DAY0 + 7}&format=csv")
    assert len(rows) == 7
    for line, day in zip(rows, week["days"], strict=True):
        assert line["date"] == day["date"]
        for name, value in day.items():
            if name == "tiers":
                assert [int(line[f"tier_{i}"]) for i in range(len(value))] == value
            elif name == "redemption_rate_bp":
                assert line[name] == ("" if value is None else str(value))
            elif name != "date":
                assert int(line[name]) == value, name
    msgpack_doc = await n.get(
        f"/v1/analytics/daily?from={DAY0}&to={DAY0 + 7}",
        headers={"Accept": "application/msgpack"},
    )
    assert msgpack_doc.doc == week


@pytest.mark.parametrize(
    ("query", "code", "parameter"),
    [
        ("from=2025-12-05&to=2025-12-05", "invalid_range", "to"),
        ("from=20430&to=20420", "invalid_range", "to"),
        ("from=10000&to=20000", "invalid_range", "from"),
        ("from=2025-02-30", "invalid_parameter", "from"),
        ("from=yesterday", "invalid_parameter", "from"),
        ("to=-1", "invalid_parameter", "to"),
        ("from=1&from=2", "invalid_parameter", "from"),
        ("format=xml", "invalid_parameter", "format"),
        ("since=1", "invalid_parameter", "since"),
    ],
)
async def test_bad_parameters_are_problems(tmp_path, query, code, parameter):
    async with loyalty_node(tmp_path) as n:
        for route in ("/v1/analytics/daily", "/v1/settlement"):
            if route == "/v1/settlement" and query == "from=10000&to=20000":
                continue  # settlement periods have no length limit
            reply = await n.get(f"{route}?{query}")
            assert reply.status == 400, (route, reply.doc)
            assert reply.headers["Content-Type"] == "application/problem+json"
            assert (reply.doc["code"], reply.doc["parameter"]) == (code, parameter)
        for route in ("/v1/program", "/v1/analytics/summary", "/v1/proposals"):
            reply = await n.get(f"{route}?x=1")
            assert (reply.status, reply.doc["code"]) == (400, "invalid_parameter")


async def test_loyalty_documents_match_their_schemas(history: LoyaltyNode):
    n = history
    check = schema_checker(await n.doc("/v1/openapi.json"))
    check("Program", await n.doc("/v1/program"))
    check("Campaigns", await n.doc("/v1/campaigns"))
    check("Proposals", await n.doc("/v1/proposals"))
    check("Settlement", await n.doc("/v1/settlement"))
    check("Settlement", await n.doc(f"/v1/settlement?from={DAY0}&to={DAY0 + 2}"))
    check("AnalyticsDaily", await n.doc("/v1/analytics/daily"))
    check("AnalyticsSummary", await n.doc("/v1/analytics/summary"))
    for customer in CUSTOMERS:
        check("Account", await n.doc(f"/v1/accounts/{customer.address}"))
    for m in MERCHANTS:
        check("Merchant", await n.doc(f"/v1/merchants/{m.address}"))
    check("Block", await n.doc("/v1/blocks/1"))  # program changes in payloads
