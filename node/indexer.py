"""The node's loyalty indexer: per-day aggregates of committed blocks.

The company's CRM and BI tools ask for figures per program day (coins issued,
redeemed, clawed back and expired, active customers, campaign issuance, the
tier distribution) and for the outstanding liability. Summing the chain for
each request would read the whole history, so the node keeps these figures
as it commits blocks, fed by each block's receipts and by
`BlockResult.expirations` (expiry has no transaction and so no receipt).

The aggregates live in the node's LevelDB under the prefix b"i", outside the
ledger's namespace (b"s", covered by the state root), so they never touch
consensus:

    im                       [height]: the last block indexed
    it                       Totals: all-time counters and the tier counts
    ii + issuer              [held, expired]: coins of this issuer that
                             customers hold (pending included), and how many
                             expired; the liability per issuer
    id + day (4)             Day: one program day's aggregates
    ia + day (4) + account   b"": the account was active on that day
    ic + account             [tier]: every customer seen, with its tier as of
                             its last purchase award
    iq + day (4) + merchant  [coins, awards]: purchase issuance by merchant
    ik + campaign id         the campaign as last set (kept after the ledger
                             prunes it, for the campaign comparison)

Crash behaviour. The index entries of a block are written in the same
synced write batch as the block itself (`LedgerApp.commit_block` hands them
to the store with the state writes), so after a crash the database holds the
block and its index entries, or neither. A store the index is behind (a
database written before the node had an indexer, or by a tool that commits
through the store directly) is caught up at start from the stored blocks and
receipts. Expiry is not in receipts, so while catching up the expired figures
are taken from the ledger's own per-day counters (`sd`) and merchant records,
which give the same numbers; tiers and campaign attribution then use the
state at catch-up time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import msgpack

from state.block import Block, Receipt, decode_block, decode_receipts
from state.bounded import drop_oldest_quarter
from state.calendar import program_day
from state.codec import encode
from state.codes import Code
from state.program import active_campaigns
from state.records import (
    KEY_CAMPAIGNS,
    KEY_PROGRAM,
    PREFIX_MERCHANT,
    Account,
    DayCounters,
    Merchant,
    Program,
    account_key,
    day_key,
    redemption_key,
)
from state.store import Store
from state.tx import Kind, SignatureCache, Transaction

log = logging.getLogger("node.indexer")

INDEX_PREFIX = b"i"
KEY_HEIGHT = b"im"
KEY_TOTALS = b"it"
PREFIX_ISSUER = b"ii"
PREFIX_DAY = b"id"
PREFIX_ACTIVE = b"ia"
PREFIX_CUSTOMER = b"ic"
PREFIX_MERCHANT_DAY = b"iq"
PREFIX_CAMPAIGN = b"ik"

# Receipt events that mean a customer did something (or had something done to
# its coins by a merchant); merchants' counterpart events are not customers.
CUSTOMER_EVENTS = frozenset(
    {"earn", "pending", "repay", "redeem", "transfer_out", "transfer_in",
     "clawback", "debt", "reverse"}
)  # fmt: skip

# A catch-up commits this many blocks per write batch.
CATCH_UP_BATCH = 256

# Committed index entries kept in memory (two per recent customer; about 200
# bytes each with the dictionary's share: some 20 MB when full).
COMMITTED_CACHE_ENTRIES = 100_000

# Redemption records (state.spending): [customer, merchant, amount, lots, reversed].
_R_LOTS = 3


def day_bytes(day: int) -> bytes:
    return day.to_bytes(4, "big")


def day_key_of(day: int) -> bytes:
    return PREFIX_DAY + day_bytes(day)


def _unpack(raw: bytes) -> list:
    return msgpack.unpackb(raw, raw=False)


# Fields of a Day record, in wire order; `tiers` follows them.
DAY_FIELDS = (
    "issued",  # every coin issued: purchases and engagement rewards
    "purchase_issued",
    "engagement_issued",
    "campaign_issued",  # purchase coins awarded while a campaign applied
    "awards",  # purchase awards that succeeded
    "engagements",  # engagement rewards that succeeded
    "redeemed",  # gross: before reversals
    "reversed",  # redemptions reversed on this day (of any day)
    "redemptions",
    "clawed_back",
    "expired",
    "transferred",
    "active_customers",
    "new_customers",
)
TOTAL_FIELDS = (
    "issued",
    "purchase_issued",
    "engagement_issued",
    "campaign_issued",
    "awards",
    "engagements",
    "redeemed",
    "reversed",
    "redemptions",
    "clawed_back",
    "expired",
    "transferred",
    "debt",  # customers' total debt now
    "customers",  # distinct customers ever seen
)


@dataclass
class Day:
    """One program day's aggregates; `tiers` is the tier distribution (count of
    customers per tier, index = tier) after the day's last indexed block."""

    values: dict[str, int] = field(default_factory=lambda: dict.fromkeys(DAY_FIELDS, 0))
    tiers: list[int] = field(default_factory=list)

    def to_wire(self) -> list:
        return [*(self.values[name] for name in DAY_FIELDS), self.tiers]

    @classmethod
    def from_wire(cls, v: list) -> Day:
        return cls(dict(zip(DAY_FIELDS, v[: len(DAY_FIELDS)], strict=True)), v[-1])


@dataclass
class Totals:
    values: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(TOTAL_FIELDS, 0)
    )
    tiers: list[int] = field(default_factory=list)

    def to_wire(self) -> list:
        return [*(self.values[name] for name in TOTAL_FIELDS), self.tiers]

    @classmethod
    def from_wire(cls, v: list) -> Totals:
        return cls(dict(zip(TOTAL_FIELDS, v[: len(TOTAL_FIELDS)], strict=True)), v[-1])


StateRead = Callable[[bytes], bytes | None]


class _Writes:
    """Index entries of one block (or catch-up batch), read through the
    indexer's cache of committed entries to the db.

    Entries updated many times a block (a customer's tier, a merchant's day)
    are kept decoded as records and encoded once, by `flush`; their keys are
    read only through `record`.
    """

    def __init__(self, db, committed: dict[bytes, bytes]) -> None:
        self.db = db
        self.committed = committed
        self.entries: dict[bytes, bytes] = {}
        self._records: dict[bytes, list | None] = {}
        self._changed: set[bytes] = set()

    def get(self, key: bytes) -> bytes | None:
        if key in self.entries:
            return self.entries[key]
        value = self.committed.get(key)
        if value is None:
            value = self.db.get(key)
            if value is not None:
                _keep(self.committed, key, value)
        return value

    def put(self, key: bytes, value: bytes) -> None:
        self.entries[key] = value

    def record(self, key: bytes) -> list | None:
        if key not in self._records:
            raw = self.get(key)
            self._records[key] = None if raw is None else _unpack(raw)
        return self._records[key]

    def put_record(self, key: bytes, value: list) -> None:
        self._records[key] = value
        self._changed.add(key)

    def flush(self) -> None:
        for key in self._changed:
            self.entries[key] = encode(self._records[key])
        self._changed.clear()


def _keep(cache: dict[bytes, bytes], key: bytes, value: bytes) -> None:
    if key not in cache and len(cache) >= COMMITTED_CACHE_ENTRIES:
        drop_oldest_quarter(cache)
    cache[key] = value


class Indexer:
    """Keeps the per-day aggregates of the loyalty program (see module doc)."""

    def __init__(self, store: Store, signatures: SignatureCache | None = None):
        self.store = store
        self.db = store.db
        # Index entries as committed, by key: a returning customer's `ia` and
        # `ic` entries, the day and the totals. Each block reads them, and
        # each was a database read of a few microseconds. Filled by reads
        # and by commits, which also overwrite every cached key they write,
        # so a cached value is always the committed one.
        self._committed: dict[bytes, bytes] = {}
        # The entries of the block being committed, kept by `committed`.
        self._pending: dict[bytes, bytes] = {}
        self.signatures = signatures if signatures is not None else SignatureCache()
        # The program's time zone is fixed at genesis.
        program = Program.from_wire(_unpack(store.get_state(KEY_PROGRAM)))
        self.offset_minutes = program.utc_offset_minutes
        raw = self.db.get(KEY_HEIGHT)
        self.height = 0 if raw is None else _unpack(raw)[0]

    def day_of(self, time_s: int) -> int:
        return program_day(time_s, self.offset_minutes)

    # --- the commit path ---

    def block_entries(
        self,
        block: Block,
        txs: list[Transaction],
        receipts: list[Receipt],
        expirations: Iterable[tuple[bytes, bytes, int]],
        state_after: StateRead,
    ) -> dict[bytes, bytes]:
        """The index entries of `block`, to be written with it; `state_after`
        reads the ledger state as the block leaves it."""
        writes = _Writes(self.db, self._committed)
        self._index(writes, block, txs, receipts, list(expirations), state_after)
        self._pending = writes.entries
        return writes.entries

    def committed(self, height: int) -> None:
        """The block and its entries (the last `block_entries`) are in the
        store."""
        cache = self._committed
        for key, value in self._pending.items():
            _keep(cache, key, value)
        self._pending = {}
        self.height = height

    # --- catching up with the store ---

    def catch_up(self) -> int:
        """Index the stored blocks above the index's height; how many."""
        start, end = self.height + 1, self.store.height
        if start > end:
            return 0
        log.info("indexer catching up from=%d to=%d", start, end)
        for first in range(start, end + 1, CATCH_UP_BATCH):
            # Catch-up writes past the cache: it starts empty after them.
            self._committed.clear()
            writes = _Writes(self.db, {})
            last = min(first + CATCH_UP_BATCH - 1, end)
            for height in range(first, last + 1):
                block = decode_block(self.store.block_bytes(height))
                receipts = decode_receipts(self.store.receipts_bytes(height))
                txs = [self.signatures.decode(raw) for raw in block.txs]
                self._index(writes, block, txs, receipts, None, self.store.get_state)
            with self.db.write_batch(transaction=True, sync=True) as batch:
                for key, value in writes.entries.items():
                    batch.put(key, value)
            self.height = last
        return end - start + 1

    # --- indexing one block ---

    def _index(
        self,
        writes: _Writes,
        block: Block,
        txs: list[Transaction],
        receipts: list[Receipt],
        expirations: list[tuple[bytes, bytes, int]] | None,
        state_after: StateRead,
    ) -> None:
        time_s = block.header.time_s
        today = self.day_of(time_s)
        day_raw = writes.get(day_key_of(today))
        day = Day() if day_raw is None else Day.from_wire(_unpack(day_raw))
        totals_raw = writes.get(KEY_TOTALS)
        totals = (
            Totals() if totals_raw is None else Totals.from_wire(_unpack(totals_raw))
        )
        held: dict[bytes, list[int]] = {}  # issuer -> [held, expired]

        def issuer_of(issuer: bytes) -> list[int]:
            if issuer not in held:
                raw = writes.get(PREFIX_ISSUER + issuer)
                held[issuer] = [0, 0] if raw is None else _unpack(raw)
            return held[issuer]

        def count(name: str, n: int) -> None:
            day.values[name] += n
            totals.values[name] += n

        active_prefix = PREFIX_ACTIVE + day_bytes(today)
        merchant_day_prefix = PREFIX_MERCHANT_DAY + day_bytes(today)

        campaigns_raw = state_after(KEY_CAMPAIGNS)
        campaigns = [] if campaigns_raw is None else _unpack(campaigns_raw)
        for campaign in campaigns:
            key, value = PREFIX_CAMPAIGN + campaign[0].encode(), encode(campaign)
            if writes.get(key) != value:
                writes.put(key, value)

        touched = bool(expirations)
        for tx, receipt in zip(txs, receipts, strict=True):
            if receipt.code != Code.OK:
                continue
            events = receipt.events
            customers = sorted({a for name, a, _ in events if name in CUSTOMER_EVENTS})
            touched = touched or bool(customers)
            for account in customers:
                self._seen(writes, active_prefix, account, day, totals)
            delta = {name: d for name, _, d in events}
            if tx.kind in (Kind.AWARD_PURCHASE, Kind.ENGAGEMENT_REWARD):
                issuer = next(a for name, a, _ in events if name == "issue")
                coins, repaid = delta["issue"], delta.get("repay", 0)
                issuer_of(issuer)[0] += coins - repaid
                totals.values["debt"] -= repaid
                count("issued", coins)
                if tx.kind == Kind.ENGAGEMENT_REWARD:
                    count("engagement_issued", coins)
                    count("engagements", 1)
                    continue
                count("purchase_issued", coins)
                count("awards", 1)
                if coins and active_campaigns(campaigns, time_s, issuer):
                    count("campaign_issued", coins)
                self._merchant_day(writes, merchant_day_prefix, issuer, coins)
                self._tier(writes, tx.payload.customer, totals, state_after)
            elif tx.kind == Kind.REFUND_PURCHASE:
                issuer_of(tx.signer)[0] += delta["clawback"]  # coins taken back
                totals.values["debt"] += delta.get("debt", 0)
                count("clawed_back", delta["claw"])
            elif tx.kind == Kind.REDEEM:
                for amount, _, issuer, _ in self._lots(tx.hash, state_after):
                    issuer_of(issuer)[0] -= amount
                count("redeemed", tx.payload.amount)
                count("redemptions", 1)
            elif tx.kind == Kind.REVERSE_REDEMPTION:
                # Every lot returns; any that expired meanwhile is in the
                # block's expirations and leaves again below.
                for amount, _, issuer, _ in self._lots(tx.payload.redemption,
                                                       state_after):  # fmt: skip
                    issuer_of(issuer)[0] += amount
                count("reversed", delta["reverse"])
            elif tx.kind == Kind.TRANSFER:
                count("transferred", tx.payload.amount)

        if expirations is not None:
            for _, issuer, coins in expirations:
                entry = issuer_of(issuer)
                entry[0] -= coins
                entry[1] += coins
                count("expired", coins)
        else:
            touched = (
                self._reconcile_expiry(
                    writes, today, day, totals, issuer_of, state_after
                )
                or touched
            )

        for issuer, entry in held.items():
            writes.put(PREFIX_ISSUER + issuer, encode(entry))
        if touched:
            day.tiers = list(totals.tiers)
            writes.put(day_key_of(today), encode(day.to_wire()))
        writes.put(KEY_TOTALS, encode(totals.to_wire()))
        writes.put(KEY_HEIGHT, encode([block.height]))
        writes.flush()

    def _seen(
        self,
        writes: _Writes,
        active_prefix: bytes,
        account: bytes,
        day: Day,
        totals: Totals,
    ) -> None:
        """Count `account` as active today (active_prefix: the `ia` prefix of
        today), and as a customer when new."""
        active = active_prefix + account
        if writes.get(active) is None:
            writes.put(active, b"")
            day.values["active_customers"] += 1
        customer = PREFIX_CUSTOMER + account
        if writes.record(customer) is None:
            writes.put_record(customer, [0])
            day.values["new_customers"] += 1
            totals.values["customers"] += 1
            _bump(totals.tiers, 0, 1)

    def _tier(
        self, writes: _Writes, account: bytes, totals: Totals, state_after: StateRead
    ) -> None:
        """Move the customer to the tier its account shows after an award."""
        raw = state_after(account_key(account))
        tier = 0 if raw is None else Account.from_wire(_unpack(raw)).tier
        key = PREFIX_CUSTOMER + account
        old = writes.record(key)[0]
        if tier != old:
            _bump(totals.tiers, old, -1)
            _bump(totals.tiers, tier, 1)
            writes.put_record(key, [tier])

    @staticmethod
    def _merchant_day(
        writes: _Writes, merchant_day_prefix: bytes, merchant: bytes, coins: int
    ) -> None:
        key = merchant_day_prefix + merchant
        issued, awards = writes.record(key) or (0, 0)
        writes.put_record(key, [issued + coins, awards + 1])

    @staticmethod
    def _lots(redemption: bytes, state_after: StateRead) -> list[list]:
        raw = state_after(redemption_key(redemption))
        return [] if raw is None else _unpack(raw)[_R_LOTS]

    def _reconcile_expiry(
        self,
        writes: _Writes,
        today: int,
        day: Day,
        totals: Totals,
        issuer_of: Callable[[bytes], list[int]],
        state_after: StateRead,
    ) -> bool:
        """Expired figures while catching up, from the ledger's own counters:
        the day's total from the per-day counters (`sd`), and per issuer what
        its merchant record counts beyond what the index has seen. Both are
        exact whatever the number of blocks caught up."""
        expired_today = 0
        for key, raw in self.store.db.iterator(prefix=PREFIX_MERCHANT):
            issuer = key[len(PREFIX_MERCHANT) :]
            entry = issuer_of(issuer)
            missing = Merchant.from_wire(_unpack(raw)).expired - entry[1]
            if missing:
                entry[0] -= missing
                entry[1] += missing
                totals.values["expired"] += missing
            counters = state_after(day_key(issuer, today))
            if counters is not None:
                expired_today += DayCounters.from_wire(_unpack(counters)).expired
        changed = expired_today != day.values["expired"]
        day.values["expired"] = expired_today
        return changed


def _bump(counts: list[int], index: int, n: int) -> None:
    while len(counts) <= index:
        counts.append(0)
    counts[index] += n
