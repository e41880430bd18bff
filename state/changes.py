"""Program changes: what a proposal may change, and the shape of its arguments.

The company changes the loyalty program by proposal: an admin proposes one
change (a ChangeAction with its arguments), other admins approve it, and it
applies when `admin_threshold` admins in all have signed (state.governance).
Each action has one argument array, parsed here as strictly as a payload: a
malformed proposal never enters a block. Ranges are checked here too, so a
proposal that is admitted can only fail on the state it meets.

    action              args
    1 register_merchant [merchant, name, rate, daily_cap]
    2 update_merchant   [merchant, name, rate, daily_cap, active]
    3 merchant_terms    [merchant, price_per_coin, reimbursement_per_coin,
                         [[category, rate], ...]]
    4 earning           [min_spend, pending_s, customer_daily_cap,
                         velocity_per_day]
    5 expiry            [policy, days]
    6 tiers             [window_days, [[threshold, multiplier_bp], ...]]
    7 campaign          [campaign_id, start, end, multiplier_bp, bonus,
                         customer_cap, [merchant, ...]]
    8 engagement        [kind, coins, daily_cap]
    9 transfers         [allowed, daily_limit]
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, NamedTuple

from state.codec import DecodeError, check_array, check_bool, check_text, check_uint
from state.tx import (
    MAX_AMOUNT,
    MAX_CATEGORY,
    MAX_RATE,
    EngagementKind,
    RegisterMerchant,
    UpdateMerchant,
    _engagement_kind,
    _key,
    _parse_register,
    _parse_update,
)


class ChangeAction(IntEnum):
    """What a program-change proposal changes (docs/loyalty.md)."""

    REGISTER_MERCHANT = 1
    UPDATE_MERCHANT = 2
    MERCHANT_TERMS = 3
    EARNING = 4
    EXPIRY = 5
    TIERS = 6
    CAMPAIGN = 7
    ENGAGEMENT = 8
    TRANSFERS = 9


# Limits of program parameters.
MAX_CATEGORIES = 8
MAX_TIERS = 8
MAX_CAMPAIGN_ID = 32
MAX_CAMPAIGN_MERCHANTS = 16
MAX_MULTIPLIER_BP = 100_000  # 10x
MAX_WINDOW_DAYS = 3660
MAX_PENDING_S = 400 * 86_400
MAX_EXPIRY_DAYS = 36_600
MAX_COUNT = 1_000_000
MAX_TIME = (1 << 40) - 1  # block seconds, far beyond any real date


# --- program-change arguments, one shape per ChangeAction ---


class MerchantTerms(NamedTuple):
    merchant: bytes
    price_per_coin: int  # minor units the merchant pays per coin it issues
    reimbursement_per_coin: int  # minor units it receives per coin redeemed at it
    categories: tuple  # ((category, rate), ...), names ascending


class EarningRules(NamedTuple):
    min_spend: int
    pending_s: int
    customer_daily_cap: int
    velocity_per_day: int


class ExpiryRule(NamedTuple):
    policy: int
    days: int


class TierRules(NamedTuple):
    window_days: int
    levels: tuple  # ((threshold, multiplier_bp), ...), thresholds ascending


class CampaignRule(NamedTuple):
    campaign_id: str
    start: int
    end: int
    multiplier_bp: int
    bonus: int
    customer_cap: int
    merchants: tuple  # keys ascending; empty: every merchant


class EngagementRule(NamedTuple):
    kind: EngagementKind
    coins: int
    daily_cap: int


class TransferRules(NamedTuple):
    allowed: bool
    daily_limit: int


def _pairs(value: Any, name: str, limit: int, parse_one) -> tuple:
    if type(value) is not list or len(value) > limit:
        raise DecodeError(f"{name}: expected an array of at most {limit} items")
    return tuple(parse_one(item) for item in value)


def _category(item: Any) -> tuple[str, int]:
    check_array(item, 2, "categories[]")
    return (
        check_text(item[0], "category", MAX_CATEGORY, 1),
        check_uint(item[1], "rate", MAX_RATE),
    )


def _tier(item: Any) -> tuple[int, int]:
    check_array(item, 2, "levels[]")
    return (
        check_uint(item[0], "threshold", MAX_AMOUNT),
        check_uint(item[1], "multiplier_bp", MAX_MULTIPLIER_BP),
    )


def _strictly_ascending(items: tuple, name: str) -> tuple:
    keys = [item[0] if type(item) is tuple else item for item in items]
    if any(a >= b for a, b in zip(keys, keys[1:], strict=False)):
        raise DecodeError(f"{name}: must be strictly ascending")
    return items


def _args_register(a: list) -> RegisterMerchant:
    r = _parse_register(a)
    check_uint(r.rate, "rate", MAX_RATE)
    check_uint(r.daily_cap, "daily_cap", MAX_AMOUNT)
    return r


def _args_update(a: list) -> UpdateMerchant:
    u = _parse_update(a)
    check_uint(u.rate, "rate", MAX_RATE)
    check_uint(u.daily_cap, "daily_cap", MAX_AMOUNT)
    return u


def _args_terms(a: list) -> MerchantTerms:
    check_array(a, 4, "args")
    categories = _pairs(a[3], "categories", MAX_CATEGORIES, _category)
    return MerchantTerms(
        _key(a[0], "merchant"),
        check_uint(a[1], "price_per_coin", MAX_AMOUNT),
        check_uint(a[2], "reimbursement_per_coin", MAX_AMOUNT),
        _strictly_ascending(categories, "categories"),
    )


def _args_earning(a: list) -> EarningRules:
    check_array(a, 4, "args")
    return EarningRules(
        check_uint(a[0], "min_spend", MAX_AMOUNT),
        check_uint(a[1], "pending_s", MAX_PENDING_S),
        check_uint(a[2], "customer_daily_cap", MAX_AMOUNT),
        check_uint(a[3], "velocity_per_day", MAX_COUNT),
    )


def _args_expiry(a: list) -> ExpiryRule:
    check_array(a, 2, "args")
    policy = check_uint(a[0], "policy", 3)
    days = check_uint(a[1], "days", MAX_EXPIRY_DAYS)
    if (policy == 1) != (days > 0):
        raise DecodeError("days: required by the days policy (1) and only by it")
    return ExpiryRule(policy, days)


def _args_tiers(a: list) -> TierRules:
    check_array(a, 2, "args")
    levels = _pairs(a[1], "levels", MAX_TIERS, _tier)
    if any(bp < 10_000 for _, bp in levels):
        raise DecodeError("multiplier_bp: a tier multiplies by at least 10000 (1x)")
    return TierRules(
        check_uint(a[0], "window_days", MAX_WINDOW_DAYS),
        _strictly_ascending(levels, "levels"),
    )


def _args_campaign(a: list) -> CampaignRule:
    check_array(a, 7, "args")
    merchants = _pairs(a[6], "merchants", MAX_CAMPAIGN_MERCHANTS, _campaign_merchant)
    rule = CampaignRule(
        check_text(a[0], "campaign_id", MAX_CAMPAIGN_ID, 1),
        check_uint(a[1], "start", MAX_TIME),
        check_uint(a[2], "end", MAX_TIME),
        check_uint(a[3], "multiplier_bp", MAX_MULTIPLIER_BP),
        check_uint(a[4], "bonus", MAX_AMOUNT),
        check_uint(a[5], "customer_cap", MAX_AMOUNT),
        _strictly_ascending(merchants, "merchants"),
    )
    if rule.end <= rule.start:
        raise DecodeError("end: must be after start")
    if rule.multiplier_bp and rule.multiplier_bp < 10_000:
        raise DecodeError("multiplier_bp: 0 (none) or at least 10000 (1x)")
    return rule


def _campaign_merchant(item: Any) -> bytes:
    return _key(item, "merchants[]")


def _args_engagement(a: list) -> EngagementRule:
    check_array(a, 3, "args")
    return EngagementRule(
        _engagement_kind(a[0]),
        check_uint(a[1], "coins", MAX_AMOUNT),
        check_uint(a[2], "daily_cap", MAX_COUNT),
    )


def _args_transfers(a: list) -> TransferRules:
    check_array(a, 2, "args")
    return TransferRules(
        check_bool(a[0], "allowed"), check_uint(a[1], "daily_limit", MAX_AMOUNT)
    )


CHANGE_PARSERS = {
    ChangeAction.REGISTER_MERCHANT: _args_register,
    ChangeAction.UPDATE_MERCHANT: _args_update,
    ChangeAction.MERCHANT_TERMS: _args_terms,
    ChangeAction.EARNING: _args_earning,
    ChangeAction.EXPIRY: _args_expiry,
    ChangeAction.TIERS: _args_tiers,
    ChangeAction.CAMPAIGN: _args_campaign,
    ChangeAction.ENGAGEMENT: _args_engagement,
    ChangeAction.TRANSFERS: _args_transfers,
}


def parse_change(action: int, args: Any) -> NamedTuple:
    """The arguments of a program change; raises DecodeError when malformed."""
    if action not in ChangeAction._value2member_map_:
        raise DecodeError(f"action: {action} is not a program change")
    return CHANGE_PARSERS[ChangeAction(action)](args)


def change_wire(args: NamedTuple) -> list:
    """The wire form of parsed change arguments (tuples back to arrays)."""

    def wire(value: Any) -> Any:
        if isinstance(value, tuple):
            return [wire(v) for v in value]
        if isinstance(value, IntEnum):
            return int(value)
        return value

    return wire(args)
