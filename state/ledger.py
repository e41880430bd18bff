"""The loyalty ledger: records kept in state and the rule of each transaction.

State is a set of byte keys and canonical values. Every key that belongs to
the ledger starts with b"s" and is covered by the state root:

    sa + account               Account   [frozen, debt, lots]
    sm + merchant              Merchant  [name, rate, daily_cap, active, issued,
                                          redeemed, day, issued_on_day]
    so + merchant + order_id   Order     [customer, amount, coins, refunded]
    sp                         Program   [admins, transfers_allowed,
                                          utc_offset_minutes, min_validators]
    sv                         validators [[name, key], ...] (proposer order)
    sw + key                   [name]: every key that ever was a validator
    sb + height + action + key Ballot    [name, [voter, ...]]: votes so far on
                                          one validator-set change
    sq                         approved changes not yet in effect,
                               [[effective_height, action, key, name], ...]
    se + key + height + round + type
                               evidence of double signing [evidence, reporter,
                                          height recorded]

Coins sit in lots [amount, expires_at, issuer, earned_at]; expires_at 0 means
the lot never expires. Lots of one account are kept sorted by expiry (never
last), then issuer, and lots with the same expiry and issuer are merged, so the
record stays small and spending is earliest-expiry first.

Each rule checks everything first and only then writes, so a refused
transaction changes nothing. The rules read block time (`now_s`) only.
"""

from __future__ import annotations

from collections.abc import Callable

import msgpack

from state.block import Receipt
from state.codec import encode
from state.codes import Code
from state.genesis import MAX_VALIDATORS
from state.root import Accumulator
from state.tx import (
    AwardPurchase,
    Kind,
    Redeem,
    RegisterMerchant,
    ReportEvidence,
    SetAccountFrozen,
    Transaction,
    Transfer,
    UpdateMerchant,
    ValidatorAction,
    ValidatorVote,
)
from state.votes import EvidenceError, check_double_sign

# No balance may exceed this, so no sum of balances nears the int64 range that
# other systems reading our exports may use.
MAX_BALANCE = 1 << 62
SECONDS_PER_DAY = 86_400

PREFIX_ACCOUNT = b"sa"
PREFIX_MERCHANT = b"sm"
PREFIX_ORDER = b"so"
KEY_PROGRAM = b"sp"
KEY_VALIDATORS = b"sv"
STATE_PREFIX = b"s"

_NEVER = 1 << 64  # sort key of a lot that does not expire


class Refused(Exception):
    """A rule refused the transaction; the receipt carries `code`."""

    def __init__(self, code: Code, detail: str = ""):
        super().__init__(detail or code.slug)
        self.code = code


# --- records -------------------------------------------------------------------------


class Account:
    __slots__ = ("frozen", "debt", "lots")

    def __init__(self, frozen: bool = False, debt: int = 0, lots=None):
        self.frozen = frozen
        self.debt = debt
        self.lots: list[list] = lots if lots is not None else []

    def to_wire(self) -> list | None:
        if not self.frozen and not self.debt and not self.lots:
            return None  # an empty account is no entry at all
        return [self.frozen, self.debt, self.lots]

    @classmethod
    def from_wire(cls, v: list) -> Account:
        return cls(v[0], v[1], v[2])

    def balance(self, now_s: int) -> int:
        total = 0
        for lot in self.lots:
            if lot[1] == 0 or lot[1] > now_s:
                total += lot[0]
        return total

    def add_lot(self, amount: int, expires_at: int, issuer: bytes, now_s: int):
        for lot in self.lots:
            if lot[1] == expires_at and lot[2] == issuer:
                lot[0] += amount
                return
        self.lots.append([amount, expires_at, issuer, now_s])
        self.lots.sort(key=_lot_order)

    def take(self, amount: int, now_s: int) -> list[list]:
        """Remove `amount` coins, earliest expiry first; return the lots taken.

        The caller has checked the balance. Lots already expired are skipped,
        never spent.
        """
        taken = []
        remaining = amount
        kept = []
        for lot in self.lots:
            live = lot[1] == 0 or lot[1] > now_s
            if remaining and live:
                part = min(remaining, lot[0])
                taken.append([part, lot[1], lot[2], lot[3]])
                remaining -= part
                if part < lot[0]:
                    kept.append([lot[0] - part, lot[1], lot[2], lot[3]])
            else:
                kept.append(lot)
        self.lots = kept
        return taken


def _lot_order(lot: list) -> tuple:
    return (lot[1] or _NEVER, lot[2])


class Merchant:
    __slots__ = (
        "name",
        "rate",
        "daily_cap",
        "active",
        "issued",
        "redeemed",
        "day",
        "issued_on_day",
    )

    def __init__(self, name, rate, daily_cap, active=True, issued=0, redeemed=0,
                 day=0, issued_on_day=0):  # fmt: skip
        self.name = name
        self.rate = rate
        self.daily_cap = daily_cap
        self.active = active
        self.issued = issued
        self.redeemed = redeemed
        self.day = day
        self.issued_on_day = issued_on_day

    def to_wire(self) -> list:
        return [
            self.name,
            self.rate,
            self.daily_cap,
            self.active,
            self.issued,
            self.redeemed,
            self.day,
            self.issued_on_day,
        ]

    @classmethod
    def from_wire(cls, v: list) -> Merchant:
        return cls(*v)

    def issued_today(self, day: int) -> int:
        return self.issued_on_day if self.day == day else 0


class Order:
    __slots__ = ("customer", "amount", "coins", "refunded")

    def __init__(self, customer: bytes, amount: int, coins: int, refunded: int = 0):
        self.customer = customer
        self.amount = amount
        self.coins = coins
        self.refunded = refunded

    def to_wire(self) -> list:
        return [self.customer, self.amount, self.coins, self.refunded]

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
        return (now_s + self.utc_offset_minutes * 60) // SECONDS_PER_DAY


class Entry:
    """A record that is a plain array (validator set, ballots, evidence)."""

    __slots__ = ("value",)

    def __init__(self, value: list | None):
        self.value = value

    def to_wire(self) -> list | None:
        return self.value or None

    @classmethod
    def from_wire(cls, v: list) -> Entry:
        return cls(v)


KEY_PENDING_CHANGES = b"sq"
PREFIX_PAST_VALIDATOR = b"sw"
PREFIX_BALLOT = b"sb"
PREFIX_EVIDENCE = b"se"
# A validator-set change may be voted for at most this many heights ahead.
MAX_CHANGE_AHEAD = 1_000_000


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


def account_key(account: bytes) -> bytes:
    return PREFIX_ACCOUNT + account


def merchant_key(merchant: bytes) -> bytes:
    return PREFIX_MERCHANT + merchant


def order_key(merchant: bytes, order_id: str) -> bytes:
    return PREFIX_ORDER + merchant + order_id.encode()


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

    def _load(self, key: bytes, record_type):
        if key in self._records:
            return self._records[key]
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

    def account(self, key: bytes) -> Account | None:
        return self._load(account_key(key), Account)

    def merchant(self, key: bytes) -> Merchant | None:
        return self._load(merchant_key(key), Merchant)

    def order(self, merchant: bytes, order_id: str) -> Order | None:
        return self._load(order_key(merchant, order_id), Order)

    def program(self) -> Program:
        return self._load(KEY_PROGRAM, Program)

    def entry(self, key: bytes) -> Entry:
        """A plain-array record; its value is None when absent."""
        found = self._load(key, Entry)
        return found if found is not None else Entry(None)

    def finish(self, acc: Accumulator) -> dict[bytes, bytes | None]:
        """Encode changed records, fold them into `acc`, return the writes.

        Keys are visited in sorted order so the work is the same on every node.
        """
        writes: dict[bytes, bytes | None] = {}
        records, original = self._records, self._original
        added: list[tuple[bytes, bytes]] = []
        removed: list[tuple[bytes, bytes]] = []
        for key in sorted(self._dirty):
            record = records[key]
            wire = None if record is None else record.to_wire()
            new = None if wire is None else encode(wire)
            old = original[key]
            if new != old:
                if old is not None:
                    removed.append((key, old))
                if new is not None:
                    added.append((key, new))
                writes[key] = new
        acc.update(added, removed)
        return writes


# --- the rules ---------------------------------------------------------------------


class Ledger:
    """Applies transactions to a StateView at one block's height and time."""

    def __init__(self, view: StateView, now_s: int, height: int, chain_id: str):
        self.view = view
        self.now_s = now_s
        self.height = height
        self.chain_id = chain_id
        self.program = view.program()
        self.day = self.program.day_of(now_s)
        self._handlers = {
            Kind.REGISTER_MERCHANT: self.register_merchant,
            Kind.UPDATE_MERCHANT: self.update_merchant,
            Kind.SET_ACCOUNT_FROZEN: self.set_account_frozen,
            Kind.AWARD_PURCHASE: self.award_purchase,
            Kind.REDEEM: self.redeem,
            Kind.TRANSFER: self.transfer,
            Kind.VALIDATOR_VOTE: self.validator_vote,
            Kind.REPORT_EVIDENCE: self.report_evidence,
        }

    def apply(self, tx: Transaction) -> Receipt:
        """Apply one admitted transaction; a refusal changes nothing."""
        try:
            events = self._handlers[tx.kind](tx.signer, tx.payload)
        except Refused as refusal:
            return Receipt(refusal.code)
        return Receipt(Code.OK, tuple(events))

    # --- admin ---

    def require_admin(self, signer: bytes) -> None:
        if signer not in self.program.admins:
            raise Refused(Code.UNAUTHORISED, "signer is not a program admin")

    def register_merchant(self, signer: bytes, p: RegisterMerchant) -> list:
        self.require_admin(signer)
        if self.view.merchant(p.merchant) is not None:
            raise Refused(Code.MERCHANT_EXISTS)

        self.view.put(merchant_key(p.merchant), Merchant(p.name, p.rate, p.daily_cap))
        return [("register", p.merchant, 0)]

    def update_merchant(self, signer: bytes, p: UpdateMerchant) -> list:
        self.require_admin(signer)
        merchant = self.view.merchant(p.merchant)
        if merchant is None:
            raise Refused(Code.UNKNOWN_MERCHANT)

        merchant.name = p.name
        merchant.rate = p.rate
        merchant.daily_cap = p.daily_cap
        merchant.active = p.active
        self.view.put(merchant_key(p.merchant), merchant)
        return [("update", p.merchant, 0)]

    def set_account_frozen(self, signer: bytes, p: SetAccountFrozen) -> list:
        self.require_admin(signer)
        account = self.view.account(p.account) or Account()

        account.frozen = p.frozen
        self.view.put(account_key(p.account), account)
        return [("freeze" if p.frozen else "unfreeze", p.account, 0)]

    # --- merchant ---

    def award_purchase(self, signer: bytes, p: AwardPurchase) -> list:
        merchant = self.active_merchant(signer)
        if p.customer == signer:
            raise Refused(Code.INVALID_RECIPIENT, "a merchant cannot award itself")
        customer = self.view.account(p.customer) or Account()
        if customer.frozen:
            raise Refused(Code.ACCOUNT_FROZEN)
        if self.view.order(signer, p.order_id) is not None:
            raise Refused(Code.DUPLICATE_ORDER)

        # Earning: coins = floor(amount * rate / 100); integers only.
        coins = p.amount * merchant.rate // 100
        if merchant.issued_today(self.day) + coins > merchant.daily_cap:
            raise Refused(Code.DAILY_CAP_EXCEEDED)
        if customer.balance(self.now_s) + coins > MAX_BALANCE:
            raise Refused(Code.BALANCE_LIMIT)

        # Earnings repay a debt (from a refund of spent coins) before they count.
        repaid = min(customer.debt, coins)
        customer.debt -= repaid
        if coins > repaid:
            customer.add_lot(coins - repaid, 0, signer, self.now_s)
        merchant.issued += coins
        merchant.issued_on_day = merchant.issued_today(self.day) + coins
        merchant.day = self.day
        self.view.put(account_key(p.customer), customer)
        self.view.put(merchant_key(signer), merchant)
        self.view.put(order_key(signer, p.order_id), Order(p.customer, p.amount, coins))
        return [("earn", p.customer, coins - repaid), ("issue", signer, coins)]

    def active_merchant(self, key: bytes) -> Merchant:
        merchant = self.view.merchant(key)
        if merchant is None:
            raise Refused(Code.UNKNOWN_MERCHANT)
        if not merchant.active:
            raise Refused(Code.MERCHANT_SUSPENDED)
        return merchant

    # --- customer ---

    def redeem(self, signer: bytes, p: Redeem) -> list:
        merchant = self.active_merchant(p.merchant)
        customer = self.spending_account(signer, p.amount)

        customer.take(p.amount, self.now_s)
        merchant.redeemed += p.amount
        self.view.put(account_key(signer), customer)
        self.view.put(merchant_key(p.merchant), merchant)
        return [("redeem", signer, -p.amount), ("accept", p.merchant, p.amount)]

    def transfer(self, signer: bytes, p: Transfer) -> list:
        if not self.program.transfers_allowed:
            raise Refused(Code.TRANSFERS_DISABLED)
        if p.to == signer:
            raise Refused(Code.INVALID_RECIPIENT, "cannot transfer to oneself")
        sender = self.spending_account(signer, p.amount)
        recipient = self.view.account(p.to) or Account()
        if recipient.frozen:
            raise Refused(Code.ACCOUNT_FROZEN, "recipient account is frozen")
        if recipient.balance(self.now_s) + p.amount > MAX_BALANCE:
            raise Refused(Code.BALANCE_LIMIT)

        # Transferred lots keep their expiry and issuer.
        for amount, expires_at, issuer, _ in sender.take(p.amount, self.now_s):
            recipient.add_lot(amount, expires_at, issuer, self.now_s)
        self.view.put(account_key(signer), sender)
        self.view.put(account_key(p.to), recipient)
        return [("transfer_out", signer, -p.amount), ("transfer_in", p.to, p.amount)]

    def spending_account(self, key: bytes, amount: int) -> Account:
        account = self.view.account(key)
        if account is None:
            raise Refused(Code.INSUFFICIENT_BALANCE)
        if account.frozen:
            raise Refused(Code.ACCOUNT_FROZEN)
        if account.balance(self.now_s) < amount:
            raise Refused(Code.INSUFFICIENT_BALANCE)
        return account

    # --- validators ---

    def validator_vote(self, signer: bytes, p: ValidatorVote) -> list:
        """Vote to add or remove a validator from `effective_height` on.

        The change is approved when more than two thirds of the current
        validators voted for the same (height, action, key), and takes effect
        at the end of block effective_height - 1, so the new set signs
        effective_height. The height must be at least 2 above this block.
        """
        current = self.view.entry(KEY_VALIDATORS).value
        keys = [key for _, key in current]
        if signer not in keys:
            raise Refused(Code.UNAUTHORISED, "signer is not a validator")
        self.check_validator_change(p, keys)
        ballot = self.view.entry(ballot_key(p.effective_height, p.action, p.validator))
        voters = ballot.value[1] if ballot.value else []
        if signer in voters:
            raise Refused(Code.ALREADY_VOTED)

        voters = sorted([*voters, signer])
        key = ballot_key(p.effective_height, p.action, p.validator)
        events = [("validator_vote", signer, 0)]
        if 3 * len(voters) > 2 * len(keys):
            pending = self.view.entry(KEY_PENDING_CHANGES).value or []
            change = [p.effective_height, int(p.action), p.validator, p.name]
            self.view.put(KEY_PENDING_CHANGES, Entry(sorted([*pending, change])))
            self.view.put(key, Entry(None))
            events.append(("validator_change_approved", p.validator, 0))
        else:
            self.view.put(key, Entry([p.name, voters]))
        return events

    def check_validator_change(self, p: ValidatorVote, keys: list[bytes]) -> None:
        if not self.height + 2 <= p.effective_height <= self.height + MAX_CHANGE_AHEAD:
            raise Refused(
                Code.INVALID_VALIDATOR_CHANGE,
                f"effective height must be {self.height + 2} or later",
            )
        if p.action == ValidatorAction.ADD and (p.validator in keys or not p.name):
            raise Refused(
                Code.INVALID_VALIDATOR_CHANGE,
                "only a named key that is not a validator can be added",
            )
        if p.action == ValidatorAction.REMOVE and p.validator not in keys:
            raise Refused(Code.INVALID_VALIDATOR_CHANGE, "key is not a validator")
        pending = self.view.entry(KEY_PENDING_CHANGES).value or []
        if any(change[2] == p.validator for change in pending):
            raise Refused(
                Code.INVALID_VALIDATOR_CHANGE,
                "a change of this validator is already approved",
            )
        size = len(keys) + sum(
            1 if c[1] == ValidatorAction.ADD else -1 for c in pending
        )
        size += 1 if p.action == ValidatorAction.ADD else -1
        if size < self.program.min_validators:
            raise Refused(
                Code.VALIDATOR_SET_LIMIT,
                f"the set would shrink to {size}, below the minimum of "
                f"{self.program.min_validators}",
            )
        if size > MAX_VALIDATORS:
            raise Refused(Code.VALIDATOR_SET_LIMIT, f"at most {MAX_VALIDATORS}")

    def end_block(self) -> None:
        """Put approved changes due at the next height into the validator set."""
        pending = self.view.entry(KEY_PENDING_CHANGES).value
        if not pending:
            return
        due = [c for c in pending if c[0] <= self.height + 1]
        if not due:
            return
        validators = list(self.view.entry(KEY_VALIDATORS).value)
        for _, action, key, name in due:
            if action == ValidatorAction.ADD:
                validators.append([name, key])
                self.view.put(past_validator_key(key), Entry([name]))
            else:
                validators = [v for v in validators if v[1] != key]
        self.view.put(KEY_VALIDATORS, Entry(validators))
        self.view.put(
            KEY_PENDING_CHANGES, Entry([c for c in pending if c[0] > self.height + 1])
        )

    # --- evidence ---

    def report_evidence(self, signer: bytes, p: ReportEvidence) -> list:
        """Record proof that a validator signed two conflicting votes."""
        try:
            validator, height, round, vote_type = check_double_sign(
                self.chain_id, p.evidence
            )
        except EvidenceError as exc:
            raise Refused(Code.INVALID_EVIDENCE, str(exc)) from None
        if self.view.entry(past_validator_key(validator)).value is None:
            raise Refused(Code.INVALID_EVIDENCE, "the signer was never a validator")
        key = evidence_key(validator, height, round, vote_type)
        if self.view.entry(key).value is not None:
            raise Refused(Code.EVIDENCE_EXISTS)

        self.view.put(key, Entry([p.evidence, signer, self.height]))
        return [("double_sign", validator, 0)]
