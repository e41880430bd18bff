"""The loyalty program through the HTTP API of a running node, one scenario per
industry the coalition targets: a web shop, a restaurant chain, an online
school and an entertainment app. Each drives the program as that business's
systems would (tills, apps, admins) and checks the exact balances, receipts,
settlement rows and analytics figures the rules give.

Block times are set to the second (tests.test_node_loyalty_harness); days are
program days from DAY0, 2025-12-01.
"""

from __future__ import annotations

from client import builders
from state.address import address_of
from state.changes import ChangeAction
from state.records import COMPANY
from state.tx import EngagementKind
from tests.node_helpers import key
from tests.test_node_loyalty_harness import (
    A1,
    A2,
    A3,
    DAY,
    DAY0,
    GENESIS_S,
    events,
    loyalty_node,
    merchant,
)

HOUR = 3600


def row_of(doc: dict, merchant_address: str) -> dict:
    [row] = [r for r in doc["rows"] if r["merchant"] == merchant_address]
    return row


def day_of(doc: dict, day: int) -> dict:
    [row] = [d for d in doc["days"] if d["day"] == day]
    return row


# --- a web shop: spend awards, partial and full refunds, clawback and debt ---------

SHOP, CAFE = key(30), key(31)
ANA = key(40)
SHOP_PROGRAM = {"pending_seconds": 7 * DAY}


async def test_web_shop_awards_refunds_clawback_and_debt(tmp_path):
    merchants = [merchant(SHOP, "Web Shop", 10), merchant(CAFE, "Cafe", 5)]
    async with loyalty_node(tmp_path, SHOP_PROGRAM, merchants) as n:
        shop, cafe, ana = SHOP.address, CAFE.address, ANA.address
        # Settlement terms and a books category, by program change (k = 1).
        n.at(GENESIS_S + 9 * HOUR)
        terms = [
            n.tx(builders.propose_change, A1, ChangeAction.MERCHANT_TERMS,
                 [SHOP.public_key, 2, 1, [["books", 20]]], GENESIS_S + DAY),
            n.tx(builders.propose_change, A1, ChangeAction.MERCHANT_TERMS,
                 [CAFE.public_key, 3, 2, []], GENESIS_S + DAY),
        ]  # fmt: skip
        assert [r["code"] for r in await n.run(*terms)] == ["ok", "ok"]

        # Day 0: 199.99 at 10 per 100 earns 1,999; 259.99 in books with 59.99
        # paid in coins earns floor(20,000 * 20 / 100) = 4,000. Both pending.
        n.at(GENESIS_S + 10 * HOUR)
        w1 = n.tx(builders.award_purchase, SHOP, ana, "W-1", 19_999)
        w2 = n.tx(builders.award_purchase, SHOP, ana, "W-2", 25_999, 5_999, "books")
        r1, r2 = await n.run(w1, w2)
        assert events(r1) == [("earn", ana, 0), ("issue", shop, 1999),
                              ("pending", ana, 1999)]  # fmt: skip
        assert events(r2) == [("earn", ana, 0), ("issue", shop, 4000),
                              ("pending", ana, 4000)]  # fmt: skip
        account = await n.doc(f"/v1/accounts/{ana}")
        assert (account["balance"], account["pending_balance"]) == (0, 5999)
        release = GENESIS_S + 10 * HOUR + 7 * DAY
        assert [(p["order_id"], p["amount"], p["release_at"])
                for p in account["pending"]] == [("W-1", 1999, release),
                                                 ("W-2", 4000, release)]  # fmt: skip

        # Day 2: a partial refund of 50.00 claws floor(4,000 * 5,000 / 25,999)
        # = 769 back from the order's pending coins.
        n.at(GENESIS_S + 2 * DAY + 12 * HOUR)
        [refund] = await n.run(n.tx(builders.refund_purchase, SHOP, "W-2", 5_000))
        assert events(refund) == [("clawback", ana, -769), ("claw", shop, 769)]
        # More than what is left of the order is refused.
        n.at(GENESIS_S + 2 * DAY + 13 * HOUR)
        too_much = n.tx(builders.refund_purchase, SHOP, "W-2", 21_000)
        assert (await n.run(too_much))[0]["code"] == "refund_exceeds_order"

        # Day 8: released (a read shows it with no transaction of Ana's); she
        # spends 5,000 of 5,230 at the cafe.
        await n.run(at=GENESIS_S + 8 * DAY + 12 * HOUR)
        account = await n.doc(f"/v1/accounts/{ana}")
        assert (account["balance"], account["pending_balance"]) == (5230, 0)
        assert account["pending"] == []
        assert [lot["amount"] for lot in account["lots"]] == [5230]
        n.at(GENESIS_S + 8 * DAY + 13 * HOUR)
        spend = n.tx(builders.redeem, ANA, cafe, 5000, "basket-1")
        assert events((await n.run(spend))[0]) == [
            ("redeem", ana, -5000),
            ("accept", cafe, 5000),
        ]

        # Day 9: the full refund of W-1 claws 1,999: the 230 still held and
        # 1,769 of debt.
        n.at(GENESIS_S + 9 * DAY + 12 * HOUR)
        [full] = await n.run(n.tx(builders.refund_purchase, SHOP, "W-1", 19_999))
        assert events(full) == [("clawback", ana, -230), ("debt", ana, 1769),
                                ("claw", shop, 1999)]  # fmt: skip
        account = await n.doc(f"/v1/accounts/{ana}")
        assert (account["balance"], account["debt"]) == (0, 1769)

        # Day 10: the cafe's award of 2,000 repays the debt first.
        n.at(GENESIS_S + 10 * DAY + 12 * HOUR)
        award = n.tx(builders.award_purchase, CAFE, ana, "C-1", 40_000)
        assert events((await n.run(award))[0]) == [
            ("earn", ana, 0), ("issue", cafe, 2000),
            ("pending", ana, 231), ("repay", ana, 1769),
        ]  # fmt: skip
        account = await n.doc(f"/v1/accounts/{ana}")
        assert (account["balance"], account["pending_balance"]) == (0, 231)
        assert account["debt"] == 0

        books = await n.books()
        assert row_of(books, shop) | {"redeemed_by_issuer": None} == {
            "merchant": shop, "name": "Web Shop", "issued": 5999, "redeemed": 0,
            "expired": 0, "clawed_back": 2768, "price_per_coin": 2,
            "reimbursement_per_coin": 1, "fee": (5999 - 2768) * 2,
            "reimbursement": 0, "net": -6462, "liability": 0,
            "redeemed_by_issuer": None,
        }  # fmt: skip
        cafe_row = row_of(books, cafe)
        assert (cafe_row["issued"], cafe_row["redeemed"], cafe_row["fee"]) == (
            2000, 5000, 6000,
        )  # fmt: skip
        assert (cafe_row["reimbursement"], cafe_row["net"]) == (10_000, 4000)
        assert cafe_row["redeemed_by_issuer"] == [{"issuer": shop, "coins": 5000}]
        assert books["matrix"] == [{"redeemer": cafe, "issuer": shop, "coins": 5000}]
        assert books["liability"] == {
            "total": 231,
            "by_issuer": [{"issuer": cafe, "coins": 231}],
        }

        # Days 8 and 9 only: the redemption and the full refund.
        period = await n.doc(f"/v1/settlement?from={DAY0 + 8}&to={DAY0 + 10}")
        assert period["period"]["from_date"] == "2025-12-09"
        shop_row = row_of(period, shop)
        assert (shop_row["issued"], shop_row["clawed_back"]) == (0, 1999)
        assert row_of(period, cafe)["redeemed"] == 5000
        assert period["totals"]["issued"] == 0

        daily = await n.doc(f"/v1/analytics/daily?from={DAY0}&to={DAY0 + 11}")
        day0, day2 = day_of(daily, DAY0), day_of(daily, DAY0 + 2)
        assert (day0["issued"], day0["awards"], day0["active_customers"]) == (
            5999, 2, 1,
        )  # fmt: skip
        assert (day2["clawed_back"], day2["issued"], day2["active_customers"]) == (
            769, 0, 1,
        )  # fmt: skip
        day8 = day_of(daily, DAY0 + 8)
        assert (day8["redeemed"], day8["redemptions"], day8["redemption_rate_bp"]) == (
            5000, 1, None,
        )  # fmt: skip
        assert day_of(daily, DAY0 + 9)["clawed_back"] == 1999
        assert day_of(daily, DAY0 + 10)["issued"] == 2000
        assert day_of(daily, DAY0 + 5)["active_customers"] == 0
        summary = await n.doc("/v1/analytics/summary")
        assert summary["totals"]["issued"] == 7999
        assert summary["totals"]["clawed_back"] == 2768
        assert summary["totals"]["redemption_rate_bp"] == 5000 * 10_000 // 7999
        assert summary["liability"]["total"] == 231


# --- a restaurant chain: visits, a holiday campaign to the second, k of n ----------

BISTRO, PIZZA = key(32), key(33)
BEA = key(41)
# UTC+01:00: the program's days begin at 23:00 UTC.
RESTAURANT_PROGRAM = {
    "utc_offset_minutes": 60,
    "admin_threshold": 2,
    "velocity_per_day": 2,
}
XMAS_START = 1_766_530_800  # 2025-12-24T00:00:00+01:00
XMAS_END = XMAS_START + 3 * DAY  # 2025-12-27T00:00:00+01:00


async def test_restaurant_holiday_campaign_boundaries(tmp_path):
    merchants = [merchant(BISTRO, "Bistro", 10), merchant(PIZZA, "Pizza", 10)]
    admins = (A1, A2, A3)
    async with loyalty_node(tmp_path, RESTAURANT_PROGRAM, merchants, admins) as n:
        bistro, bea = BISTRO.address, BEA.address
        program = await n.doc("/v1/program")
        assert (program["source"], program["admin_threshold"]) == ("genesis", 2)
        assert program["utc_offset_minutes"] == 60

        # 2 of 3 admins: the proposal waits for a second approval.
        n.at(XMAS_START - 3 * DAY)
        campaign = [
            "xmas", XMAS_START, XMAS_END, 20_000, 0, 0, [BISTRO.public_key],
        ]  # fmt: skip
        proposal = n.tx(builders.propose_change, A1, ChangeAction.CAMPAIGN,
                        campaign, XMAS_START)  # fmt: skip
        [proposed] = await n.run(proposal)
        assert events(proposed) == [("change_proposed", A1.address, 7)]
        open_ = (await n.doc("/v1/proposals"))["proposals"]
        proposal_id = open_[0]["id"]
        assert open_ == [
            {
                "id": proposal_id,
                "proposer": A1.address,
                "action": "campaign",
                "action_number": 7,
                "args": {
                    "campaign_id": "xmas", "start": XMAS_START, "end": XMAS_END,
                    "multiplier_bp": 20_000, "bonus": 0, "customer_cap": 0,
                    "merchants": [bistro],
                },
                "deadline": XMAS_START,
                "approvals": [A1.address],
                "approvals_needed": 1,
                "status": "open",
            }
        ]  # fmt: skip
        assert (await n.doc("/v1/campaigns"))["campaigns"] == []
        n.at(XMAS_START - 2 * DAY)
        approve = n.tx(builders.approve_change, A2, bytes.fromhex(proposal_id))
        assert events((await n.run(approve))[0]) == [("change_applied", A2.address, 7)]
        assert (await n.doc("/v1/proposals"))["proposals"] == []
        [xmas] = (await n.doc("/v1/campaigns"))["campaigns"]
        assert (xmas["status"], xmas["merchants"]) == ("scheduled", [bistro])

        # Visits of 50.00 (500 coins) around the boundaries, to the second.
        async def visit(at: int, till=BISTRO) -> int:
            n.at(at)
            award = n.tx(builders.award_purchase, till, bea, n.ref(), 5000)
            [receipt] = await n.run(award)
            assert receipt["code"] == "ok", receipt
            return receipt["events"][1]["delta"]

        assert await visit(XMAS_START - 1) == 500
        assert await visit(XMAS_START) == 1000  # start inclusive: 2x
        assert await visit(XMAS_START + HOUR, PIZZA) == 500  # not its campaign
        assert (await n.doc("/v1/campaigns"))["campaigns"][0]["status"] == "active"
        assert await visit(XMAS_END - 1) == 1000
        assert await visit(XMAS_END) == 500  # end exclusive
        assert await visit(XMAS_END + 30, PIZZA) == 500
        # Velocity: the third visit of one program day is refused.
        n.at(XMAS_END + 60)
        third = n.tx(builders.award_purchase, BISTRO, bea, n.ref(), 5000)
        assert (await n.run(third))[0]["code"] == "velocity_limit_exceeded"

        account = await n.doc(f"/v1/accounts/{bea}")
        assert account["balance"] == 500 + 1000 + 500 + 1000 + 500 + 500
        assert account["today"]["awards"] == 2  # XMAS_END's day: 2 visits

        first = XMAS_START // DAY + 1  # program day of 2025-12-24 at UTC+1
        daily = await n.doc("/v1/analytics/daily?from=2025-12-23&to=2025-12-28")
        assert [d["date"] for d in daily["days"]][1] == "2025-12-24"
        assert [d["campaign_issued"] for d in daily["days"]] == [0, 1000, 0, 1000, 0]
        assert [d["issued"] for d in daily["days"]] == [500, 1500, 0, 1000, 1000]
        assert day_of(daily, first)["awards"] == 2
        summary = await n.doc("/v1/analytics/summary")
        [lift] = summary["campaigns"]
        assert lift == {
            "campaign_id": "xmas", "start": XMAS_START, "end": XMAS_END,
            "status": "ended", "merchants": [bistro], "first_day": first,
            "days": 3, "issued_during": 2000, "awards_during": 2,
            "issued_before": 500, "awards_before": 1, "lift_bp": 40_000,
        }  # fmt: skip
        books = await n.books()
        assert row_of(books, bistro)["issued"] == 3000
        assert row_of(books, PIZZA.address)["issued"] == 1000
        assert books["liability"]["total"] == 4000


# --- an online school: engagement rewards with daily caps --------------------------

SCHOOL = key(34)
STU1, STU2 = key(42), key(43)
# Completed homework is reported as a survey, a tutor discussion as a
# consultation: the program's engagement kinds.
SCHOOL_PROGRAM = {
    "engagement": {
        "survey": {"coins": 30, "daily_cap": 2},
        "consultation": {"coins": 50, "daily_cap": 1},
    }
}


async def test_online_school_engagement_with_daily_caps(tmp_path):
    merchants = [merchant(SCHOOL, "Online School", 10)]
    async with loyalty_node(tmp_path, SCHOOL_PROGRAM, merchants) as n:
        school, s1, s2 = SCHOOL.address, STU1.address, STU2.address
        homework, talk = EngagementKind.SURVEY, EngagementKind.CONSULTATION

        n.at(GENESIS_S + 15 * HOUR)
        day0 = [
            n.tx(builders.engagement_reward, SCHOOL, s1, homework, "hw-1"),
            n.tx(builders.engagement_reward, SCHOOL, s1, homework, "hw-2"),
            n.tx(builders.engagement_reward, SCHOOL, s1, homework, "hw-3"),
            n.tx(builders.engagement_reward, SCHOOL, s1, talk, "disc-1"),
            n.tx(builders.engagement_reward, SCHOOL, s1, talk, "disc-2"),
        ]
        codes = [r["code"] for r in await n.run(*day0)]
        assert codes == ["ok", "ok", "engagement_cap_exceeded", "ok",
                         "engagement_cap_exceeded"]  # fmt: skip
        account = await n.doc(f"/v1/accounts/{s1}")
        assert account["balance"] == 110
        assert (account["today"]["survey"], account["today"]["consultation"]) == (
            2, 1,
        )  # fmt: skip
        # A retried reward (same reference, new transaction) is credited once.
        n.at(GENESIS_S + 16 * HOUR)
        retry = n.tx(builders.engagement_reward, SCHOOL, s1, homework, "hw-1")
        assert (await n.run(retry))[0]["code"] == "duplicate_reference"

        # Day 1: the caps reset; the company rewards a survey itself.
        n.at(GENESIS_S + DAY + 9 * HOUR)
        day1 = [
            n.tx(builders.engagement_reward, SCHOOL, s1, homework, "hw-3"),
            n.tx(builders.engagement_reward, SCHOOL, s2, talk, "disc-3"),
            n.tx(builders.engagement_reward, A1, s2, homework, "company-1"),
            n.tx(builders.award_purchase, SCHOOL, s2, "course-1", 49_900),
        ]
        receipts = await n.run(*day1)
        assert [r["code"] for r in receipts] == ["ok"] * 4
        company = address_of(COMPANY)
        assert events(receipts[2]) == [("earn", s2, 30), ("issue", company, 30)]
        n.at(GENESIS_S + DAY + 10 * HOUR)
        [spent] = await n.run(n.tx(builders.redeem, STU2, school, 100, "snack"))
        assert spent["code"] == "ok"
        assert (await n.doc(f"/v1/accounts/{s2}"))["balance"] == 50 + 30 + 4990 - 100

        books = await n.books()
        operator = row_of(books, company)
        assert (operator["name"], operator["issued"]) == ("Program operator", 30)
        school_row = row_of(books, school)
        assert (school_row["issued"], school_row["redeemed"]) == (
            30 * 3 + 50 * 2 + 4990,
            100,
        )
        # Lots that never expire are spent by issuer key: the company's first.
        assert school_row["redeemed_by_issuer"] == [
            {"issuer": company, "coins": 30},
            {"issuer": school, "coins": 70},
        ]
        assert books["liability"]["total"] == 140 + 4970

        daily = await n.doc(f"/v1/analytics/daily?from={DAY0}&to={DAY0 + 2}")
        d0, d1 = daily["days"]
        assert (d0["engagement_issued"], d0["engagements"]) == (110, 3)
        assert (d0["active_customers"], d0["new_customers"]) == (1, 1)
        assert (d1["engagement_issued"], d1["engagements"]) == (110, 3)
        assert (d1["purchase_issued"], d1["issued"]) == (4990, 5100)
        assert (d1["active_customers"], d1["new_customers"]) == (2, 1)
        assert d1["redemption_rate_bp"] == 100 * 10_000 // 5100
        summary = await n.doc("/v1/analytics/summary")
        assert summary["last_7_days"]["active_customers"] == 2
        assert summary["totals"]["customers"] == 2


# --- an entertainment app: engagement with caps, tiers, expiry --------------------

APP = key(35)
EVE, FRED = key(44), key(45)
APP_PROGRAM = {
    "customer_daily_cap": 2000,
    "tiers": {
        "window_days": 30,
        "levels": [
            {"threshold": 1000, "multiplier_bp": 12_500},
            {"threshold": 3000, "multiplier_bp": 15_000},
        ],
    },
    "engagement": {"feedback": {"coins": 10, "daily_cap": 3}},
    # Coins earned on day D expire at the start of day D + 2.
    "expiry": {"policy": "days", "days": 1},
}


async def test_entertainment_app_tiers_caps_and_expiry(tmp_path):
    async with loyalty_node(tmp_path, APP_PROGRAM, [merchant(APP, "Stream+", 10)]) as n:
        app, eve, fred = APP.address, EVE.address, FRED.address

        async def award(at: int, customer, amount: int) -> dict:
            n.at(at)
            tx = n.tx(builders.award_purchase, APP, customer, n.ref(), amount)
            return (await n.run(tx))[0]

        t = GENESIS_S + 18 * HOUR
        assert events(await award(t, eve, 8000))[1][2] == 800  # tier 0
        assert (await n.doc(f"/v1/accounts/{eve}"))["tier"] == 0
        assert events(await award(t + 1, eve, 3000))[1][2] == 300  # now 1,100
        account = await n.doc(f"/v1/accounts/{eve}")
        assert (account["tier"], account["tier_multiplier_bp"]) == (1, 12_500)
        assert account["tier_window_earned"] == 1100
        # Tier 1: floor(600 * 1.25) = 750; the day's earnings reach 1,850.
        assert events(await award(t + 2, eve, 6000))[1][2] == 750
        # 250 more would pass the daily cap of 2,000.
        assert (await award(t + 3, eve, 2000))["code"] == "customer_daily_cap_exceeded"
        # 150 exactly reaches it: floor(120 * 1.25) = 150.
        assert events(await award(t + 4, eve, 1200))[1][2] == 150
        assert (await n.doc(f"/v1/accounts/{eve}"))["today"]["earned"] == 2000
        assert events(await award(t + 5, fred, 1000))[1][2] == 100

        n.at(t + 6)
        likes = [n.tx(builders.engagement_reward, APP, fred, EngagementKind.FEEDBACK,
                      f"like-{i}") for i in range(4)]  # fmt: skip
        assert [r["code"] for r in await n.run(*likes)] == [
            "ok", "ok", "ok", "engagement_cap_exceeded",
        ]  # fmt: skip

        # Day 1: 1,000 base at 1.25x = 1,250; the window holds 3,250: tier 2.
        assert events(await award(GENESIS_S + DAY + HOUR, eve, 10_000))[1][2] == 1250
        account = await n.doc(f"/v1/accounts/{eve}")
        assert (account["tier"], account["balance"]) == (2, 2000 + 1250)

        # Day 0's coins count until the last second of day 1 and are gone at
        # the first second of day 2, read before any transaction of Eve's.
        await n.run(at=GENESIS_S + 2 * DAY - 1)
        assert (await n.doc(f"/v1/accounts/{eve}"))["balance"] == 3250
        await n.run(at=GENESIS_S + 2 * DAY)
        account = await n.doc(f"/v1/accounts/{eve}")
        assert (account["balance"], [lot["amount"] for lot in account["lots"]]) == (
            1250, [1250],
        )  # fmt: skip
        assert (await n.doc(f"/v1/accounts/{fred}"))["balance"] == 0

        books = await n.books()
        row = row_of(books, app)
        assert (row["issued"], row["expired"]) == (2000 + 100 + 30 + 1250, 2130)
        assert books["liability"]["total"] == 1250
        daily = await n.doc(f"/v1/analytics/daily?from={DAY0}&to={DAY0 + 3}")
        d0, d1, d2 = daily["days"]
        assert (d0["issued"], d0["awards"], d0["engagements"]) == (2130, 5, 3)
        assert d0["tiers"] == [1, 1]  # Fred at 0, Eve at 1 after day 0
        assert d1["tiers"] == [1, 0, 1]  # Eve reached tier 2 on day 1
        assert (d2["expired"], d2["issued"], d2["active_customers"]) == (2130, 0, 0)
        assert d2["tiers"] == [1, 0, 1]  # carried over from day 1
        summary = await n.doc("/v1/analytics/summary")
        assert summary["tiers"] == [1, 0, 1]
        assert summary["totals"]["expired"] == 2130
