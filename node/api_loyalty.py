"""HTTP handlers of the loyalty program: its rules, settlement and analytics.

    GET /v1/program               the rules in force (the `sl` record, or
                                  genesis's until a change writes it)
    GET /v1/campaigns             campaigns not yet pruned, with their status
    GET /v1/proposals             open program-change proposals, approvals
    GET /v1/settlement            per-merchant settlement for a period of
                                  program days [from, to), JSON or CSV
    GET /v1/analytics/daily       the indexer's per-day aggregates, JSON or CSV
    GET /v1/analytics/summary     totals, liability, tiers, recent windows and
                                  campaign comparisons

Reads are as of the latest committed block (its time is `as_of`). No request
scans the chain's history: settlement reads the merchant records and, for a
period, each merchant's per-day counters within it; analytics reads the
indexer's records of the days asked for (node.analytics); liability comes
from the indexer's running counters.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgpack
from aiohttp import web

from node import views_loyalty as lv
from node.analytics import Analytics, daily_csv
from node.api_common import csv_reply, node_of, query, reply, wants_csv
from state.program import Rules
from state.records import (
    KEY_CAMPAIGNS,
    KEY_PROGRAM,
    KEY_PROPOSALS,
    KEY_RULES,
    PREFIX_DAY,
    PREFIX_MATRIX,
    PREFIX_MERCHANT,
    Program,
)
from state.settlement import Settlement, settlement
from state.store import Store

# Days one analytics request may cover (ten years); the default is 30.
MAX_ANALYTICS_DAYS = 3660
DEFAULT_ANALYTICS_DAYS = 30
_PERIOD_PARAMS = ("from", "to", "format")


def _record(store: Store, key: bytes) -> list | None:
    raw = store.get_state(key)
    return None if raw is None else msgpack.unpackb(raw, raw=False)


def _now_s(store: Store) -> int:
    return store.time_ms // 1000


def _program(store: Store) -> Program:
    return Program.from_wire(_record(store, KEY_PROGRAM))


def current_rules(store: Store) -> tuple[Rules, bool]:
    """(rules in force, whether they come from a program change)."""
    wire = _record(store, KEY_RULES)
    if wire is None:
        return store.genesis.program.loyalty, False
    return Rules.from_wire(wire), True


def analytics_of(request: web.Request) -> Analytics:
    return Analytics(node_of(request).app.indexer)


# --- the program ---------------------------------------------------------------------


async def program(request: web.Request) -> web.Response:
    query(request)
    store = node_of(request).store
    rules, from_chain = current_rules(store)
    doc = lv.program_view(
        _program(store), rules, from_chain, store.height, _now_s(store)
    )
    return reply(request, doc)


async def campaigns(request: web.Request) -> web.Response:
    query(request)
    store = node_of(request).store
    found = _record(store, KEY_CAMPAIGNS) or []
    return reply(request, lv.campaigns_view(found, store.height, _now_s(store)))


async def proposals(request: web.Request) -> web.Response:
    query(request)
    store = node_of(request).store
    rules, _ = current_rules(store)
    found = _record(store, KEY_PROPOSALS) or []
    doc = lv.proposals_view(found, rules.admin_threshold, store.height, _now_s(store))
    return reply(request, doc)


# --- settlement ----------------------------------------------------------------------


def settlement_items(
    store: Store, first: int | None, end: int | None
) -> Iterator[tuple[bytes, bytes]]:
    """The state entries settlement needs, and no others: the merchant records
    and, for a period, each merchant's day counters inside it (for all time,
    the redeemer-issuer matrix). Accounts are not read: liability comes from
    the indexer."""
    db = store.db
    merchants = list(db.iterator(prefix=PREFIX_MERCHANT))
    yield from merchants
    if first is None and end is None:
        yield from db.iterator(prefix=PREFIX_MATRIX)
        return
    lo = (first or 0).to_bytes(4, "big")
    hi = b"\xff" * 5 if end is None else end.to_bytes(4, "big")
    for key, _ in merchants:
        prefix = PREFIX_DAY + key[len(PREFIX_MERCHANT) :]
        yield from db.iterator(start=prefix + lo, stop=prefix + hi)


def settlement_report(
    request: web.Request, first: int | None, end: int | None
) -> Settlement:
    node = node_of(request)
    store = node.store
    report = settlement(settlement_items(store, first, end), first, end)
    analytics = Analytics(node.app.indexer)
    report.liability, report.liability_by_issuer = analytics.liability()
    report.debt = analytics.totals().values["debt"]
    return report


async def settlement_table(request: web.Request) -> web.Response:
    params = query(request, *_PERIOD_PARAMS)
    first, end = lv.parse_day(params, "from"), lv.parse_day(params, "to")
    if first is not None and end is not None:
        lv.check_range(first, end)
    csv = wants_csv(request, params)
    store = node_of(request).store
    report = settlement_report(request, first, end)
    doc = lv.settlement_view(report, first, end, store.height, _now_s(store))
    if csv:
        header, rows = lv.settlement_csv(doc)
        span = "all" if first is None and end is None else f"{first or 0}-{end or ''}"
        return csv_reply(header, rows, f"settlement-{span}.csv")
    return reply(request, doc)


# --- analytics -----------------------------------------------------------------------


async def analytics_daily(request: web.Request) -> web.Response:
    params = query(request, *_PERIOD_PARAMS)
    store = node_of(request).store
    analytics = analytics_of(request)
    today = analytics.indexer.day_of(_now_s(store))
    first, end = lv.parse_day(params, "from"), lv.parse_day(params, "to")
    # By default the 30 days up to and including the latest block's day.
    if end is None:
        end = today + 1
    if first is None:
        first = max(0, end - DEFAULT_ANALYTICS_DAYS)
    lv.check_range(first, end, MAX_ANALYTICS_DAYS)
    csv = wants_csv(request, params)
    rows = analytics.daily(first, end)
    if csv:
        header, lines = daily_csv(rows)
        return csv_reply(header, lines, f"analytics-daily-{first}-{end}.csv")
    doc = {
        "height": store.height,
        "as_of": _now_s(store),
        "period": lv.period_doc(first, end),
        "days": rows,
    }
    return reply(request, doc)


async def analytics_summary(request: web.Request) -> web.Response:
    query(request)
    store = node_of(request).store
    doc = analytics_of(request).summary(store.height, _now_s(store))
    return reply(request, doc)


ROUTES = [
    ("GET", "/v1/program", program),
    ("GET", "/v1/campaigns", campaigns),
    ("GET", "/v1/proposals", proposals),
    ("GET", "/v1/settlement", settlement_table),
    ("GET", "/v1/analytics/daily", analytics_daily),
    ("GET", "/v1/analytics/summary", analytics_summary),
]
