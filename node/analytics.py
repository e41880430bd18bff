"""Reading the indexer's aggregates (node.indexer) for `/v1/analytics/...`.

Every read here touches only the days asked for: a range of `id` records,
one backward seek for the tier distribution in force when the range starts,
and for distinct customers the `ia` markers of those days. Liability and
debt come from the indexer's running counters, never from a scan of the
accounts.

Figures per program day (half-open ranges `[from, to)`, node.views_loyalty):

    issued               coins issued (purchases + engagement rewards)
    redeemed             coins redeemed, net of reversals made that day
    redemption_rate_bp   redeemed * 10,000 / issued, rounded down (null when
                         nothing was issued)
    active_customers     distinct accounts with a customer event that day
                         (earn, pending, repay, redeem, transfer, clawback,
                         debt, reverse); expiry alone does not count
    campaign_issued      purchase coins of awards made while a campaign
                         applied to the awarding merchant
    tiers                customers per tier (index = tier) after the day,
                         each customer at the tier of its last purchase award

Expired coins count on the day of the block that removed them, as in the
ledger's settlement counters, so analytics and settlement agree.
"""

from __future__ import annotations

from typing import Any

import msgpack

from node.indexer import (
    DAY_FIELDS,
    KEY_TOTALS,
    PREFIX_ACTIVE,
    PREFIX_CAMPAIGN,
    PREFIX_DAY,
    PREFIX_ISSUER,
    PREFIX_MERCHANT_DAY,
    TOTAL_FIELDS,
    Day,
    Indexer,
    Totals,
    day_bytes,
    day_key_of,
)
from node.views_loyalty import campaign_status, iso_date
from state.address import address_of
from state.program import C_END, C_ID, C_MERCHANTS, C_START

BP = 10_000
# A campaign is compared with at most this many days before it.
MAX_BASELINE_DAYS = 366
# The summary's campaign comparison covers the most recent campaigns.
MAX_SUMMARY_CAMPAIGNS = 32
# Fields of a day row after `day` and `date`, in order (CSV columns too).
ROW_FIELDS = (*DAY_FIELDS, "redemption_rate_bp")
_SUMMED = tuple(f for f in ROW_FIELDS if f not in ("redemption_rate_bp",))


def _unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False)


def rate_bp(redeemed: int, issued: int) -> int | None:
    return None if issued <= 0 else redeemed * BP // issued


class Analytics:
    def __init__(self, indexer: Indexer):
        self.indexer = indexer
        self.db = indexer.db

    # --- days ---

    def _days(self, first: int, end: int) -> dict[int, Day]:
        it = self.db.iterator(start=day_key_of(first), stop=day_key_of(end))
        return {
            int.from_bytes(key[len(PREFIX_DAY) :], "big"): Day.from_wire(_unpack(raw))
            for key, raw in it
        }

    def _tiers_before(self, first: int) -> list[int]:
        """The tier distribution in force when day `first` begins."""
        it = self.db.iterator(start=PREFIX_DAY, stop=day_key_of(first), reverse=True)
        for _, raw in it:
            return Day.from_wire(_unpack(raw)).tiers
        return []

    def daily(self, first: int, end: int) -> list[dict[str, Any]]:
        """One row per program day in [first, end), days without activity
        included (zeros, and the tier distribution carried over)."""
        found = self._days(first, end)
        tiers = self._tiers_before(first)
        rows = []
        for day in range(first, end):
            record = found.get(day)
            if record is not None:
                tiers = record.tiers
            rows.append(day_row(day, record or Day(), tiers))
        return rows

    def distinct_active(self, first: int, end: int) -> int:
        """Distinct customers active on any day in [first, end)."""
        start = PREFIX_ACTIVE + day_bytes(first)
        stop = PREFIX_ACTIVE + day_bytes(end)
        skip = len(PREFIX_ACTIVE) + 4
        it = self.db.iterator(start=start, stop=stop, include_value=False)
        return len({key[skip:] for key in it})

    def window(self, first: int, end: int) -> dict[str, Any]:
        """Sums over days [first, end)."""
        sums = dict.fromkeys(_SUMMED, 0)
        for record in self._days(first, end).values():
            row = day_row(0, record, [])
            for name in _SUMMED:
                sums[name] += row[name]
        sums["active_customers"] = self.distinct_active(first, end)
        return {
            "from": first,
            "to": end,
            **sums,
            "redemption_rate_bp": rate_bp(sums["redeemed"], sums["issued"]),
        }

    # --- running counters ---

    def totals(self) -> Totals:
        raw = self.db.get(KEY_TOTALS)
        return Totals() if raw is None else Totals.from_wire(_unpack(raw))

    def liability(self) -> tuple[int, dict[bytes, int]]:
        """Coins customers hold now (pending included), in total and by issuer:
        the indexer's running count, kept from receipts and expirations."""
        by_issuer = {}
        for key, raw in self.db.iterator(prefix=PREFIX_ISSUER):
            held = _unpack(raw)[0]
            if held:
                by_issuer[key[len(PREFIX_ISSUER) :]] = held
        return sum(by_issuer.values()), by_issuer

    # --- campaigns ---

    def campaigns(self) -> list[list]:
        """Every campaign the index has seen, most recent start first."""
        found = [_unpack(raw) for _, raw in self.db.iterator(prefix=PREFIX_CAMPAIGN)]
        return sorted(found, key=lambda c: (-c[C_START], c[C_ID]))

    def purchase_issued(
        self, first: int, end: int, merchants: list[bytes]
    ) -> tuple[int, int]:
        """(coins, awards) of purchases on days [first, end), by `merchants`
        (by every merchant when empty)."""
        if first >= end:
            return 0, 0
        if not merchants:
            days = self._days(first, end).values()
            coins = sum(d.values["purchase_issued"] for d in days)
            return coins, sum(d.values["awards"] for d in days)
        wanted = set(merchants)
        coins = awards = 0
        start = PREFIX_MERCHANT_DAY + day_bytes(first)
        stop = PREFIX_MERCHANT_DAY + day_bytes(end)
        for key, raw in self.db.iterator(start=start, stop=stop):
            if key[len(PREFIX_MERCHANT_DAY) + 4 :] in wanted:
                c, a = _unpack(raw)
                coins, awards = coins + c, awards + a
        return coins, awards

    def campaign_lift(self, campaign: list, today: int, now_s: int) -> dict[str, Any]:
        """Purchase issuance on the campaign's days (so far) against the same
        number of days just before it, by the merchants it applies to."""
        day_of = self.indexer.day_of
        first, last = day_of(campaign[C_START]), day_of(campaign[C_END] - 1)
        end = min(last, today) + 1
        days = max(0, min(end - first, MAX_BASELINE_DAYS))
        end = first + days
        merchants = campaign[C_MERCHANTS]
        during, during_awards = self.purchase_issued(first, end, merchants)
        before, before_awards = self.purchase_issued(first - days, first, merchants)
        return {
            "campaign_id": campaign[C_ID],
            "start": campaign[C_START],
            "end": campaign[C_END],
            "status": campaign_status(campaign, now_s),
            "merchants": [address_of(m) for m in merchants],
            "first_day": first,
            "days": days,
            "issued_during": during,
            "awards_during": during_awards,
            "issued_before": before,
            "awards_before": before_awards,
            "lift_bp": rate_bp(during, before),
        }

    # --- the summary ---

    def summary(self, height: int, now_s: int) -> dict[str, Any]:
        today = self.indexer.day_of(now_s)
        totals = self.totals()
        t = totals.values
        total, by_issuer = self.liability()
        redeemed = t["redeemed"] - t["reversed"]
        campaigns = self.campaigns()[:MAX_SUMMARY_CAMPAIGNS]
        return {
            "height": height,
            "as_of": now_s,
            "today": today,
            "today_date": iso_date(today),
            "totals": {
                **{name: t[name] for name in TOTAL_FIELDS},
                "redeemed": redeemed,
                "redemption_rate_bp": rate_bp(redeemed, t["issued"]),
            },
            "liability": {
                "total": total,
                "by_issuer": [
                    {"issuer": address_of(k), "coins": v}
                    for k, v in sorted(by_issuer.items())
                ],
            },
            "debt": t["debt"],
            "tiers": totals.tiers,
            "last_7_days": self.window(today - 6, today + 1),
            "last_30_days": self.window(today - 29, today + 1),
            "campaigns": [self.campaign_lift(c, today, now_s) for c in campaigns],
        }


def day_row(day: int, record: Day, tiers: list[int]) -> dict[str, Any]:
    v = record.values
    redeemed = v["redeemed"] - v["reversed"]
    row: dict[str, Any] = {"day": day, "date": iso_date(day)}
    for name in DAY_FIELDS:
        row[name] = v[name]
    row["redeemed"] = redeemed  # net of the day's reversals
    row["redemption_rate_bp"] = rate_bp(redeemed, v["issued"])
    row["tiers"] = list(tiers)
    return row


def daily_csv(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Day rows as CSV: one column per figure and one per tier (`tier_0`...)."""
    width = max((len(r["tiers"]) for r in rows), default=0)
    header = ["day", "date", *ROW_FIELDS, *(f"tier_{n}" for n in range(width))]
    out = []
    for r in rows:
        tiers = r["tiers"] + [0] * (width - len(r["tiers"]))
        rate = r["redemption_rate_bp"]
        values = [r[name] for name in ROW_FIELDS[:-1]]
        out.append([r["day"], r["date"], *values, "" if rate is None else rate, *tiers])
    return header, out
