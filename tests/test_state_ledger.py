"""The ledger rules: each transaction kind and each reason code the ledger gives,
with the exact balances, lots and merchant counters after the block."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from client.keys import Keypair
from state.block import Receipt, decode_receipts
from state.codec import encode
from state.codes import ADMISSION_CODES, Code
from state.ledger import (
    KEY_PROGRAM,
    MAX_BALANCE,
    Ledger,
    Merchant,
    Program,
    StateView,
    account_key,
    merchant_key,
)
from state.root import Accumulator
from state.tx import decode_tx
from tests.state_helpers import (
    ADMIN,
    C1,
    C2,
    C3,
    C4,
    DAY_S,
    GENESIS_S,
    M1,
    M2,
    M3,
    OUTSIDER,
    Chain,
    b,
    codes,
    key,
    make_genesis,
    merchant_doc,
)

M_SUSPENDED = key(13)
M_NEW = key(14)
DAY0 = GENESIS_S // DAY_S  # the program day of genesis at utc offset 0


@pytest.fixture
def chain(tmp_path) -> Chain:
    c = Chain(tmp_path / "db")
    yield c
    c.close()


def lots(chain: Chain, kp: Keypair) -> list[tuple[int, int, bytes]]:
    """An account's lots as (amount, expires_at, issuer)."""
    acc = chain.account(kp)
    return [] if acc is None else [(a, e, i) for a, e, i, _ in acc.lots]


def counters(chain: Chain, kp: Keypair) -> tuple[int, int, int, int]:
    """A merchant's (issued, redeemed, day, issued_on_day)."""
    m = chain.merchant(kp)
    return m.issued, m.redeemed, m.day, m.issued_on_day


# --- admin: merchants ---------------------------------------------------------


def test_register_merchant_creates_an_active_merchant(chain: Chain) -> None:
    raw = b.register_merchant(ADMIN, chain.chain_id, chain.exp, M3, "Three", 25, 5000)
    result = chain.block([raw])
    assert result.receipts == [Receipt(Code.OK, (("register", M3.public_key, 0),))]
    assert chain.merchant(M3).to_wire() == ["Three", 25, 5000, True, 0, 0, 0, 0]

    # It can award at its rate straight away: 401 * 25 // 100 = 100.
    award = b.award_purchase(M3, chain.chain_id, chain.exp, C1, "o-1", 401)
    assert chain.run([award]) == [Code.OK]
    assert chain.balance(C1) == 100
    assert counters(chain, M3) == (100, 0, DAY0, 100)


def test_register_and_use_in_the_same_block(chain: Chain) -> None:
    exp = chain.exp
    raws = [
        b.award_purchase(M3, chain.chain_id, exp, C1, "early", 1000),
        b.register_merchant(ADMIN, chain.chain_id, exp, M3, "Three", 10, 5000),
        b.award_purchase(M3, chain.chain_id, exp, C1, "late", 1000),
    ]
    assert chain.run(raws) == [Code.UNKNOWN_MERCHANT, Code.OK, Code.OK]
    assert chain.balance(C1) == 100
    assert chain.order(M3, "early") is None
    assert chain.order(M3, "late").to_wire() == [C1.public_key, 1000, 100, 0]


def test_register_existing_merchant_is_refused_and_changes_nothing(
    chain: Chain,
) -> None:
    before = chain.state()
    raw = b.register_merchant(ADMIN, chain.chain_id, chain.exp, M1, "Again", 99, 1)
    assert chain.run([raw]) == [Code.MERCHANT_EXISTS]
    assert chain.state() == before
    assert chain.merchant(M1).to_wire() == [
        "Merchant One",
        10,
        10**12,
        True,
        0,
        0,
        0,
        0,
    ]


def test_update_merchant_changes_terms_and_keeps_counters(chain: Chain) -> None:
    exp = chain.exp
    chain.run(
        [
            b.award_purchase(M1, chain.chain_id, exp, C1, "o-1", 19_999),
            b.redeem(C1, chain.chain_id, exp, M1, 999),
        ]
    )
    assert counters(chain, M1) == (1999, 999, DAY0, 1999)
    exp = chain.exp
    raw = b.update_merchant(ADMIN, chain.chain_id, exp, M1, "One+", 50, 2499, True)
    result = chain.block([raw])
    assert result.receipts == [Receipt(Code.OK, (("update", M1.public_key, 0),))]
    assert chain.merchant(M1).to_wire() == [
        "One+",
        50,
        2499,
        True,
        1999,
        999,
        DAY0,
        1999,
    ]
    # The new rate applies to the next award: 1001 * 50 // 100 = 500.
    award = b.award_purchase(M1, chain.chain_id, chain.exp, C2, "o-2", 1001)
    assert chain.run([award]) == [Code.OK]
    assert chain.balance(C2) == 500
    # The lowered cap counts what was issued today before the update.
    one_more = b.award_purchase(M1, chain.chain_id, chain.exp, C2, "o-3", 2)
    assert chain.run([one_more]) == [Code.DAILY_CAP_EXCEEDED]
    assert counters(chain, M1) == (2499, 999, DAY0, 2499)


def test_update_unknown_merchant(chain: Chain) -> None:
    before = chain.state()
    raw = b.update_merchant(ADMIN, chain.chain_id, chain.exp, M3, "X", 1, 1, True)
    assert chain.run([raw]) == [Code.UNKNOWN_MERCHANT]
    assert chain.state() == before
    assert chain.merchant(M3) is None


@pytest.mark.parametrize(
    "make",
    [
        lambda c: b.register_merchant(OUTSIDER, c.chain_id, c.exp, M3, "X", 10, 10),
        lambda c: b.update_merchant(OUTSIDER, c.chain_id, c.exp, M1, "X", 0, 0, False),
        lambda c: b.set_account_frozen(OUTSIDER, c.chain_id, c.exp, C1, True, "no"),
        # A merchant is not an admin either, not even over itself.
        lambda c: b.update_merchant(M1, c.chain_id, c.exp, M1, "X", 10_000, 0, True),
        lambda c: b.set_account_frozen(C1, c.chain_id, c.exp, C1, False),
    ],
    ids=["register", "update", "freeze", "merchant-updates-itself", "self-unfreeze"],
)
def test_admin_operations_by_non_admins_are_unauthorised(
    chain: Chain, make: Callable[[Chain], bytes]
) -> None:
    before = chain.state()
    assert chain.run([make(chain)]) == [Code.UNAUTHORISED]
    assert chain.state() == before


def test_second_admin_from_genesis_is_authorised(tmp_path) -> None:
    chain = Chain(tmp_path / "db", make_genesis(admins=(ADMIN, OUTSIDER)))
    raw = b.register_merchant(OUTSIDER, chain.chain_id, chain.exp, M3, "T", 1, 1)
    assert chain.run([raw]) == [Code.OK]
    chain.close()


def test_suspended_merchant_cannot_award_or_accept_redemptions(chain: Chain) -> None:
    exp = chain.exp
    chain.run(
        [
            b.award_purchase(M1, chain.chain_id, exp, C1, "o-1", 10_000),  # 1000
            b.award_purchase(M2, chain.chain_id, exp, C1, "o-2", 100),  # 150
        ]
    )
    suspend = b.update_merchant(
        ADMIN, chain.chain_id, chain.exp, M1, "Merchant One", 10, 10**12, False
    )
    assert chain.run([suspend]) == [Code.OK]
    assert chain.merchant(M1).active is False
    before = chain.state()

    exp = chain.exp
    refused = [
        b.award_purchase(M1, chain.chain_id, exp, C2, "o-3", 10_000),
        b.redeem(C1, chain.chain_id, exp, M1, 10),
    ]
    assert chain.run(refused) == [Code.MERCHANT_SUSPENDED] * 2
    assert chain.state() == before

    # Coins it issued stay spendable elsewhere.
    assert chain.run([b.redeem(C1, chain.chain_id, chain.exp, M2, 1100)]) == [Code.OK]
    assert chain.balance(C1) == 50
    assert counters(chain, M1)[:2] == (1000, 0)
    assert counters(chain, M2)[:2] == (150, 1100)

    # Reactivated, it awards again.
    resume = b.update_merchant(
        ADMIN, chain.chain_id, chain.exp, M1, "Merchant One", 10, 10**12, True
    )
    assert chain.run([resume]) == [Code.OK]
    again = b.award_purchase(M1, chain.chain_id, chain.exp, C2, "o-3", 10_000)
    assert chain.run([again]) == [Code.OK]
    assert chain.balance(C2) == 1000


# --- admin: freezing ----------------------------------------------------------


def test_freeze_and_unfreeze_an_account_without_coins(chain: Chain) -> None:
    freeze = b.set_account_frozen(ADMIN, chain.chain_id, chain.exp, C1, True, "kyc")
    result = chain.block([freeze])
    assert result.receipts == [Receipt(Code.OK, (("freeze", C1.public_key, 0),))]
    assert chain.account(C1).to_wire() == [True, 0, []]

    unfreeze = b.set_account_frozen(ADMIN, chain.chain_id, chain.exp, C1, False)
    result = chain.block([unfreeze])
    assert result.receipts == [Receipt(Code.OK, (("unfreeze", C1.public_key, 0),))]
    # An empty, unfrozen account is no entry at all.
    assert chain.account(C1) is None
    assert account_key(C1.public_key) not in chain.state()


def test_frozen_account_can_neither_receive_nor_spend(chain: Chain) -> None:
    exp = chain.exp
    chain.run(
        [
            b.award_purchase(M1, chain.chain_id, exp, C1, "o-1", 10_000),  # 1000
            b.award_purchase(M1, chain.chain_id, exp, C2, "o-2", 10_000),  # 1000
            b.set_account_frozen(ADMIN, chain.chain_id, exp, C1, True, "fraud"),
        ]
    )
    assert chain.account(C1).to_wire()[:2] == [True, 0]
    before = chain.state()

    exp = chain.exp
    refused = [
        b.award_purchase(M1, chain.chain_id, exp, C1, "o-3", 10_000),  # in: award
        b.transfer(C2, chain.chain_id, exp, C1, 10),  # in: transfer
        b.transfer(C1, chain.chain_id, exp, C2, 10),  # out: transfer
        b.redeem(C1, chain.chain_id, exp, M1, 10),  # out: redeem
    ]
    assert chain.run(refused) == [Code.ACCOUNT_FROZEN] * 4
    assert chain.state() == before
    assert chain.order(M1, "o-3") is None  # the refused award left no order

    unfreeze = b.set_account_frozen(ADMIN, chain.chain_id, chain.exp, C1, False)
    assert chain.run([unfreeze]) == [Code.OK]
    exp = chain.exp
    allowed = [
        b.award_purchase(M1, chain.chain_id, exp, C1, "o-3", 10_000),
        b.transfer(C2, chain.chain_id, exp, C1, 10),
        b.transfer(C1, chain.chain_id, exp, C2, 20),
        b.redeem(C1, chain.chain_id, exp, M1, 30),
    ]
    assert chain.run(allowed) == [Code.OK] * 4
    assert chain.balance(C1) == 1000 + 1000 + 10 - 20 - 30
    assert chain.balance(C2) == 1000 - 10 + 20
    assert counters(chain, M1)[:2] == (3000, 30)


# --- awards -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("merchant", "amount", "coins"),
    [
        (M1, 19_999, 1999),  # rate 10: floor(1999.9)
        (M2, 19_999, 29_998),  # rate 150: floor(29998.5)
        (M1, 10, 1),
        (M1, 9, 0),  # floor(0.9): an order that earns nothing
        (M2, 1, 1),  # floor(1.5)
        (M1, 10**12, 10**11),
    ],
)
def test_award_coins_are_floor_of_amount_times_rate(
    chain: Chain, merchant: Keypair, amount: int, coins: int
) -> None:
    raw = b.award_purchase(merchant, chain.chain_id, chain.exp, C1, "ord", amount)
    result = chain.block([raw])
    assert result.receipts == [
        Receipt(
            Code.OK,
            (("earn", C1.public_key, coins), ("issue", merchant.public_key, coins)),
        )
    ]
    assert chain.balance(C1) == coins
    expected_lots = [(coins, 0, merchant.public_key)] if coins else []
    assert lots(chain, C1) == expected_lots
    assert counters(chain, merchant) == (coins, 0, DAY0, coins)
    assert chain.order(merchant, "ord").to_wire() == [C1.public_key, amount, coins, 0]
    if coins:
        assert chain.account(C1).lots[0][3] == chain.store.time_ms // 1000


def test_rate_zero_merchant_records_the_order_and_issues_nothing(tmp_path) -> None:
    genesis = make_genesis(merchants=[merchant_doc(M3, "Zero", 0, 10)])
    chain = Chain(tmp_path / "db", genesis)
    raw = b.award_purchase(M3, chain.chain_id, chain.exp, C1, "o", 10**12)
    assert chain.run([raw]) == [Code.OK]
    assert chain.account(C1) is None
    assert chain.order(M3, "o").to_wire() == [C1.public_key, 10**12, 0, 0]
    assert counters(chain, M3) == (0, 0, DAY0, 0)
    chain.close()


def test_awards_accumulate_in_one_lot_per_issuer(chain: Chain) -> None:
    exp = chain.exp
    chain.run(
        [
            b.award_purchase(M1, chain.chain_id, exp, C1, "a", 1000),  # 100
            b.award_purchase(M2, chain.chain_id, exp, C1, "a", 1000),  # 1500
            b.award_purchase(M1, chain.chain_id, exp, C1, "b", 2345),  # 234
        ]
    )
    chain.run([b.award_purchase(M1, chain.chain_id, chain.exp, C1, "c", 10)])  # 1
    expected = sorted(
        [(335, 0, M1.public_key), (1500, 0, M2.public_key)], key=lambda x: x[2]
    )
    assert lots(chain, C1) == expected
    assert chain.balance(C1) == 1835
    assert counters(chain, M1) == (335, 0, DAY0, 335)
    assert counters(chain, M2) == (1500, 0, DAY0, 1500)


def test_merchant_cannot_award_itself(chain: Chain) -> None:
    before = chain.state()
    raw = b.award_purchase(M1, chain.chain_id, chain.exp, M1, "me", 1000)
    assert chain.run([raw]) == [Code.INVALID_RECIPIENT]
    assert chain.state() == before


def test_award_by_unknown_merchant(chain: Chain) -> None:
    before = chain.state()
    raw = b.award_purchase(C4, chain.chain_id, chain.exp, C1, "o", 1000)
    assert chain.run([raw]) == [Code.UNKNOWN_MERCHANT]
    assert chain.state() == before


def test_duplicate_order_is_per_merchant(chain: Chain) -> None:
    exp = chain.exp
    first = b.award_purchase(M1, chain.chain_id, exp, C1, "order-7", 1000)
    # Same merchant and order id, in the same block: another amount and
    # customer make it a different transaction, but the same order.
    same_block = b.award_purchase(M1, chain.chain_id, exp, C2, "order-7", 5000)
    # Another merchant with the same order id is another order.
    other_merchant = b.award_purchase(M2, chain.chain_id, exp, C1, "order-7", 1000)
    assert chain.run([first, same_block, other_merchant]) == [
        Code.OK,
        Code.DUPLICATE_ORDER,
        Code.OK,
    ]
    assert chain.balance(C1) == 100 + 1500
    assert chain.balance(C2) == 0
    assert counters(chain, M1) == (100, 0, DAY0, 100)
    assert chain.order(M1, "order-7").to_wire() == [C1.public_key, 1000, 100, 0]
    assert chain.order(M2, "order-7").to_wire() == [C1.public_key, 1000, 1500, 0]

    before = chain.state()
    later = b.award_purchase(M1, chain.chain_id, chain.exp, C1, "order-7", 1000)
    assert chain.run([later]) == [Code.DUPLICATE_ORDER]
    assert chain.state() == before
    # Order ids are compared exactly: another case is another order.
    other_case = b.award_purchase(M1, chain.chain_id, chain.exp, C1, "ORDER-7", 10)
    assert chain.run([other_case]) == [Code.OK]


# --- daily cap ----------------------------------------------------------------


def capped_chain(tmp_path, offset_minutes: int) -> Chain:
    genesis = make_genesis(
        merchants=[merchant_doc(M3, "Capped", 100, 1000)],
        utc_offset_minutes=offset_minutes,
    )
    return Chain(tmp_path / "db", genesis)


@pytest.mark.parametrize("offset", [0, 120, -300, 840, -840, 330])
def test_daily_cap_exactly_reached_then_exceeded_then_reset(
    tmp_path, offset: int
) -> None:
    chain = capped_chain(tmp_path, offset)
    cid = chain.chain_id
    # The first program midnight more than an hour after genesis.
    day = (GENESIS_S + 3600 + offset * 60) // DAY_S
    midnight_s = (day + 1) * DAY_S - offset * 60
    assert (midnight_s + offset * 60) % DAY_S == 0
    if offset:
        assert midnight_s % DAY_S != 0  # the offset moves the boundary off UTC

    last_ms = midnight_s * 1000 - 1  # the last millisecond of program day `day`
    exp = last_ms // 1000 + 60
    result = chain.block(
        [
            b.award_purchase(M3, cid, exp, C1, "a", 600),
            b.award_purchase(M3, cid, exp, C2, "b", 400),  # exactly at the cap
            b.award_purchase(M3, cid, exp, C1, "c", 1),  # one coin over
            b.award_purchase(M3, cid, exp, C1, "d", 99),  # 99 coins over
        ],
        time_ms=last_ms,
    )
    assert codes(result) == [Code.OK, Code.OK] + [Code.DAILY_CAP_EXCEEDED] * 2
    assert counters(chain, M3) == (1000, 0, day, 1000)
    assert (chain.balance(C1), chain.balance(C2)) == (600, 400)
    assert chain.order(M3, "c") is None

    # One millisecond later it is the next program day: the cap starts afresh.
    exp = midnight_s + 60
    result = chain.block(
        [
            b.award_purchase(M3, cid, exp, C1, "c", 1000),
            b.award_purchase(M3, cid, exp, C1, "d", 1),
        ],
        time_ms=midnight_s * 1000,
    )
    assert codes(result) == [Code.OK, Code.DAILY_CAP_EXCEEDED]
    assert counters(chain, M3) == (2000, 0, day + 1, 1000)
    assert chain.balance(C1) == 1600
    chain.close()


def test_daily_cap_uses_the_program_day_not_the_utc_day(tmp_path) -> None:
    # At UTC+2, 21:59:59 and 22:00:00 UTC are on different program days, while
    # 22:00:00 and 23:59:59 UTC (00:00 and 01:59 local) are on the same one.
    chain = capped_chain(tmp_path, 120)
    cid = chain.chain_id
    t1 = GENESIS_S + 22 * 3600 - 1
    t2 = GENESIS_S + 22 * 3600
    t3 = GENESIS_S + DAY_S - 1
    assert chain.run(
        [b.award_purchase(M3, cid, t1 + 60, C1, "1", 1000)], t1 * 1000
    ) == [Code.OK]
    assert chain.run(
        [b.award_purchase(M3, cid, t2 + 60, C1, "2", 1000)], t2 * 1000
    ) == [Code.OK]
    assert chain.run([b.award_purchase(M3, cid, t3 + 60, C1, "3", 1)], t3 * 1000) == [
        Code.DAILY_CAP_EXCEEDED
    ]
    assert counters(chain, M3) == (2000, 0, DAY0 + 1, 1000)
    chain.close()


def test_raising_the_cap_mid_day_keeps_the_days_issuance(tmp_path) -> None:
    chain = capped_chain(tmp_path, 0)
    cid = chain.chain_id
    chain.run([b.award_purchase(M3, cid, chain.exp, C1, "a", 1000)])
    exp = chain.exp
    assert chain.run(
        [
            b.award_purchase(M3, cid, exp, C1, "b", 1),
            b.update_merchant(ADMIN, cid, exp, M3, "Capped", 100, 1500, True),
            b.award_purchase(M3, cid, exp, C1, "c", 500),
            b.award_purchase(M3, cid, exp, C1, "d", 1),
        ]
    ) == [Code.DAILY_CAP_EXCEEDED, Code.OK, Code.OK, Code.DAILY_CAP_EXCEEDED]
    assert counters(chain, M3) == (1500, 0, DAY0, 1500)
    chain.close()


# --- redeem -------------------------------------------------------------------


def test_redeem_moves_coins_to_the_merchants_redeemed_counter(chain: Chain) -> None:
    exp = chain.exp
    chain.run(
        [
            b.award_purchase(M1, chain.chain_id, exp, C1, "o-1", 19_999),  # 1999
            b.award_purchase(M2, chain.chain_id, exp, C1, "o-1", 1000),  # 1500
        ]
    )
    result = chain.block([b.redeem(C1, chain.chain_id, chain.exp, M2, 300, "pos-1")])
    assert result.receipts == [
        Receipt(
            Code.OK, (("redeem", C1.public_key, -300), ("accept", M2.public_key, 300))
        )
    ]
    assert chain.balance(C1) == 3199
    assert counters(chain, M1) == (1999, 0, DAY0, 1999)
    assert counters(chain, M2) == (1500, 300, DAY0, 1500)
    # Coins are spent in lot order: never-expiring lots by issuer key.
    first, second = sorted(
        [(1999, M1.public_key), (1500, M2.public_key)], key=lambda x: x[1]
    )
    assert lots(chain, C1) == [
        (first[0] - 300, 0, first[1]),
        (second[0], 0, second[1]),
    ]

    # Redeeming the exact balance empties the account: no entry is left.
    result = chain.block([b.redeem(C1, chain.chain_id, chain.exp, M1, 3199)])
    assert codes(result) == [Code.OK]
    assert chain.account(C1) is None
    assert counters(chain, M1)[:2] == (1999, 3199)


def test_redeem_refusals(chain: Chain) -> None:
    chain.run([b.award_purchase(M1, chain.chain_id, chain.exp, C1, "o", 1000)])  # 100
    before = chain.state()
    exp = chain.exp
    refused = [
        b.redeem(C1, chain.chain_id, exp, M1, 101),  # more than the balance
        b.redeem(C2, chain.chain_id, exp, M1, 1),  # no account at all
        b.redeem(C1, chain.chain_id, exp, M3, 1),  # not a merchant
    ]
    assert chain.run(refused) == [
        Code.INSUFFICIENT_BALANCE,
        Code.INSUFFICIENT_BALANCE,
        Code.UNKNOWN_MERCHANT,
    ]
    assert chain.state() == before


# --- transfer -----------------------------------------------------------------


def test_transfer_keeps_the_lots_issuer(chain: Chain) -> None:
    exp = chain.exp
    chain.run(
        [
            b.award_purchase(M1, chain.chain_id, exp, C1, "o-1", 19_999),  # 1999
            b.award_purchase(M2, chain.chain_id, exp, C1, "o-1", 2000),  # 3000
            b.award_purchase(M1, chain.chain_id, exp, C2, "o-2", 500),  # 50
        ]
    )
    (lo_amt, lo_key), (hi_amt, hi_key) = sorted(
        [(1999, M1.public_key), (3000, M2.public_key)], key=lambda x: x[1]
    )
    moved = lo_amt + 1  # all of the first lot and one coin of the second
    result = chain.block([b.transfer(C1, chain.chain_id, chain.exp, C2, moved, "gift")])
    assert result.receipts == [
        Receipt(
            Code.OK,
            (
                ("transfer_out", C1.public_key, -moved),
                ("transfer_in", C2.public_key, moved),
            ),
        )
    ]
    assert lots(chain, C1) == [(hi_amt - 1, 0, hi_key)]
    c2 = {issuer: amount for amount, _, issuer in lots(chain, C2)}
    expected = {lo_key: lo_amt, hi_key: 1}
    expected[M1.public_key] += 50  # merged into C2's own lot from M1
    assert c2 == expected
    assert chain.balance(C1) + chain.balance(C2) == 1999 + 3000 + 50
    # A transfer moves coins; it neither issues nor redeems.
    assert counters(chain, M1)[:2] == (2049, 0)
    assert counters(chain, M2)[:2] == (3000, 0)


def test_transfer_of_whole_balance_removes_the_sender_entry(chain: Chain) -> None:
    chain.run([b.award_purchase(M1, chain.chain_id, chain.exp, C1, "o", 1000)])
    assert chain.run([b.transfer(C1, chain.chain_id, chain.exp, C3, 100)]) == [Code.OK]
    assert chain.account(C1) is None
    assert lots(chain, C3) == [(100, 0, M1.public_key)]


def test_transfer_refusals(chain: Chain) -> None:
    chain.run([b.award_purchase(M1, chain.chain_id, chain.exp, C1, "o", 1000)])  # 100
    before = chain.state()
    exp = chain.exp
    refused = [
        b.transfer(C1, chain.chain_id, exp, C1, 1),  # to oneself
        b.transfer(C1, chain.chain_id, exp, C2, 101),  # more than the balance
        b.transfer(C3, chain.chain_id, exp, C2, 1),  # no account
    ]
    assert chain.run(refused) == [
        Code.INVALID_RECIPIENT,
        Code.INSUFFICIENT_BALANCE,
        Code.INSUFFICIENT_BALANCE,
    ]
    assert chain.state() == before


def test_transfers_disabled_by_the_genesis_program(tmp_path) -> None:
    chain = Chain(tmp_path / "db", make_genesis(transfers_allowed=False))
    cid = chain.chain_id
    chain.run([b.award_purchase(M1, cid, chain.exp, C1, "o", 10_000)])  # 1000
    before = chain.state()
    exp = chain.exp
    refused = [
        b.transfer(C1, cid, exp, C2, 10),
        b.transfer(C1, cid, exp, C1, 10),  # the program rule is checked first
        b.transfer(C3, cid, exp, C2, 10),
    ]
    assert chain.run(refused) == [Code.TRANSFERS_DISABLED] * 3
    assert chain.state() == before
    # Redemption is not a transfer.
    assert chain.run([b.redeem(C1, cid, chain.exp, M2, 10)]) == [Code.OK]
    assert chain.balance(C1) == 990
    assert counters(chain, M2)[:2] == (0, 10)
    chain.close()


# --- refused transactions change nothing --------------------------------------


def setup_state(chain: Chain) -> None:
    """A state in which each FAILING case below fails for its own reason."""
    cid, exp = chain.chain_id, chain.exp
    codes_ = chain.run(
        [
            b.register_merchant(ADMIN, cid, exp, M3, "Capped", 100, 100),
            b.register_merchant(ADMIN, cid, exp, M_SUSPENDED, "Gone", 10, 10**6),
            b.update_merchant(ADMIN, cid, exp, M_SUSPENDED, "Gone", 10, 10**6, False),
            b.award_purchase(M1, cid, exp, C1, "o-1", 19_999),  # C1: 1999
            b.award_purchase(M3, cid, exp, C2, "o-2", 100),  # C2: 100, cap reached
            b.award_purchase(M1, cid, exp, C3, "o-3", 10_000),  # C3: 1000
            b.set_account_frozen(ADMIN, cid, exp, C3, True, "review"),
        ]
    )
    assert codes_ == [Code.OK] * 7


FAILING: dict[Code, Callable[[str, int], bytes]] = {
    Code.UNAUTHORISED: lambda c, e: b.register_merchant(
        OUTSIDER, c, e, M_NEW, "N", 1, 1
    ),
    Code.UNKNOWN_MERCHANT: lambda c, e: b.award_purchase(C4, c, e, C1, "x", 1000),
    Code.MERCHANT_SUSPENDED: lambda c, e: b.award_purchase(
        M_SUSPENDED, c, e, C1, "x", 1000
    ),
    Code.MERCHANT_EXISTS: lambda c, e: b.register_merchant(ADMIN, c, e, M1, "N", 1, 1),
    Code.ACCOUNT_FROZEN: lambda c, e: b.transfer(C3, c, e, C1, 1),
    Code.INSUFFICIENT_BALANCE: lambda c, e: b.redeem(C1, c, e, M1, 2000),
    Code.DUPLICATE_ORDER: lambda c, e: b.award_purchase(M1, c, e, C2, "o-1", 5),
    Code.DAILY_CAP_EXCEEDED: lambda c, e: b.award_purchase(M3, c, e, C1, "x", 1),
    Code.INVALID_RECIPIENT: lambda c, e: b.transfer(C1, c, e, C1, 1),
}
# Shown with their own genesis or a crafted state in the tests named here.
ELSEWHERE = {
    Code.TRANSFERS_DISABLED: "test_transfers_disabled_by_the_genesis_program",
    Code.BALANCE_LIMIT: "test_balance_limit_on_award_and_transfer",
    Code.ALREADY_VOTED: "test_state_validators.py",
    Code.INVALID_VALIDATOR_CHANGE: "test_state_validators.py",
    Code.VALIDATOR_SET_LIMIT: "test_state_validators.py",
    Code.INVALID_EVIDENCE: "test_state_validators.py",
    Code.EVIDENCE_EXISTS: "test_state_validators.py",
} | {
    code: "test_state_loyalty*.py"
    for code in Code
    if Code.UNKNOWN_PROPOSAL <= code <= Code.REDEMPTION_ALREADY_REVERSED
}


def test_every_ledger_code_is_covered() -> None:
    ledger_codes = set(Code) - ADMISSION_CODES - {Code.OK}
    assert set(FAILING) | set(ELSEWHERE) == ledger_codes
    assert not set(FAILING) & set(ELSEWHERE)


def expected_setup_state(chain: Chain) -> None:
    assert chain.balance(C1) == 1999
    assert chain.balance(C2) == 100
    assert chain.balance(C3) == 1000 and chain.account(C3).frozen
    assert counters(chain, M1) == (2999, 0, DAY0, 2999)
    assert counters(chain, M3) == (100, 0, DAY0, 100)
    assert chain.merchant(M_SUSPENDED).active is False


@pytest.mark.parametrize("code", list(FAILING), ids=lambda c: c.slug)
def test_refused_transaction_is_recorded_and_changes_nothing(
    chain: Chain, code: Code
) -> None:
    setup_state(chain)
    expected_setup_state(chain)
    before, root = chain.state(), chain.store.state_root
    raw = FAILING[code](chain.chain_id, chain.exp)
    block, result = chain.build([raw])
    chain.store.commit_block(block, b"", result)

    assert block.txs == (raw,)
    assert result.receipts == [Receipt(code)]
    assert result.state_writes == {}
    assert chain.state() == before
    assert chain.store.state_root == root == block.header.state_root
    assert decode_receipts(chain.store.receipts_bytes(block.height)) == [Receipt(code)]
    # It is in the chain: it has a location and cannot be included again.
    tx = decode_tx(raw)
    assert chain.store.tx_location(tx.hash) == (block.height, 0)
    _, again = chain.build([raw])
    assert [c for _, c, _ in again.dropped] == [Code.DUPLICATE_TX]
    expected_setup_state(chain)


def test_block_of_only_refused_transactions_changes_no_state(chain: Chain) -> None:
    setup_state(chain)
    before, root = chain.state(), chain.store.state_root
    history = {
        kp.public_key: list(chain.store.history(kp.public_key))
        for kp in (C1, C2, C3, M1, M3)
    }
    exp = chain.exp
    raws = [make(chain.chain_id, exp) for make in FAILING.values()]
    block, result = chain.build(raws)
    chain.store.commit_block(block, b"", result)

    assert len(block.txs) == len(FAILING)
    assert codes(result) == list(FAILING)
    assert all(r.events == () for r in result.receipts)
    assert chain.state() == before
    assert chain.store.state_root == root == block.header.state_root
    assert chain.store.height == 2
    for pk, events in history.items():
        assert list(chain.store.history(pk)) == events
    expected_setup_state(chain)


# --- records crafted directly: balance limit and debt -------------------------


def ledger_over(records: dict[bytes, list], now_s: int = GENESIS_S + 10):
    program = Program([ADMIN.public_key], True, 0).to_wire()
    data = {KEY_PROGRAM: encode(program)} | {k: encode(v) for k, v in records.items()}
    view = StateView(data.get)
    return Ledger(view, now_s, 1, "perk-test-1"), view


def tx_of(raw: bytes):
    return decode_tx(raw)


def test_balance_limit_on_award_and_transfer() -> None:
    near = MAX_BALANCE - 5
    records = {
        merchant_key(M1.public_key): Merchant("M", 100, 10**12).to_wire(),
        account_key(C1.public_key): [False, 0, [[near, 0, M1.public_key, 1]]],
        account_key(C2.public_key): [False, 0, [[10, 0, M1.public_key, 1]]],
    }
    ledger, view = ledger_over(records)
    exp = ledger.now_s + 60
    cid = "any"

    six = ledger.apply(tx_of(b.award_purchase(M1, cid, exp, C1, "a", 6)))
    assert six == Receipt(Code.BALANCE_LIMIT)
    over = ledger.apply(tx_of(b.transfer(C2, cid, exp, C1, 6)))
    assert over == Receipt(Code.BALANCE_LIMIT)
    acc = Accumulator()
    assert view.finish(acc) == {} and acc.value == 0

    five = ledger.apply(tx_of(b.award_purchase(M1, cid, exp, C1, "b", 5)))
    assert five.code == Code.OK
    assert view.account(C1.public_key).balance(ledger.now_s) == MAX_BALANCE
    one = ledger.apply(tx_of(b.transfer(C2, cid, exp, C1, 1)))
    assert one == Receipt(Code.BALANCE_LIMIT)
    assert view.account(C2.public_key).balance(ledger.now_s) == 10


def test_award_repays_debt_before_adding_coins() -> None:
    records = {
        merchant_key(M1.public_key): Merchant("M", 10, 10**12).to_wire(),
        account_key(C1.public_key): [False, 50, []],
    }
    ledger, view = ledger_over(records)
    exp = ledger.now_s + 60

    partial = ledger.apply(tx_of(b.award_purchase(M1, "c", exp, C1, "a", 300)))
    assert partial == Receipt(
        Code.OK,
        (
            ("earn", C1.public_key, 0),
            ("issue", M1.public_key, 30),
            ("repay", C1.public_key, 30),
        ),
    )
    assert view.account(C1.public_key).to_wire() == [False, 20, []]

    rest = ledger.apply(tx_of(b.award_purchase(M1, "c", exp, C1, "b", 1000)))
    assert rest == Receipt(
        Code.OK,
        (
            ("earn", C1.public_key, 80),
            ("issue", M1.public_key, 100),
            ("repay", C1.public_key, 20),
        ),
    )
    assert view.account(C1.public_key).to_wire() == [
        False,
        0,
        [[80, 0, M1.public_key, ledger.now_s]],
    ]
    assert view.merchant(M1.public_key).issued == 130


def test_expired_lots_are_neither_counted_nor_spent() -> None:
    now = GENESIS_S + 10
    records = {
        merchant_key(M1.public_key): Merchant("M", 10, 10**12).to_wire(),
        account_key(C1.public_key): [
            False,
            0,
            [
                [70, now, M1.public_key, 1],  # expired: expires_at <= now
                [30, now + 1, M2.public_key, 1],
                [5, 0, M1.public_key, 1],
            ],
        ],
    }
    ledger, view = ledger_over(records, now)
    exp = now + 60
    assert ledger.apply(tx_of(b.transfer(C1, "c", exp, C2, 36))).code == (
        Code.INSUFFICIENT_BALANCE
    )
    assert ledger.apply(tx_of(b.transfer(C1, "c", exp, C2, 32))).code == Code.OK
    assert view.account(C1.public_key).lots == [
        [70, now, M1.public_key, 1],
        [3, 0, M1.public_key, 1],
    ]
    assert [lot[:3] for lot in view.account(C2.public_key).lots] == [
        [30, now + 1, M2.public_key],
        [2, 0, M1.public_key],
    ]


# --- receipts and history in the store ----------------------------------------


def test_receipts_and_history_are_stored(chain: Chain) -> None:
    exp = chain.exp
    raws = [
        b.award_purchase(M1, chain.chain_id, exp, C1, "o", 1000),
        b.transfer(C1, chain.chain_id, exp, C2, 40),
        b.redeem(C2, chain.chain_id, exp, M2, 15),
        b.redeem(C2, chain.chain_id, exp, M2, 26),
    ]
    block, result = chain.build(raws)
    chain.store.commit_block(block, b"cert", result)
    assert codes(result) == [Code.OK, Code.OK, Code.OK, Code.INSUFFICIENT_BALANCE]
    assert chain.store.commit_bytes(1) == b"cert"
    assert chain.store.block_bytes(1) == block.encode()
    assert decode_receipts(chain.store.receipts_bytes(1)) == result.receipts
    hashes = [decode_tx(r).hash for r in raws]
    c2 = [(h, i, t, e, d) for _, h, i, t, e, d in chain.store.history(C2.public_key)]
    assert c2 == [
        (1, 2, hashes[2], "redeem", -15),
        (1, 1, hashes[1], "transfer_in", 40),
    ]
    assert chain.balance(C2) == 25
    assert [e for *_, e, _ in chain.store.history(M2.public_key)] == ["accept"]
