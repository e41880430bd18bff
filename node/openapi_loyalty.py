"""The OpenAPI description of the loyalty routes (node.api_loyalty): the
program's rules, campaigns and proposals, settlement and analytics.

node.openapi merges these schemas and paths into the document it serves.
Ratios are basis points rounded down (null when the denominator is 0);
periods are program days [from, to) (node.views_loyalty).
"""

from __future__ import annotations

from typing import Any

from node.openapi import (
    BOOL,
    INT,
    STR,
    UINT,
    content,
    get,
    obj,
    ok,
    param,
    ref,
)

# Negative when a day's reversals outweigh its redemptions.
NULLABLE_BP = {"type": ["integer", "null"]}
NULLABLE_DAY = {"type": ["integer", "null"], "minimum": 0}
NULLABLE_DATE = {"type": ["string", "null"], "format": "date"}


def _array(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


def schemas() -> dict[str, Any]:
    address = ref("Address")
    issuer_coins = obj({"issuer": address, "coins": INT})
    period = obj(
        {
            "from": NULLABLE_DAY,
            "to": NULLABLE_DAY,
            "from_date": NULLABLE_DATE,
            "to_date": NULLABLE_DATE,
        },
        description="Program days [from, to): `to` is the first day after.",
    )
    day_row = obj(
        {
            "day": UINT,
            "date": {"type": "string", "format": "date"},
            "issued": UINT,
            "purchase_issued": UINT,
            "engagement_issued": UINT,
            "campaign_issued": UINT,
            "awards": UINT,
            "engagements": UINT,
            "redeemed": {"type": "integer", "description": "Net of reversals."},
            "reversed": UINT,
            "redemptions": UINT,
            "clawed_back": UINT,
            "expired": UINT,
            "transferred": UINT,
            "active_customers": UINT,
            "new_customers": UINT,
            "redemption_rate_bp": NULLABLE_BP,
            "tiers": {
                **_array(UINT),
                "description": "Customers per tier (index = tier) after the day.",
            },
        }
    )
    window = obj(
        {
            "from": UINT,
            "to": UINT,
            **{
                name: INT
                for name in day_row["properties"]
                if name not in ("day", "date", "tiers", "redemption_rate_bp")
            },
            "redemption_rate_bp": NULLABLE_BP,
        }
    )
    return {
        "PendingCoins": obj(
            {
                "amount": UINT,
                "release_at": UINT,
                "expires_at": {"type": "integer", "description": "0: never"},
                "issuer": address,
                "earned_at": UINT,
                "order_id": STR,
            },
            description="Coins inside their return window: held, not spendable.",
        ),
        "DayCounts": obj(
            {
                "day": INT,
                "earned": UINT,
                "awards": UINT,
                "sent": UINT,
                "feedback": UINT,
                "consultation": UINT,
                "survey": UINT,
            },
            description="The customer's counters for today's daily caps (kept "
            "only while a rule needs them).",
        ),
        "Program": obj(
            {
                "height": UINT,
                "as_of": UINT,
                "source": {"enum": ["genesis", "chain"]},
                "admins": _array(address),
                "admin_threshold": UINT,
                "utc_offset_minutes": INT,
                "min_validators": UINT,
                "earning": obj(
                    {
                        "min_spend": UINT,
                        "pending_seconds": UINT,
                        "customer_daily_cap": UINT,
                        "velocity_per_day": UINT,
                        "rounding": {"const": "floor"},
                    }
                ),
                "expiry": obj(
                    {
                        "policy": {
                            "enum": ["never", "days", "end_of_month", "end_of_year"]
                        },
                        "days": UINT,
                    }
                ),
                "tiers": obj(
                    {
                        "window_days": UINT,
                        "levels": _array(
                            obj(
                                {
                                    "tier": UINT,
                                    "threshold": UINT,
                                    "multiplier_bp": UINT,
                                }
                            )
                        ),
                    }
                ),
                "engagement": _array(
                    obj(
                        {
                            "kind": {"enum": ["feedback", "consultation", "survey"]},
                            "coins": UINT,
                            "daily_cap": UINT,
                        }
                    )
                ),
                "transfers": obj({"allowed": BOOL, "daily_limit": UINT}),
            }
        ),
        "Campaign": obj(
            {
                "campaign_id": STR,
                "start": UINT,
                "end": UINT,
                "multiplier_bp": UINT,
                "bonus": UINT,
                "customer_cap": UINT,
                "merchants": {
                    **_array(address),
                    "description": "Empty: every merchant.",
                },
                "status": {"enum": ["scheduled", "active", "ended"]},
            },
            description="Active while start <= block time < end.",
        ),
        "Campaigns": obj(
            {
                "height": UINT,
                "as_of": UINT,
                "combining": STR,
                "campaigns": _array(ref("Campaign")),
            }
        ),
        "Proposals": obj(
            {
                "height": UINT,
                "as_of": UINT,
                "admin_threshold": UINT,
                "proposals": _array(
                    obj(
                        {
                            "id": ref("Hash"),
                            "proposer": address,
                            "action": STR,
                            "action_number": UINT,
                            "args": {
                                "type": "object",
                                "description": "The change's arguments by name.",
                            },
                            "deadline": UINT,
                            "approvals": _array(address),
                            "approvals_needed": UINT,
                            "status": {"enum": ["open", "expired"]},
                        }
                    )
                ),
            }
        ),
        "SettlementRow": obj(
            {
                "merchant": address,
                "name": STR,
                "issued": UINT,
                "redeemed": INT,
                "expired": UINT,
                "clawed_back": UINT,
                "price_per_coin": UINT,
                "reimbursement_per_coin": UINT,
                "fee": INT,
                "reimbursement": INT,
                "net": {
                    "type": "integer",
                    "description": "reimbursement - fee: > 0, the company owes "
                    "the merchant.",
                },
                "liability": INT,
                "redeemed_by_issuer": _array(issuer_coins),
            }
        ),
        "Settlement": obj(
            {
                "height": UINT,
                "as_of": UINT,
                "period": {
                    "allOf": [period, obj({"all_time": BOOL})],
                },
                "rows": _array(ref("SettlementRow")),
                "totals": obj(
                    {
                        name: INT
                        for name in (
                            "issued",
                            "redeemed",
                            "expired",
                            "clawed_back",
                            "fee",
                            "reimbursement",
                            "net",
                            "liability",
                        )
                    }  # fmt: skip
                ),
                "matrix": _array(
                    obj({"redeemer": address, "issuer": address, "coins": INT})
                ),
                "liability": obj({"total": INT, "by_issuer": _array(issuer_coins)}),
                "debt": UINT,
            }
        ),
        "AnalyticsDay": day_row,
        "AnalyticsDaily": obj(
            {
                "height": UINT,
                "as_of": UINT,
                "period": period,
                "days": _array(ref("AnalyticsDay")),
            }
        ),
        "AnalyticsWindow": window,
        "CampaignLift": obj(
            {
                "campaign_id": STR,
                "start": UINT,
                "end": UINT,
                "status": {"enum": ["scheduled", "active", "ended"]},
                "merchants": _array(address),
                "first_day": INT,
                "days": UINT,
                "issued_during": UINT,
                "awards_during": UINT,
                "issued_before": UINT,
                "awards_before": UINT,
                "lift_bp": NULLABLE_BP,
            },
            description="Purchase issuance on the campaign's days so far against "
            "the same number of days just before it.",
        ),
        "AnalyticsSummary": obj(
            {
                "height": UINT,
                "as_of": UINT,
                "today": INT,
                "today_date": {"type": "string", "format": "date"},
                "totals": {"type": "object", "additionalProperties": INT},
                "liability": obj({"total": INT, "by_issuer": _array(issuer_coins)}),
                "debt": UINT,
                "tiers": _array(UINT),
                "last_7_days": ref("AnalyticsWindow"),
                "last_30_days": ref("AnalyticsWindow"),
                "campaigns": _array(ref("CampaignLift")),
            }
        ),
    }


DAY_DOC = (
    "A program day: its number (days since 1970-01-01 in the program's "
    "time zone) or an ISO date YYYY-MM-DD."
)
DAY = {"type": "string", "pattern": r"^([0-9]{1,7}|[0-9]{4}-[0-9]{2}-[0-9]{2})$"}


def _period_params(default: str) -> tuple[dict[str, Any], ...]:
    return (
        param("from", "query", DAY, f"First day of the period. {DAY_DOC} {default}"),
        param("to", "query", DAY, f"First day after the period. {DAY_DOC}"),
        param(
            "format",
            "query",
            {"type": "string", "enum": ["json", "csv"]},
            "csv for a CSV export; without it, `Accept: text/csv` also asks for CSV.",
        ),
    )


def _table(description: str, schema: str) -> dict[str, Any]:
    csv = {"text/csv": {"schema": STR}}
    return {
        "200": {
            "description": description,
            "content": {**content(ref(schema)), **csv},
        }
    }


def paths() -> dict[str, Any]:
    return {
        "/v1/program": get(
            "program",
            "The loyalty program's rules in force",
            ok("The rules", "Program"),
        ),
        "/v1/campaigns": get(
            "campaigns",
            "Campaigns not yet pruned, with their status",
            ok("Campaigns", "Campaigns"),
        ),
        "/v1/proposals": get(
            "proposals",
            "Open program-change proposals and their approvals",
            ok("Proposals", "Proposals"),
        ),
        "/v1/settlement": get(
            "settlement",
            "Per-merchant settlement and the issuer-to-redeemer matrix",
            _table(
                "The settlement table; CSV has a row per merchant, a "
                "`redeemed_from:<issuer>` column per issuer and a total row.",
                "Settlement",
            ),
            "BadRequest",
            params=_period_params("Without from and to: all time."),
            description="Periods are half-open [from, to) in program days. "
            "Liability and debt are as of the latest block, whatever the period.",
        ),
        "/v1/analytics/daily": get(
            "analytics_daily",
            "Per-day aggregates of the loyalty program",
            _table("One row per day, days without activity included", "AnalyticsDaily"),
            "BadRequest",
            params=_period_params(
                "Default: 30 days before `to`; `to` defaults to the day after "
                "the latest block's; at most 3660 days."
            ),
        ),
        "/v1/analytics/summary": get(
            "analytics_summary",
            "Totals, liability, tiers, the last 7 and 30 days, campaign lift",
            ok("The summary", "AnalyticsSummary"),
        ),
    }
