"""Documents of the loyalty program for the HTTP API, and its day parameters.

The program's records (state.program, state.records, state.governance) are
arrays of raw keys and integers; the API shows them as named fields with
keys as perk1 addresses, like every other document (node.views). Amounts are
integers: coins, minor units of currency, basis points (10,000 = 1x). Ratios
are given in basis points too, rounded down, so a document never holds a
float and the msgpack answer is the same document as the JSON one.

Periods are half-open ranges of program days `[from, to)` in the program's
time zone (genesis `utc_offset_minutes`): `from` is the first day included
and `to` the first day after the period. A day is given as its number (days
since 1970-01-01 in the program zone, as the ledger counts them) or as an ISO
date `YYYY-MM-DD`.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import Any, NamedTuple

from node.views import ApiError, bad_param
from state.address import address_of
from state.calendar import ExpiryPolicy, civil_from_days, days_from_civil
from state.changes import ChangeAction, parse_change
from state.codec import DecodeError
from state.governance import (
    P_ACTION,
    P_APPROVALS,
    P_ARGS,
    P_DEADLINE,
    P_ID,
    P_PROPOSER,
)
from state.program import (
    C_BONUS,
    C_CAP,
    C_END,
    C_ID,
    C_MERCHANTS,
    C_MULT,
    C_START,
    Rules,
    prune_history,
    window_total,
)
from state.records import Account, Merchant, Program
from state.settlement import Settlement
from state.tx import EngagementKind

BP = 10_000
# Days since 1970-01-01 up to 9999-12-31: any date an ISO string can name.
MAX_DAY = days_from_civil(9999, 12, 31)
_DAY_NUMBER = re.compile(r"[0-9]{1,7}")
_ISO_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
TODAY_FIELDS = ("earned", "awards", "sent", "feedback", "consultation", "survey")


# --- days --------------------------------------------------------------------------


def iso_date(day: int) -> str:
    year, month, dom = civil_from_days(day)
    return f"{year:04d}-{month:02d}-{dom:02d}"


def parse_day(params: dict[str, str], name: str) -> int | None:
    """A program day given as a number or as an ISO date; None when absent."""
    value = params.get(name)
    if value is None:
        return None
    if _DAY_NUMBER.fullmatch(value) and int(value) <= MAX_DAY:
        return int(value)
    match = _ISO_DATE.fullmatch(value)
    if match:
        year, month, dom = (int(g) for g in match.groups())
        # Round-tripping rejects 2026-02-30 and other dates that do not exist.
        if year >= 1970 and 1 <= month <= 12 and 1 <= dom <= 31:
            day = days_from_civil(year, month, dom)
            if civil_from_days(day) == (year, month, dom):
                return day
    raise bad_param(name, "expected a program day number or a date YYYY-MM-DD")


def check_range(first: int, end: int, max_days: int | None = None) -> None:
    if first >= end:
        detail = f"from ({first}) must be before to ({end}): the period is [from, to)"
        raise ApiError("invalid_range", detail, parameter="to")
    if max_days is not None and end - first > max_days:
        detail = f"{end - first} days asked; at most {max_days} per request"
        raise ApiError("invalid_range", detail, parameter="from")


def period_doc(first: int | None, end: int | None) -> dict[str, Any]:
    return {
        "from": first,
        "to": end,
        "from_date": None if first is None else iso_date(first),
        "to_date": None if end is None else iso_date(end),
    }


# --- accounts and merchants --------------------------------------------------------


def pending_view(entry: list) -> dict[str, Any]:
    amount, release_at, expires_at, issuer, earned_at, order_id = entry
    return {
        "amount": amount,
        "release_at": release_at,
        "expires_at": expires_at,
        "issuer": address_of(issuer),
        "earned_at": earned_at,
        "order_id": order_id,
    }


def account_extras(
    account: Account, now_s: int, program: Program, rules: Rules
) -> dict[str, Any]:
    """The loyalty fields of an account document. `account` has had its
    released pending coins turned into lots (Account.release), as the ledger
    would at its next touch, so `pending` lists only coins still held back."""
    today = program.day_of(now_s)
    counts = account.counts_on(today)
    window = rules.tier_window_days
    earned = (
        window_total(prune_history(account.history, today, window), today, window)
        if rules.tiers_on
        else 0
    )
    return {
        "pending": [pending_view(entry) for entry in account.pending],
        "pending_balance": account.pending_balance(now_s),
        "tier": account.tier,
        "tier_multiplier_bp": rules.tier_multiplier(account.tier),
        "tier_window_earned": earned,
        "today": {"day": today, **dict(zip(TODAY_FIELDS, counts, strict=True))},
    }


def merchant_extras(merchant: Merchant) -> dict[str, Any]:
    return {
        "expired": merchant.expired,
        "clawed_back": merchant.clawed_back,
        "price_per_coin": merchant.price_per_coin,
        "reimbursement_per_coin": merchant.reimbursement_per_coin,
        "categories": [
            {"category": name, "rate": rate} for name, rate in merchant.categories
        ],
    }


# --- the program -------------------------------------------------------------------


def rules_doc(rules: Rules) -> dict[str, Any]:
    return {
        "admin_threshold": rules.admin_threshold,
        "earning": {
            "min_spend": rules.min_spend,
            "pending_seconds": rules.pending_s,
            "customer_daily_cap": rules.customer_daily_cap,
            "velocity_per_day": rules.velocity_per_day,
            "rounding": "floor",
        },
        "expiry": {
            "policy": ExpiryPolicy(rules.expiry_policy).name.lower(),
            "days": rules.expiry_days,
        },
        "tiers": {
            "window_days": rules.tier_window_days,
            "levels": [
                {"tier": i + 1, "threshold": threshold, "multiplier_bp": bp}
                for i, (threshold, bp) in enumerate(rules.tiers)
            ],
        },
        "engagement": [
            {
                "kind": EngagementKind(kind).name.lower(),
                "coins": coins,
                "daily_cap": cap,
            }
            for kind, coins, cap in rules.engagement
        ],  # fmt: skip
    }


def program_view(
    program: Program, rules: Rules, from_chain: bool, height: int, now_s: int
) -> dict[str, Any]:
    doc = rules_doc(rules)
    doc["transfers"] = {
        "allowed": program.transfers_allowed,
        "daily_limit": rules.transfer_daily_limit,
    }
    return {
        "height": height,
        "as_of": now_s,
        # Until a program change first writes the rules record they are genesis's.
        "source": "chain" if from_chain else "genesis",
        "admins": [address_of(key) for key in program.admins],
        "utc_offset_minutes": program.utc_offset_minutes,
        "min_validators": program.min_validators,
        **doc,
    }


def campaign_status(campaign: list, now_s: int) -> str:
    if now_s < campaign[C_START]:
        return "scheduled"
    return "active" if now_s < campaign[C_END] else "ended"


def campaign_view(campaign: list, now_s: int) -> dict[str, Any]:
    return {
        "campaign_id": campaign[C_ID],
        "start": campaign[C_START],
        "end": campaign[C_END],
        "multiplier_bp": campaign[C_MULT],
        "bonus": campaign[C_BONUS],
        "customer_cap": campaign[C_CAP],
        "merchants": [address_of(m) for m in campaign[C_MERCHANTS]],
        "status": campaign_status(campaign, now_s),
    }


def campaigns_view(campaigns: list[list], height: int, now_s: int) -> dict[str, Any]:
    return {
        "height": height,
        "as_of": now_s,
        "combining": "multipliers add their excess over 1x relative to the base, "
        "bonuses add, each campaign floored and capped on its own",
        "campaigns": [campaign_view(c, now_s) for c in campaigns],
    }


def _plain(value: Any) -> Any:
    """A parsed change argument as a document value."""
    if isinstance(value, bytes):
        return address_of(value)
    if isinstance(value, IntEnum):
        return value.name.lower()
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def change_args(action: int, args: Any) -> dict[str, Any]:
    try:
        parsed: NamedTuple = parse_change(action, args)
    except DecodeError:
        # Proposals are checked at admission; this only guards a future format.
        return {"raw": _plain(args)}
    return {name: _plain(v) for name, v in zip(parsed._fields, parsed, strict=True)}


def proposals_view(
    proposals: list[list], threshold: int, height: int, now_s: int
) -> dict[str, Any]:
    items = []
    for p in proposals:
        action = ChangeAction(p[P_ACTION])
        items.append(
            {
                "id": p[P_ID].hex(),
                "proposer": address_of(p[P_PROPOSER]),
                "action": action.name.lower(),
                "action_number": int(action),
                "args": change_args(action, p[P_ARGS]),
                "deadline": p[P_DEADLINE],
                "approvals": [address_of(a) for a in p[P_APPROVALS]],
                "approvals_needed": max(0, threshold - len(p[P_APPROVALS])),
                # Approvals are refused from the deadline on; the proposal is
                # dropped a week later.
                "status": "open" if now_s < p[P_DEADLINE] else "expired",
            }
        )
    return {
        "height": height,
        "as_of": now_s,
        "admin_threshold": threshold,
        "proposals": items,
    }


# --- settlement --------------------------------------------------------------------

SETTLEMENT_COLUMNS = [
    "merchant",
    "name",
    "issued",
    "redeemed",
    "expired",
    "clawed_back",
    "price_per_coin",
    "reimbursement_per_coin",
    "fee",
    "reimbursement",
    "net",
    "liability",
]
_SUMMED = ("issued", "redeemed", "expired", "clawed_back", "fee", "reimbursement",
           "net", "liability")  # fmt: skip


def settlement_view(
    report: Settlement,
    first: int | None,
    end: int | None,
    height: int,
    now_s: int,
) -> dict[str, Any]:
    rows = []
    for row in report.rows:
        rows.append(
            {
                "merchant": address_of(row.merchant),
                "name": row.name,
                "issued": row.issued,
                "redeemed": row.redeemed,
                "expired": row.expired,
                "clawed_back": row.clawed_back,
                "price_per_coin": row.price_per_coin,
                "reimbursement_per_coin": row.reimbursement_per_coin,
                "fee": row.fee,
                "reimbursement": row.reimbursement,
                "net": row.net,
                "liability": report.liability_by_issuer.get(row.merchant, 0),
                "redeemed_by_issuer": [
                    {"issuer": address_of(issuer), "coins": coins}
                    for issuer, coins in row.redeemed_by_issuer.items()
                ],
            }
        )
    totals = {name: sum(r[name] for r in rows) for name in _SUMMED}
    return {
        "height": height,
        "as_of": now_s,
        "period": {
            "all_time": first is None and end is None,
            **period_doc(first, end),
        },  # fmt: skip
        "rows": rows,
        "totals": totals,
        "matrix": [
            {"redeemer": address_of(r), "issuer": address_of(i), "coins": coins}
            for (r, i), coins in report.matrix.items()
        ],
        # Outstanding now, whatever the period: coins customers hold, pending
        # included, by the merchant that issued them.
        "liability": {
            "total": report.liability,
            "by_issuer": [
                {"issuer": address_of(issuer), "coins": coins}
                for issuer, coins in report.liability_by_issuer.items()
                if coins
            ],
        },
        "debt": report.debt,
    }


def settlement_csv(doc: dict[str, Any]) -> tuple[list[str], list[list[Any]]]:
    """The settlement table: a row per merchant, a column per issuer of coins
    redeemed (`redeemed_from:<issuer>`), and a last row of totals."""
    issuers = sorted(
        {split["issuer"] for row in doc["rows"] for split in row["redeemed_by_issuer"]}
    )
    header = [*SETTLEMENT_COLUMNS, *(f"redeemed_from:{i}" for i in issuers)]
    rows = []
    for row in doc["rows"]:
        split = {s["issuer"]: s["coins"] for s in row["redeemed_by_issuer"]}
        rows.append(
            [row[name] for name in SETTLEMENT_COLUMNS]
            + [split.get(i, 0) for i in issuers]
        )
    totals = doc["totals"]
    rows.append(
        ["total", ""]
        + [totals.get(name, "") for name in SETTLEMENT_COLUMNS[2:]]
        + [
            sum(r[len(SETTLEMENT_COLUMNS) + n] for r in rows)
            for n in range(len(issuers))
        ]
    )
    return header, rows
