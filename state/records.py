"""Records kept in ledger state, their keys, and the buffered view over them.

Every key that belongs to the ledger starts with b"s" and is covered by the
state root (docs/state-root.md). The records of accounts, merchants and
orders are arrays whose trailing loyalty fields are left out while they hold
their defaults, so a ledger that never uses a rule stores exactly what it
stored before the rule existed; the encoding of a value is still unique,
because whether the trailing fields appear is a function of the value.

Coins sit in lots [amount, expires_at, issuer, earned_at]; expires_at 0 means
the lot never expires. Lots of one account are kept sorted by expiry (never
last), then issuer, and lots with the same expiry and issuer are merged, so
the record stays small and spending is earliest-expiry first. Coins still in
their return window sit in pending entries [amount, release_at, expires_at,
issuer, earned_at, order_id] and count from release_at on.
"""

from __future__ import annotations

from collections.abc import Callable

import msgpack

from state.calendar import program_day
from state.codec import encoder
from state.codes import Code
from state.program import Rules
from state.root import Accumulator, ElementMemo

PREFIX_ACCOUNT = b"sa"
PREFIX_MERCHANT = b"sm"
PREFIX_ORDER = b"so"
KEY_PROGRAM = b"sp"
KEY_VALIDATORS = b"sv"
KEY_PENDING_CHANGES = b"sq"
PREFIX_PAST_VALIDATOR = b"sw"
PREFIX_BALLOT = b"sb"
PREFIX_EVIDENCE = b"se"
STATE_PREFIX = b"s"

# Loyalty program records (docs/loyalty.md).
KEY_RULES = b"sl"  # program rules; absent means the genesis rules
KEY_CAMPAIGNS = b"sc"  # the campaigns not yet ended
KEY_PROPOSALS = b"sg"  # open program-change proposals
PREFIX_CAMPAIGN_USE = b"sk"  # + customer + campaign id: [coins]
# The expiry index is not state: it is a function of the accounts' lots, which
# the root covers, so it is written blind (never read back during a block)
# outside the root's namespace. Whatever it makes the ledger do to an account
# still shows in the root.
PREFIX_EXPIRY = b"x"  # + expires_at (8) + account: b""
PREFIX_MATRIX = b"sr"  # + redeemer + issuer: [coins]
PREFIX_DAY = b"sd"  # + merchant + day (4): per-day counters
PREFIX_ENGAGEMENT = b"sn"  # + awarder + reference: [customer, kind, coins]
PREFIX_REDEMPTION = b"su"  # + redeem tx hash: [customer, merchant, amount, lots,
#                                              reversed]

# The issuer of coins the company awards itself (engagement rewards signed by
# an admin). No key can sign as 32 zero bytes, so it can never act.
COMPANY = bytes(32)

_NEVER = 1 << 64  # sort key of a lot that does not expire
_UNREAD = object()  # StateView: no record read yet (None: read, absent)

# Indexes into Account.today.
TODAY_EARNED, TODAY_AWARDS, TODAY_SENT = 0, 1, 2
TODAY_ENGAGEMENT = 3  # + kind - 1
_TODAY_SLOTS = 6


class Refused(Exception):
    """A rule refused the transaction; the receipt carries `code`."""

    def __init__(self, code: Code, detail: str = ""):
        super().__init__(detail or code.slug)
        self.code = code


# --- keys --------------------------------------------------------------------------


def account_key(account: bytes) -> bytes:
    return PREFIX_ACCOUNT + account


def merchant_key(merchant: bytes) -> bytes:
    return PREFIX_MERCHANT + merchant


def order_key(merchant: bytes, order_id: str) -> bytes:
    return PREFIX_ORDER + merchant + order_id.encode()


def past_validator_key(key: bytes) -> bytes:
    return PREFIX_PAST_VALIDATOR + key


def ballot_key(effective_height: int, action: int, key: bytes) -> bytes:
    return PREFIX_BALLOT + effective_height.to_bytes(8, "big") + bytes([action]) + key


def evidence_key(validator: bytes, height: int, round: int, vote_type: int) -> bytes:
    return (
        PREFIX_EVIDENCE
        + validator
        + height.to_bytes(8, "big")
        + round.to_bytes(4, "big")
        + bytes([vote_type])
    )


def expiry_key(expires_at: int, account: bytes) -> bytes:
    return PREFIX_EXPIRY + expires_at.to_bytes(8, "big") + account


def matrix_key(redeemer: bytes, issuer: bytes) -> bytes:
    return PREFIX_MATRIX + redeemer + issuer


def day_key(merchant: bytes, day: int) -> bytes:
    return PREFIX_DAY + merchant + day.to_bytes(4, "big")


def campaign_use_key(customer: bytes, campaign_id: str) -> bytes:
    return PREFIX_CAMPAIGN_USE + customer + campaign_id.encode()


def engagement_key(awarder: bytes, reference: str) -> bytes:
    return PREFIX_ENGAGEMENT + awarder + reference.encode()


def redemption_key(tx_hash: bytes) -> bytes:
    return PREFIX_REDEMPTION + tx_hash


# --- records -----------------------------------------------------------------------


def _live(expires_at: int, now_s: int) -> bool:
    return expires_at == 0 or expires_at > now_s


def lot_order(lot: list) -> tuple:
    return (lot[1] or _NEVER, lot[2])


class Account:
    """[frozen, debt, lots] + [pending, tier, history, today] when used.

    history is [[program day, coins earned], ...] inside the tier window;
    today is [day, earned, awards, sent, feedback, consultation, survey], the
    customer's counters for the daily caps of one program day.
    """

    __slots__ = ("frozen", "debt", "lots", "pending", "tier", "history", "today")

    def __init__(self, frozen=False, debt=0, lots=None, pending=None, tier=0,
                 history=None, today=None):  # fmt: skip
        self.frozen = frozen
        self.debt = debt
        self.lots: list[list] = lots if lots is not None else []
        self.pending: list[list] = pending if pending is not None else []
        self.tier: int = tier
        self.history: list[list] = history if history is not None else []
        self.today: list = today if today is not None else []

    def to_wire(self) -> list | None:
        extended = self.pending or self.tier or self.history or self.today
        if not (self.frozen or self.debt or self.lots or extended):
            return None  # an empty account is no entry at all
        base = [self.frozen, self.debt, self.lots]
        if not extended:
            return base
        return base + [self.pending, self.tier, self.history, self.today]

    @classmethod
    def from_wire(cls, v: list) -> Account:
        return cls(*v)

    def balance(self, now_s: int) -> int:
        """Spendable coins at now_s: live lots and released, live pending coins."""
        total = 0
        for lot in self.lots:
            if _live(lot[1], now_s):
                total += lot[0]
        for entry in self.pending:
            if entry[1] <= now_s and _live(entry[2], now_s):
                total += entry[0]
        return total

    def holding(self, now_s: int) -> int:
        """balance(now_s) + pending_balance(now_s): every coin not expired."""
        total = 0
        for lot in self.lots:
            expires_at = lot[1]
            if expires_at == 0 or expires_at > now_s:
                total += lot[0]
        for entry in self.pending:
            if entry[1] > now_s:
                total += entry[0]
            elif entry[2] == 0 or entry[2] > now_s:
                total += entry[0]
        return total

    def pending_balance(self, now_s: int) -> int:
        """Coins still inside their return window at now_s."""
        return sum(e[0] for e in self.pending if e[1] > now_s)

    def held(self) -> int:
        """Every coin in the record, expired or not: what the supply counts."""
        return sum(lot[0] for lot in self.lots) + sum(e[0] for e in self.pending)

    def release(self, now_s: int) -> None:
        """Turn pending entries whose window has closed into ordinary lots."""
        if not self.pending or all(e[1] > now_s for e in self.pending):
            return
        kept = []
        for amount, release_at, expires_at, issuer, earned_at, _ in self.pending:
            if release_at <= now_s:
                self.add_lot(amount, expires_at, issuer, earned_at)
            else:
                kept.append([amount, release_at, expires_at, issuer, earned_at, _])
        self.pending = kept

    def add_lot(self, amount: int, expires_at: int, issuer: bytes, now_s: int):
        for lot in self.lots:
            if lot[1] == expires_at and lot[2] == issuer:
                lot[0] += amount
                return
        self.lots.append([amount, expires_at, issuer, now_s])
        self.lots.sort(key=lot_order)

    def take(self, amount: int, now_s: int, issuer: bytes | None = None) -> list[list]:
        """Remove `amount` coins, earliest expiry first; return the lots taken.

        The caller has checked the balance (or, with `issuer`, takes at most
        what that issuer's live lots hold). Lots already expired are skipped,
        never spent.
        """
        taken = []
        remaining = amount
        kept = []
        for lot in self.lots:
            usable = _live(lot[1], now_s) and (issuer is None or lot[2] == issuer)
            if remaining and usable:
                part = min(remaining, lot[0])
                taken.append([part, lot[1], lot[2], lot[3]])
                remaining -= part
                if part < lot[0]:
                    kept.append([lot[0] - part, lot[1], lot[2], lot[3]])
            else:
                kept.append(lot)
        self.lots = kept
        return taken

    def live_from(self, issuer: bytes, now_s: int) -> int:
        return sum(
            lot[0] for lot in self.lots if lot[2] == issuer and _live(lot[1], now_s)
        )

    def counts_on(self, day: int) -> list[int]:
        """The daily counters for `day` (zeros when they belong to another day)."""
        if self.today and self.today[0] == day:
            return list(self.today[1:])
        return [0] * _TODAY_SLOTS

    def count(self, day: int, slot: int, n: int) -> None:
        counts = self.counts_on(day)
        counts[slot] += n
        self.today = [day, *counts]


class Merchant:
    """[name, rate, daily_cap, active, issued, redeemed, day, issued_on_day]
    + [expired, clawed_back, price_per_coin, reimbursement_per_coin,
    categories] when any of those is set; categories is [[name, rate], ...]."""

    __slots__ = (
        "name",
        "rate",
        "daily_cap",
        "active",
        "issued",
        "redeemed",
        "day",
        "issued_on_day",
        "expired",
        "clawed_back",
        "price_per_coin",
        "reimbursement_per_coin",
        "categories",
    )

    def __init__(self, name, rate, daily_cap, active=True, issued=0, redeemed=0,
                 day=0, issued_on_day=0, expired=0, clawed_back=0,
                 price_per_coin=0, reimbursement_per_coin=0,
                 categories=None):  # fmt: skip
        self.name = name
        self.rate = rate
        self.daily_cap = daily_cap
        self.active = active
        self.issued = issued
        self.redeemed = redeemed
        self.day = day
        self.issued_on_day = issued_on_day
        self.expired = expired
        self.clawed_back = clawed_back
        self.price_per_coin = price_per_coin
        self.reimbursement_per_coin = reimbursement_per_coin
        self.categories: list[list] = categories if categories is not None else []

    def to_wire(self) -> list:
        base = [
            self.name,
            self.rate,
            self.daily_cap,
            self.active,
            self.issued,
            self.redeemed,
            self.day,
            self.issued_on_day,
        ]
        extra = [
            self.expired,
            self.clawed_back,
            self.price_per_coin,
            self.reimbursement_per_coin,
            self.categories,
        ]
        return base + extra if any(extra) else base

    @classmethod
    def from_wire(cls, v: list) -> Merchant:
        return cls(*v)

    def issued_today(self, day: int) -> int:
        return self.issued_on_day if self.day == day else 0

    def rate_for(self, category: str) -> int:
        """The category's rate when the merchant names one, else its base rate."""
        for name, rate in self.categories:
            if name == category:
                return rate
        return self.rate


class Order:
    """[customer, amount, coins, refunded] + [clawed, release_at, tier_day].

    amount and refunded are minor units of currency; coins is what the order
    earned and clawed what refunds took back; release_at is the end of its
    return window (0: none) and tier_day the day its coins count for tiers."""

    __slots__ = ("customer", "amount", "coins", "refunded", "clawed", "release_at",
                 "tier_day")  # fmt: skip

    def __init__(self, customer: bytes, amount: int, coins: int, refunded: int = 0,
                 clawed: int = 0, release_at: int = 0, tier_day: int = 0):  # fmt: skip
        self.customer = customer
        self.amount = amount
        self.coins = coins
        self.refunded = refunded
        self.clawed = clawed
        self.release_at = release_at
        self.tier_day = tier_day

    def to_wire(self) -> list:
        base = [self.customer, self.amount, self.coins, self.refunded]
        extra = [self.clawed, self.release_at, self.tier_day]
        return base + extra if any(extra) else base

    @classmethod
    def from_wire(cls, v: list) -> Order:
        return cls(*v)


class Program:
    __slots__ = ("admins", "transfers_allowed", "utc_offset_minutes", "min_validators")

    def __init__(
        self,
        admins: list[bytes],
        transfers_allowed: bool,
        utc_offset: int,
        min_validators: int = 1,
    ):
        self.admins = admins
        self.transfers_allowed = transfers_allowed
        self.utc_offset_minutes = utc_offset
        self.min_validators = min_validators

    def to_wire(self) -> list:
        return [
            self.admins,
            self.transfers_allowed,
            self.utc_offset_minutes,
            self.min_validators,
        ]

    @classmethod
    def from_wire(cls, v: list) -> Program:
        return cls(*v)

    def day_of(self, now_s: int) -> int:
        """The program day of a block time: days since 1970-01-01 in the program's
        time zone, rounded down."""
        return program_day(now_s, self.utc_offset_minutes)


class DayCounters:
    """One merchant's figures for one program day (`sd` + merchant + day):
    [issued, redeemed, reversed, expired, clawed_back, by_issuer], by_issuer
    [[issuer, coins], ...] the day's redemptions at this merchant net of
    reversals, by the issuer of the coins (negative when reversals of earlier
    days' redemptions outweigh the day's redemptions)."""

    __slots__ = ("issued", "redeemed", "reversed", "expired", "clawed_back",
                 "by_issuer")  # fmt: skip

    def __init__(self, issued=0, redeemed=0, reversed=0, expired=0, clawed_back=0,
                 by_issuer=None):  # fmt: skip
        self.issued = issued
        self.redeemed = redeemed
        self.reversed = reversed
        self.expired = expired
        self.clawed_back = clawed_back
        self.by_issuer: list[list] = by_issuer if by_issuer is not None else []

    def to_wire(self) -> list:
        return [self.issued, self.redeemed, self.reversed, self.expired,
                self.clawed_back, self.by_issuer]  # fmt: skip

    @classmethod
    def from_wire(cls, v: list) -> DayCounters:
        return cls(*v)

    def add_by_issuer(self, issuer: bytes, coins: int) -> None:
        for pair in self.by_issuer:
            if pair[0] == issuer:
                pair[1] += coins
                break
        else:
            self.by_issuer.append([issuer, coins])
            self.by_issuer.sort()
        # A redemption reversed on its own day leaves no trace in the split.
        self.by_issuer = [pair for pair in self.by_issuer if pair[1]]


class Entry:
    """A record that is a plain array (validator set, ballots, evidence, ...)."""

    __slots__ = ("value",)

    def __init__(self, value: list | None):
        self.value = value

    def to_wire(self) -> list | None:
        return self.value or None

    @classmethod
    def from_wire(cls, v: list) -> Entry:
        return cls(v)


# --- the state view ----------------------------------------------------------------


class StateView:
    """Ledger records read through from the store, changes buffered in memory.

    Records are decoded once per block and kept as mutable objects; `finish`
    encodes the changed ones, updates the state accumulator and returns the
    writes for the store. Nothing touches the store until the block commits.
    """

    def __init__(self, read: Callable[[bytes], bytes | None]):
        self._read = read
        self._records: dict[bytes, object] = {}
        self._original: dict[bytes, bytes | None] = {}
        self._dirty: set[bytes] = set()
        # Entries of indexes outside the state (the expiry index): written with
        # the block, never read through this view, not in the root.
        self._index: dict[bytes, bytes | None] = {}

    def _load(self, key: bytes, record_type):
        record = self._records.get(key, _UNREAD)
        if record is not _UNREAD:
            return record
        raw = self._read(key)
        self._original[key] = raw
        # Records in the store were written canonical by this code and are
        # covered by the state root, so they are read without re-checking.
        record = (
            None
            if raw is None
            else record_type.from_wire(msgpack.unpackb(raw, raw=False))
        )
        self._records[key] = record
        return record

    def put(self, key: bytes, record) -> None:
        if key not in self._original:
            self._original[key] = self._read(key)
        self._records[key] = record
        self._dirty.add(key)

    def record(self, key: bytes, record_type):
        """The record at `key`, decoded as `record_type`; None when absent."""
        return self._load(key, record_type)

    def account(self, key: bytes) -> Account | None:
        return self._load(account_key(key), Account)

    def merchant(self, key: bytes) -> Merchant | None:
        return self._load(merchant_key(key), Merchant)

    def order(self, merchant: bytes, order_id: str) -> Order | None:
        return self._load(order_key(merchant, order_id), Order)

    def program(self) -> Program:
        return self._load(KEY_PROGRAM, Program)

    def day_counters(self, merchant: bytes, day: int) -> DayCounters:
        return self.day_counters_at(day_key(merchant, day))

    def day_counters_at(self, key: bytes) -> DayCounters:
        found = self._load(key, DayCounters)
        if found is None:
            found = DayCounters()
            self._records[key] = found
        return found

    def rules(self) -> Rules | None:
        """The program rules record; None until a change first writes it."""
        return self._load(KEY_RULES, Rules)

    def put_index(self, key: bytes, value: bytes | None) -> None:
        """Write (or with None, delete) an index entry that is not state."""
        self._index[key] = value

    def put_day(self, merchant: bytes, day: int, counters: DayCounters) -> None:
        self.put(day_key(merchant, day), counters)

    def entry(self, key: bytes) -> Entry:
        """A plain-array record; its value is None when absent."""
        found = self._load(key, Entry)
        return found if found is not None else Entry(None)

    def finish(
        self, acc: Accumulator, memo: ElementMemo | None = None
    ) -> dict[bytes, bytes | None]:
        """Encode changed records, fold them into `acc`, return the writes
        (index entries included, which are not folded into `acc`).

        Keys are visited in sorted order so the work is the same on every node.
        """
        writes: dict[bytes, bytes | None] = {}
        records, original = self._records, self._original
        added: list[tuple[bytes, bytes]] = []
        removed: list[tuple[bytes, bytes]] = []
        pack = encoder()
        for key in sorted(self._dirty):
            record = records[key]
            wire = None if record is None else record.to_wire()
            new = None if wire is None else pack(wire)
            old = original[key]
            if new != old:
                if old is not None:
                    removed.append((key, old))
                if new is not None:
                    added.append((key, new))
                writes[key] = new
        acc.update(added, removed, memo)
        writes.update(self._index)
        return writes
