"""The loyalty program's earning rules, caps, engagement rewards and program
changes by k of n admins, each at its exact boundary."""

from __future__ import annotations

import pytest

from client.builders import BuildError
from state.changes import ChangeAction
from state.codes import Code
from state.genesis import GenesisError
from state.tx import EngagementKind, Kind, TxRejected, build_signed, decode_tx
from tests.state_helpers import (
    ADMIN,
    C1,
    C2,
    DAY_S,
    GENESIS_S,
    M1,
    M2,
    M3,
    OUTSIDER,
    b,
    key,
    make_genesis,
    merchant_doc,
)
from tests.test_state_loyalty_support import (
    LoyaltyChain,
    award,
    change,
    engage,
    loyalty_genesis,
    redeem,
    transfer,
)

ADMIN2, ADMIN3 = key(4), key(5)
T0 = GENESIS_S + 3600  # an hour into program day 0 at offset 0


def chain_with(tmp_path, program: dict | None = None, **kw) -> LoyaltyChain:
    return LoyaltyChain(tmp_path / "db", loyalty_genesis(program, **kw))


# --- earning ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "paid", "coins"),
    [
        (19_999, 0, 1_999),  # 199.99 at 10 per 100, floored
        (19_999, 9_999, 1_000),  # the part paid with coins earns nothing
        (19_999, 19_999, 0),  # paid entirely with coins
        (19_999, 10_000, 999),  # floor(9,999 * 10 / 100)
    ],
)
def test_earning_is_floor_of_the_spend_not_paid_with_coins(
    tmp_path, amount: int, paid: int, coins: int
) -> None:
    chain = chain_with(tmp_path)
    extra = (paid, "") if paid else ()
    assert chain.at(T0, award(M1, C1, "o", amount, *extra)) == [Code.OK]
    assert chain.balance(C1) == coins
    assert chain.order(M1, "o").coins == coins
    chain.close()


def test_paid_with_coins_above_the_amount_is_refused_at_admission(tmp_path) -> None:
    chain = chain_with(tmp_path)
    raw = b.award_purchase(M1, chain.chain_id, T0 + 60, C1, "o", 100, 101)
    _, result = chain.build([raw], T0 * 1000)
    assert [c for _, c, _ in result.dropped] == [Code.AMOUNT_OUT_OF_RANGE]
    chain.close()


def test_minimum_spend_exactly_met_earns_and_below_earns_nothing(tmp_path) -> None:
    chain = chain_with(tmp_path, {"min_spend": 500})
    codes = chain.at(T0, award(M1, C1, "below", 499), award(M1, C1, "at", 500))
    assert codes == [Code.OK, Code.OK]
    assert chain.order(M1, "below").coins == 0  # recorded, earns nothing
    assert chain.order(M1, "at").coins == 50
    assert chain.balance(C1) == 50
    chain.close()


def test_category_rate_overrides_the_base_rate(tmp_path) -> None:
    chain = chain_with(tmp_path)
    terms = [M1.public_key, 2, 3, [["books", 50], ["food", 0]]]
    assert chain.at(T0, change(ChangeAction.MERCHANT_TERMS, terms)) == [Code.OK]
    m = chain.merchant(M1)
    assert (m.price_per_coin, m.reimbursement_per_coin) == (2, 3)
    assert (
        chain.next(
            award(M1, C1, "a", 1000, 0, "books"),  # 50 per 100
            award(M1, C1, "b", 1000, 0, "food"),  # 0 per 100
            award(M1, C1, "c", 1000, 0, "toys"),  # no such category: base rate 10
            award(M1, C1, "d", 1000),
        )
        == [Code.OK] * 4
    )
    assert [chain.order(M1, o).coins for o in "abcd"] == [500, 0, 100, 100]
    chain.close()


# --- campaigns ----------------------------------------------------------------


def test_campaign_window_is_exact_to_the_second(tmp_path) -> None:
    chain = chain_with(tmp_path)
    start, end = T0 + 100, T0 + 200
    double = ["double", start, end, 20_000, 0, 0, []]
    assert chain.at(T0, change(ChangeAction.CAMPAIGN, double)) == [Code.OK]
    for t, order, coins in [
        (start - 1, "before", 100),
        (start, "first-second", 200),
        (end - 1, "last-second", 200),
        (end, "after", 100),
    ]:
        assert chain.at(t, award(M1, C1, order, 1000)) == [Code.OK]
        assert chain.order(M1, order).coins == coins, order
    chain.close()


def test_campaigns_combine_and_respect_merchants_and_caps(tmp_path) -> None:
    chain = chain_with(tmp_path)
    window = [T0 + 10, T0 + 10_000]
    campaigns = [
        # +50% at M1 only, at most 70 extra coins per customer.
        ["a-m1", *window, 15_000, 0, 70, sorted([M1.public_key])],
        # 1.25x everywhere.
        ["b-all", *window, 12_500, 0, 0, []],
        # A fixed 7-coin bonus everywhere.
        ["c-bonus", *window, 0, 7, 0, []],
    ]
    makers = [change(ChangeAction.CAMPAIGN, c) for c in campaigns]
    assert chain.at(T0, *makers) == [Code.OK] * 3
    # Base 100: 100 + 50 (a) + 25 (b) + 7 (c) = 182.
    assert chain.at(T0 + 10, award(M1, C1, "1", 1000)) == [Code.OK]
    assert chain.order(M1, "1").coins == 182
    # a has 20 of its 70 left for C1: 100 + 20 + 25 + 7.
    assert chain.next(award(M1, C1, "2", 1000)) == [Code.OK]
    assert chain.order(M1, "2").coins == 152
    # The cap is reached exactly; nothing more from a, but C2 has its own cap.
    assert chain.next(award(M1, C1, "3", 1000), award(M1, C2, "3b", 1000)) == [
        Code.OK,
        Code.OK,
    ]
    assert chain.order(M1, "3").coins == 132
    assert chain.order(M1, "3b").coins == 182
    # M2 (rate 150): base 1500, only b and c apply: 1500 + 375 + 7.
    assert chain.next(award(M2, C1, "4", 1000)) == [Code.OK]
    assert chain.order(M2, "4").coins == 1882
    chain.close()


def test_campaign_naming_an_unknown_merchant_is_refused(tmp_path) -> None:
    chain = chain_with(tmp_path)
    bad = ["x", T0, T0 + 10, 20_000, 0, 0, [M3.public_key]]
    assert chain.at(T0, change(ChangeAction.CAMPAIGN, bad)) == [Code.UNKNOWN_MERCHANT]
    assert chain.store.get_state(b"sc") is None
    chain.close()


# --- tiers --------------------------------------------------------------------


def test_tier_from_coins_earned_in_the_trailing_window(tmp_path) -> None:
    tiers = {"window_days": 30, "levels": [{"threshold": 1000, "multiplier_bp": 15000}]}
    chain = chain_with(tmp_path, {"tiers": tiers})
    assert chain.at(T0, award(M1, C1, "1", 9_990)) == [Code.OK]  # 999
    assert chain.account(C1).tier == 0
    assert chain.next(award(M1, C1, "2", 10)) == [Code.OK]  # 1: exactly 1000
    assert chain.account(C1).tier == 1
    assert chain.next(award(M1, C1, "3", 1000)) == [Code.OK]
    assert chain.order(M1, "3").coins == 150  # 100 at 1.5x

    # Day 29 after the first awards: still inside the 30-day window.
    day29 = T0 + 29 * DAY_S
    assert chain.at(day29, award(M1, C1, "4", 100)) == [Code.OK]
    assert chain.order(M1, "4").coins == 15
    # Day 30: the first day's 1150 coins have left the window, and the bucket
    # is pruned; the award itself counts again for the next one.
    assert chain.at(T0 + 30 * DAY_S, award(M1, C1, "5", 100)) == [Code.OK]
    assert chain.order(M1, "5").coins == 10
    acc = chain.account(C1)
    assert acc.tier == 0
    assert [day for day, _ in acc.history] == [(day29) // DAY_S, (T0 // DAY_S) + 30]
    chain.close()


# --- customer caps ------------------------------------------------------------


def test_customer_daily_cap_exactly_reached_then_exceeded_then_reset(tmp_path) -> None:
    chain = chain_with(tmp_path, {"customer_daily_cap": 300})
    assert chain.at(
        T0,
        award(M1, C1, "a", 2000),  # 200
        award(M1, C1, "b", 1000),  # 100: exactly 300
        award(M1, C1, "c", 10),  # 1 over
        award(M1, C2, "d", 3000),  # another customer has their own cap
    ) == [Code.OK, Code.OK, Code.CUSTOMER_DAILY_CAP_EXCEEDED, Code.OK]
    assert chain.balance(C1) == 300
    midnight = (T0 // DAY_S + 1) * DAY_S
    assert chain.at(midnight - 1, award(M1, C1, "e", 10)) == [
        Code.CUSTOMER_DAILY_CAP_EXCEEDED
    ]
    assert chain.at(midnight, award(M1, C1, "e", 10)) == [Code.OK]
    chain.close()


def test_velocity_limit_counts_awards_per_customer_per_day(tmp_path) -> None:
    chain = chain_with(tmp_path, {"velocity_per_day": 2})
    assert chain.at(
        T0, award(M1, C1, "1", 10), award(M2, C1, "2", 10), award(M1, C1, "3", 10)
    ) == [Code.OK, Code.OK, Code.VELOCITY_LIMIT_EXCEEDED]
    assert chain.at(T0 + DAY_S, award(M1, C1, "3", 10)) == [Code.OK]
    chain.close()


def test_transfer_daily_limit(tmp_path) -> None:
    chain = chain_with(tmp_path, {"transfer_daily_limit": 50})
    chain.at(T0, award(M1, C1, "o", 10_000))
    assert chain.next(
        transfer(C1, C2, 30), transfer(C1, C2, 20), transfer(C1, C2, 1)
    ) == [Code.OK, Code.OK, Code.TRANSFER_LIMIT_EXCEEDED]
    assert chain.balance(C2) == 50
    assert chain.at(T0 + DAY_S, transfer(C1, C2, 50)) == [Code.OK]
    chain.close()


def test_transfers_switched_off_by_a_program_change(tmp_path) -> None:
    chain = chain_with(tmp_path)
    chain.at(T0, award(M1, C1, "o", 1000))
    assert chain.next(change(ChangeAction.TRANSFERS, [False, 0])) == [Code.OK]
    assert chain.next(transfer(C1, C2, 1)) == [Code.TRANSFERS_DISABLED]
    chain.close()


# --- engagement ---------------------------------------------------------------


def test_engagement_rewards_by_merchant_and_company_with_daily_caps(tmp_path) -> None:
    program = {
        "engagement": {
            "feedback": {"coins": 20, "daily_cap": 2},
            "survey": {"coins": 50},
        }
    }
    chain = chain_with(tmp_path, program)
    fb, survey = EngagementKind.FEEDBACK, EngagementKind.SURVEY
    assert chain.at(
        T0,
        engage(M1, C1, fb, "f1"),
        engage(ADMIN, C1, fb, "f2"),  # the company rewards too
        engage(M2, C1, fb, "f3"),  # third feedback today: over the cap of 2
        engage(M1, C1, EngagementKind.CONSULTATION, "c1"),  # not offered
        engage(M1, C1, survey, "s1"),  # no cap
        engage(M1, C1, survey, "s2"),
        engage(OUTSIDER, C1, survey, "s3"),  # neither merchant nor admin
    ) == [
        Code.OK,
        Code.OK,
        Code.ENGAGEMENT_CAP_EXCEEDED,
        Code.ENGAGEMENT_NOT_OFFERED,
        Code.OK,
        Code.OK,
        Code.UNKNOWN_MERCHANT,
    ]
    assert chain.balance(C1) == 20 + 20 + 50 + 50
    company = chain.merchant(bytes(32))
    assert (company.issued, company.active) == (20, False)
    assert chain.merchant(M1).issued == 120
    # The next program day the cap starts again; a reference is used once.
    assert chain.at(T0 + DAY_S, engage(M2, C1, fb, "f3"), engage(M1, C1, fb, "f1")) == [
        Code.OK,
        Code.DUPLICATE_REFERENCE,
    ]
    chain.close()


# --- program changes by k of n ------------------------------------------------


def k_of_n(tmp_path, k: int) -> LoyaltyChain:
    return chain_with(tmp_path, {"admin_threshold": k}, admins=(ADMIN, ADMIN2, ADMIN3))


def approve(signer, proposal: bytes):
    return lambda exp: b.approve_change(signer, "perk-test-1", exp, proposal)


def test_with_k_1_a_proposal_applies_at_once(tmp_path) -> None:
    chain = k_of_n(tmp_path, 1)
    args = [M3.public_key, "Three", 10, 1000]
    assert chain.at(T0, change(ChangeAction.REGISTER_MERCHANT, args)) == [Code.OK]
    assert chain.merchant(M3).name == "Three"
    assert chain.store.get_state(b"sg") is None
    chain.close()


def test_k_minus_1_approvals_change_nothing_and_the_kth_applies(tmp_path) -> None:
    chain = k_of_n(tmp_path, 3)
    args = [100, 0, 0, 0]  # min_spend 100
    deadline = T0 + 1000
    result = chain.block(
        [b.propose_change(ADMIN, chain.chain_id, T0 + 600, ChangeAction.EARNING,
                          args, deadline)],
        T0 * 1000,
    )  # fmt: skip
    assert result.receipts[0].code == Code.OK
    pid = result.txs[0].hash
    assert chain.store.get_state(b"sl") is None  # k-2 = 1 of 3: nothing yet
    assert chain.next(
        approve(ADMIN, pid),  # the proposer again
        approve(OUTSIDER, pid),  # not an admin
        approve(ADMIN2, bytes(32)),  # no such proposal
        approve(ADMIN2, pid),  # k - 1 = 2
    ) == [
        Code.DUPLICATE_APPROVAL,
        Code.UNAUTHORISED,
        Code.UNKNOWN_PROPOSAL,
        Code.OK,
    ]
    assert chain.store.get_state(b"sl") is None
    assert chain.next(approve(ADMIN2, pid)) == [Code.DUPLICATE_APPROVAL]
    assert chain.next(award(M1, C1, "small", 50)) == [Code.OK]
    assert chain.order(M1, "small").coins == 5  # the rule is not in force yet
    assert chain.next(approve(ADMIN3, pid)) == [Code.OK]  # the k-th
    assert chain.store.get_state(b"sg") is None  # applied and closed
    assert chain.next(award(M1, C1, "small-2", 50)) == [Code.OK]
    assert chain.order(M1, "small-2").coins == 0  # min_spend 100 applies
    assert chain.next(approve(ADMIN2, pid)) == [Code.UNKNOWN_PROPOSAL]
    chain.close()


def test_a_proposal_expires_at_its_deadline(tmp_path) -> None:
    chain = k_of_n(tmp_path, 2)
    deadline = T0 + 100
    result = chain.block(
        [b.propose_change(ADMIN, chain.chain_id, T0 + 60, ChangeAction.EXPIRY,
                          [2, 0], deadline)],
        T0 * 1000,
    )  # fmt: skip
    pid = result.txs[0].hash
    assert chain.at(deadline, approve(ADMIN2, pid)) == [Code.PROPOSAL_EXPIRED]
    assert chain.store.get_state(b"sl") is None
    # A week after the deadline it is gone from state.
    assert chain.at(deadline + 7 * DAY_S, approve(ADMIN3, pid)) == [
        Code.UNKNOWN_PROPOSAL
    ]
    assert chain.store.get_state(b"sg") is None

    # The same change proposed again and approved one second before its deadline.
    result = chain.block(
        [b.propose_change(ADMIN, chain.chain_id, chain.now + 60,
                          ChangeAction.EXPIRY, [2, 0], chain.now + 101)],
        (chain.now + 1) * 1000,
    )  # fmt: skip
    pid = result.txs[0].hash
    assert chain.at(chain.now + 99, approve(ADMIN3, pid)) == [Code.OK]
    assert chain.store.get_state(b"sl") is not None
    chain.close()


def test_direct_merchant_changes_need_a_proposal_when_k_is_above_1(tmp_path) -> None:
    chain = k_of_n(tmp_path, 2)
    register = lambda exp: b.register_merchant(  # noqa: E731
        ADMIN, chain.chain_id, exp, M3, "Three", 10, 10
    )
    freeze = lambda exp: b.set_account_frozen(  # noqa: E731
        ADMIN, chain.chain_id, exp, C1, True, "fraud"
    )
    assert chain.at(T0, register, freeze) == [Code.APPROVAL_REQUIRED, Code.OK]
    chain.close()


def test_invalid_proposals(tmp_path) -> None:
    chain = k_of_n(tmp_path, 2)
    exists = [M1.public_key, "Again", 10, 10]
    assert chain.at(
        T0,
        change(ChangeAction.REGISTER_MERCHANT, exists),
        change(ChangeAction.EARNING, [0, 0, 0, 0], deadline=T0),  # not ahead
        change(ChangeAction.EARNING, [0, 0, 0, 0], deadline=T0 + 31 * DAY_S),
        change(ChangeAction.UPDATE_MERCHANT, [M3.public_key, "X", 1, 1, True]),
        change(ChangeAction.EARNING, [0, 0, 0, 0], signer=OUTSIDER),
    ) == [
        Code.MERCHANT_EXISTS,
        Code.INVALID_PROGRAM_CHANGE,
        Code.INVALID_PROGRAM_CHANGE,
        Code.UNKNOWN_MERCHANT,
        Code.UNAUTHORISED,
    ]
    chain.close()


def test_malformed_change_arguments_never_enter_a_block(tmp_path) -> None:
    chain = k_of_n(tmp_path, 1)  # a node decodes before admitting
    for action, args in [
        (ChangeAction.CAMPAIGN, ["c", 10, 10, 20_000, 0, 0, []]),  # empty window
        (ChangeAction.CAMPAIGN, ["c", 10, 20, 5_000, 0, 0, []]),  # below 1x
        (ChangeAction.TIERS, [30, [[10, 15_000], [5, 20_000]]]),  # not ascending
        (ChangeAction.EXPIRY, [1, 0]),  # the days policy needs days
        (ChangeAction.EARNING, [0, 0, 0]),  # a field missing
        (99, []),
    ]:
        with pytest.raises(BuildError):
            b.propose_change(ADMIN, chain.chain_id, T0 + 60, action, args, T0 + 99)
        payload = [int(action), args, T0 + 99]
        raw = build_signed(chain.chain_id, Kind.PROPOSE_CHANGE, ADMIN.public_key,
                           T0 + 60, payload, ADMIN.sign)  # fmt: skip
        with pytest.raises(TxRejected) as refused:
            decode_tx(raw)
        assert refused.value.code == Code.MALFORMED, (action, args)
    chain.close()


# --- genesis ------------------------------------------------------------------


def test_genesis_loyalty_rules_round_trip_and_default_hash() -> None:
    plain = make_genesis()
    assert plain.program.loyalty.is_default()
    assert len(plain.program.to_wire()) == 3  # older genesis files keep their hash
    program = {
        "admin_threshold": 1,
        "min_spend": 100,
        "pending_seconds": 86_400,
        "customer_daily_cap": 5000,
        "velocity_per_day": 20,
        "transfer_daily_limit": 1000,
        "expiry": {"policy": "days", "days": 365},
        "tiers": {"window_days": 365,
                  "levels": [{"threshold": 100, "multiplier_bp": 12_500}]},
        "engagement": {"feedback": {"coins": 20, "daily_cap": 1}},
    }  # fmt: skip
    genesis = loyalty_genesis(program)
    again = loyalty_genesis(genesis.to_json()["program"])
    assert again.program.loyalty == genesis.program.loyalty
    assert again.hash == genesis.hash != plain.hash


@pytest.mark.parametrize(
    "program",
    [
        {"admin_threshold": 2},  # more than the one admin
        {"expiry": {"policy": "weekly"}},
        {"expiry": {"policy": "days"}},
        {"expiry": {"policy": "never", "days": 3}},
        {"tiers": {"window_days": 30, "levels": [{"threshold": 1,
                                                  "multiplier_bp": 9000}]}},
        {"engagement": {"likes": {"coins": 1}}},
        {"velocity": 3},
    ],
)  # fmt: skip
def test_genesis_refuses_bad_loyalty_rules(program: dict) -> None:
    with pytest.raises(GenesisError):
        loyalty_genesis(program)


def test_redeem_of_coins_from_a_merchant_capped_by_genesis(tmp_path) -> None:
    """Merchant daily issuance cap: exactly reached, then exceeded."""
    chain = chain_with(tmp_path, merchants=[merchant_doc(M3, "Capped", 100, 1000)])
    assert chain.at(
        T0,
        award(M3, C1, "a", 600),
        award(M3, C2, "b", 400),
        award(M3, C1, "c", 1),
        redeem(C1, M3, 600),
    ) == [Code.OK, Code.OK, Code.DAILY_CAP_EXCEEDED, Code.OK]
    chain.close()


def test_an_award_without_details_has_only_the_short_spelling() -> None:
    long = [C1.public_key, "o", 100, 0, ""]
    raw = build_signed("perk-test-1", Kind.AWARD_PURCHASE, M1.public_key,
                       T0 + 60, long, M1.sign)  # fmt: skip
    with pytest.raises(TxRejected) as refused:
        decode_tx(raw)
    assert refused.value.code == Code.MALFORMED
    short = b.award_purchase(M1, "perk-test-1", T0 + 60, C1, "o", 100, 0, "")
    assert decode_tx(short).payload == (C1.public_key, "o", 100)
