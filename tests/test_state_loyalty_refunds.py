"""Refunds and clawbacks (C17, C18), the pending period, expiry to the second,
redemption reversals and the settlement table."""

from __future__ import annotations

import pytest

from state.calendar import civil_from_days, days_from_civil, program_day
from state.changes import ChangeAction
from state.codes import Code
from state.records import COMPANY, PREFIX_EXPIRY
from state.settlement import settlement
from tests.state_helpers import C1, C2, DAY_S, GENESIS_S, M1, M2, b
from tests.test_state_loyalty_support import (
    LoyaltyChain,
    award,
    change,
    loyalty_genesis,
    redeem,
    refund,
    transfer,
)

T0 = GENESIS_S + 3600


def chain_with(tmp_path, program: dict | None = None) -> LoyaltyChain:
    return LoyaltyChain(tmp_path / "db", loyalty_genesis(program))


# --- C17: one order, one award ------------------------------------------------


def test_c17_the_same_order_awarded_again_is_refused(tmp_path) -> None:
    chain = chain_with(tmp_path)
    assert chain.at(T0, award(M1, C1, "O", 1000)) == [Code.OK]
    # Re-signed with a new expiry and another amount, in later blocks.
    for n, amount in enumerate([1000, 5000, 1]):
        assert chain.at(T0 + 1 + n, award(M1, C1, "O", amount)) == [
            Code.DUPLICATE_ORDER
        ]
    assert chain.balance(C1) == 100
    # Another merchant's order "O" is another order.
    assert chain.next(award(M2, C1, "O", 1000)) == [Code.OK]
    assert chain.balance(C1) == 100 + 1500
    chain.close()


# --- C18: buy, spend, refund --------------------------------------------------


def test_c18_full_refund_after_spending_claws_back_and_leaves_debt(tmp_path) -> None:
    chain = chain_with(tmp_path)
    assert chain.at(T0, award(M1, C1, "O", 1000)) == [Code.OK]  # 100 coins
    assert chain.next(redeem(C1, M2, 80)) == [Code.OK]
    raw = b.refund_purchase(M1, chain.chain_id, chain.now + 60, "O", 1000)
    result = chain.block([raw], (chain.now + 1) * 1000)
    events = result.receipts[0].events
    assert result.receipts[0].code == Code.OK
    assert events == (
        ("clawback", C1.public_key, -20),
        ("debt", C1.public_key, 80),
        ("claw", M1.public_key, 100),
    )
    acc = chain.account(C1)
    assert (acc.debt, chain.balance(C1)) == (80, 0)
    assert chain.merchant(M1).clawed_back == 100
    assert chain.order(M1, "O").to_wire() == [C1.public_key, 1000, 100, 1000, 100, 0, 0]

    # A second refund of O, and a refund of an unknown order, are refused.
    assert chain.next(refund(M1, "O", 1000), refund(M1, "nope", 10)) == [
        Code.REFUND_EXCEEDS_ORDER,
        Code.UNKNOWN_ORDER,
    ]
    # Later earnings repay the debt first: 90 of 100 repay, then 10 count.
    assert chain.next(award(M2, C1, "P", 60)) == [Code.OK]  # 90 coins at rate 150
    assert (chain.account(C1).debt, chain.balance(C1)) == (0, 10)
    chain.close()


def test_partial_refunds_claw_back_proportionally_and_cumulatively(tmp_path) -> None:
    chain = chain_with(tmp_path)
    assert chain.at(T0, award(M1, C1, "O", 1000)) == [Code.OK]  # 100
    assert chain.next(refund(M1, "O", 400)) == [Code.OK]  # 40%
    assert chain.balance(C1) == 60
    # Three refunds of a third of an order of 99 coins: 33 each, never more.
    assert chain.next(award(M1, C2, "T", 990)) == [Code.OK]  # 99
    assert chain.next(refund(M1, "T", 331)) == [Code.OK]  # floor(99*331/990) = 33
    assert chain.next(refund(M1, "T", 329)) == [Code.OK]  # floor(99*660/990) - 33
    assert chain.order(M1, "T").clawed == 66
    assert chain.next(refund(M1, "T", 331)) == [Code.REFUND_EXCEEDS_ORDER]
    assert chain.next(refund(M1, "T", 330)) == [Code.OK]
    assert chain.order(M1, "T").clawed == 99
    assert chain.balance(C2) == 0
    chain.close()


def test_refund_claws_only_the_refunding_merchants_coins(tmp_path) -> None:
    chain = chain_with(tmp_path)
    chain.at(T0, award(M1, C1, "O", 1000), award(M2, C1, "X", 100))  # 100 + 150
    chain.next(redeem(C1, M2, 100))  # lot order decides which is spent
    m1_left = chain.account(C1).live_from(M1.public_key, chain.now)
    assert chain.next(refund(M1, "O", 1000)) == [Code.OK]
    acc = chain.account(C1)
    assert acc.debt == 100 - m1_left
    assert acc.live_from(M1.public_key, chain.now) == 0
    assert chain.balance(C1) == 150 - m1_left  # M2's coins are not taken
    chain.close()


def test_fifty_buy_and_refund_cycles_leave_the_customer_at_zero(tmp_path) -> None:
    chain = chain_with(tmp_path)
    for n in range(50):
        assert chain.next(award(M1, C1, f"o{n}", 1000 + n)) == [Code.OK]
        assert chain.next(refund(M1, f"o{n}", 1000 + n)) == [Code.OK]
    assert chain.account(C1) is None  # no coins, no debt: no entry
    m = chain.merchant(M1)
    assert m.issued == m.clawed_back == sum((1000 + n) // 10 for n in range(50))
    chain.close()


# --- the pending period -------------------------------------------------------


def test_pending_coins_count_at_the_end_of_the_return_window(tmp_path) -> None:
    chain = chain_with(tmp_path, {"pending_seconds": 3600})
    result = chain.block([b.award_purchase(M1, chain.chain_id, T0 + 60, C1, "A",
                                           1000)], T0 * 1000)  # fmt: skip
    assert result.receipts[0].events[-1] == ("pending", C1.public_key, 100)
    assert chain.balance_at(C1, T0 + 3599) == 0
    assert chain.balance_at(C1, T0 + 3600) == 100  # a read, no transaction
    assert chain.at(T0 + 3599, redeem(C1, M1, 1)) == [Code.INSUFFICIENT_BALANCE]
    assert chain.at(T0 + 3600, redeem(C1, M1, 1)) == [Code.OK]
    chain.close()


def test_refund_inside_the_window_cancels_the_pending_coins(tmp_path) -> None:
    chain = chain_with(tmp_path, {"pending_seconds": 3600})
    chain.at(T0, award(M1, C1, "A", 1000), award(M1, C1, "B", 500))
    assert chain.at(T0 + 10, refund(M1, "A", 1000)) == [Code.OK]
    acc = chain.account(C1)
    assert [e[0] for e in acc.pending] == [50]  # B stays pending
    assert acc.debt == 0
    assert chain.at(T0 + 3600, redeem(C1, M1, 50)) == [Code.OK]
    chain.close()


# --- expiry -------------------------------------------------------------------


def test_coins_expire_at_the_exact_second_and_are_counted(tmp_path) -> None:
    chain = chain_with(tmp_path, {"expiry": {"policy": "days", "days": 2}})
    chain.at(T0, award(M1, C1, "A", 1000), award(M2, C1, "B", 100))
    expires = (T0 // DAY_S + 3) * DAY_S  # end of day 0 + 2 days
    assert all(lot[1] == expires for lot in chain.account(C1).lots)
    assert chain.balance_at(C1, expires - 1) == 250
    assert chain.balance_at(C1, expires) == 0  # gone before any block
    chain.at(expires - 1, redeem(C1, M1, 10))
    assert chain.merchant(M1).expired == 0
    result = chain.block([], expires * 1000)  # an empty block at that second
    assert chain.account(C1) is None
    assert (chain.merchant(M1).expired, chain.merchant(M2).expired) == (90, 150)
    assert sorted(result.expirations) == sorted(
        [(C1.public_key, M1.public_key, 90), (C1.public_key, M2.public_key, 150)]
    )
    assert not list(chain.store.db.iterator(prefix=PREFIX_EXPIRY))
    chain.close()


@pytest.mark.parametrize("offset", [0, 120, -300])
def test_end_of_month_expiry_in_the_program_zone(tmp_path, offset: int) -> None:
    genesis = loyalty_genesis({"utc_offset_minutes": offset,
                               "expiry": {"policy": "end_of_month"}})  # fmt: skip
    chain = LoyaltyChain(tmp_path / "db", genesis)
    # 2025-12-31 23:30 in the program zone.
    local_midnight = days_from_civil(2026, 1, 1) * DAY_S - offset * 60
    t = local_midnight - 1800
    assert civil_from_days(program_day(t, offset)) == (2025, 12, 31)
    chain.at(t, award(M1, C1, "A", 1000))
    assert chain.account(C1).lots[0][1] == local_midnight
    chain.at(local_midnight - 1)
    assert chain.balance(C1) == 100
    chain.at(local_midnight)
    assert chain.balance(C1) == 0 and chain.merchant(M1).expired == 100
    chain.close()


def test_end_of_year_policy_and_earliest_expiry_spent_first(tmp_path) -> None:
    chain = chain_with(tmp_path, {"expiry": {"policy": "end_of_year"}})
    chain.at(T0, award(M1, C1, "2025", 1000))  # expires 2026-01-01
    new_year = days_from_civil(2026, 1, 1) * DAY_S
    chain.at(new_year + 10, award(M1, C1, "2026", 1000))  # expires 2027-01-01
    assert chain.merchant(M1).expired == 100  # the 2025 lot expired at new year
    chain.at(new_year + 20, award(M2, C1, "late", 10))  # 15 more, 2027 too
    assert chain.next(transfer(C1, C2, 20)) == [Code.OK]
    lots = {tuple(lot[1:3]) for lot in chain.account(C2).lots}
    assert {expires for expires, _ in lots} == {days_from_civil(2027, 1, 1) * DAY_S}
    chain.close()


# --- redemption reversal ------------------------------------------------------


def test_reversal_returns_the_same_lots(tmp_path) -> None:
    chain = chain_with(tmp_path, {"expiry": {"policy": "days", "days": 5}})
    chain.at(T0, award(M1, C1, "A", 1000))
    chain.at(T0 + DAY_S, award(M2, C1, "B", 100))
    before = [list(lot) for lot in chain.account(C1).lots]
    result = chain.block([b.redeem(C1, chain.chain_id, chain.now + 60, M2, 200)],
                         (chain.now + 1) * 1000)  # fmt: skip
    rid = result.txs[0].hash
    assert chain.store.get_state(b"sr" + M2.public_key + M1.public_key) is not None

    def reverse(signer, rid=rid):
        return lambda exp: b.reverse_redemption(signer, chain.chain_id, exp, rid)

    assert chain.next(reverse(M1), reverse(M2, bytes(32))) == [
        Code.NOT_REDEEMING_MERCHANT,
        Code.UNKNOWN_REDEMPTION,
    ]
    assert chain.next(reverse(M2)) == [Code.OK]
    assert [lot[:3] for lot in chain.account(C1).lots] == [lot[:3] for lot in before]
    assert chain.merchant(M2).redeemed == 0
    assert settlement(chain.store.state_items()).matrix == {}
    assert chain.next(reverse(M2)) == [Code.REDEMPTION_ALREADY_REVERSED]
    chain.close()


# --- settlement ---------------------------------------------------------------


def test_settlement_table_for_all_time_and_for_a_period(tmp_path) -> None:
    chain = chain_with(tmp_path, {"expiry": {"policy": "days", "days": 1}})
    chain.at(
        T0,
        change(ChangeAction.MERCHANT_TERMS, [M1.public_key, 3, 2, []]),
        change(ChangeAction.MERCHANT_TERMS, [M2.public_key, 4, 1, []]),
        award(M1, C1, "A", 10_000),  # 1000 from M1
        award(M2, C2, "B", 100),  # 150 from M2
    )
    day0 = T0 // DAY_S
    chain.at(T0 + DAY_S, redeem(C1, M2, 600), refund(M1, "A", 1000))  # claw 100
    chain.at((day0 + 2) * DAY_S)  # C1's 300 and C2's 150 expire (day 0 + 1 day)
    table = settlement(chain.store.state_items())
    rows = {r.merchant: r for r in table.rows}
    m1, m2 = rows[M1.public_key], rows[M2.public_key]
    assert (m1.issued, m1.redeemed, m1.expired, m1.clawed_back) == (1000, 0, 300, 100)
    assert (m2.issued, m2.redeemed, m2.expired, m2.clawed_back) == (150, 600, 150, 0)
    assert m2.redeemed_by_issuer == {M1.public_key: 600}
    assert (m1.fee, m1.net) == (900 * 3, -2700)
    assert (m2.fee, m2.reimbursement, m2.net) == (600, 600, 0)
    assert table.total("net") == m1.net + m2.net
    assert table.liability == 0 and table.debt == 0
    assert COMPANY not in rows

    day1 = settlement(chain.store.state_items(), day0 + 1, day0 + 2)
    rows1 = {r.merchant: r for r in day1.rows}
    assert (rows1[M1.public_key].issued, rows1[M1.public_key].clawed_back) == (0, 100)
    assert rows1[M2.public_key].redeemed == 600
    assert day1.matrix == {(M2.public_key, M1.public_key): 600}
    both = settlement(chain.store.state_items(), day0, day0 + 3)
    assert [(r.issued, r.redeemed, r.expired, r.clawed_back) for r in both.rows] == [
        (r.issued, r.redeemed, r.expired, r.clawed_back) for r in table.rows
    ]
    chain.close()
