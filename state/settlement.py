"""Coalition settlement and the supply identity, computed from ledger state.

Merchants pay the company for the coins they issue and are reimbursed for the
coins redeemed at them, at the terms on chain (Merchant.price_per_coin and
reimbursement_per_coin, in minor units per coin). For each merchant:

    fee            = (issued - clawed_back) * price_per_coin
    reimbursement  = redeemed * reimbursement_per_coin
    net            = reimbursement - fee     (> 0: the company owes the merchant)

Coins that expire are not refunded to their issuer. Figures come from the
merchant records for all time, or from the per-day counters (`sd`) for a
period of program days [first_day, end_day). Redemptions are split by the
issuer of the coins (the issuer-to-redeemer matrix). The supply identity

    issued = held + redeemed + expired + clawed_back - debt

holds after every block, where held is every coin in an account (pending
included); `supply` computes both sides. All functions here are pure: they
read (key, value) pairs, for example Store.state_items(), and never write.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import msgpack

from state.records import (
    PREFIX_ACCOUNT,
    PREFIX_DAY,
    PREFIX_MATRIX,
    PREFIX_MERCHANT,
    Account,
    DayCounters,
    Merchant,
)

KEY = 32


@dataclass
class Row:
    """One merchant's settlement figures (coins, and minor units for money)."""

    merchant: bytes
    name: str = ""
    issued: int = 0
    redeemed: int = 0
    expired: int = 0
    clawed_back: int = 0
    price_per_coin: int = 0
    reimbursement_per_coin: int = 0
    redeemed_by_issuer: dict[bytes, int] = field(default_factory=dict)

    @property
    def fee(self) -> int:
        return (self.issued - self.clawed_back) * self.price_per_coin

    @property
    def reimbursement(self) -> int:
        return self.redeemed * self.reimbursement_per_coin

    @property
    def net(self) -> int:
        return self.reimbursement - self.fee


@dataclass
class Settlement:
    rows: list[Row]
    # (redeemer, issuer) -> coins redeemed at redeemer that issuer issued.
    matrix: dict[tuple[bytes, bytes], int]
    # Coins held by customers now (pending included), in total and by issuer.
    liability: int
    liability_by_issuer: dict[bytes, int]
    debt: int

    def total(self, name: str) -> int:
        """The sum of one figure (issued, fee, net, ...) over all rows."""
        return sum(getattr(row, name) for row in self.rows)


@dataclass(frozen=True)
class Supply:
    issued: int
    held: int
    redeemed: int
    expired: int
    clawed_back: int
    debt: int

    @property
    def holds(self) -> bool:
        """issued = held + redeemed + expired + clawed_back - debt."""
        right = self.held + self.redeemed + self.expired + self.clawed_back
        return self.issued == right - self.debt


def _value(raw: bytes) -> list:
    return msgpack.unpackb(raw, raw=False)


def settlement(
    items: Iterable[tuple[bytes, bytes]],
    first_day: int | None = None,
    end_day: int | None = None,
    now_s: int | None = None,
) -> Settlement:
    """The settlement table, for all time or for program days [first_day, end_day).

    Liability counts coins still live at now_s (every coin when None).
    """
    period = first_day is not None or end_day is not None
    lo = first_day if first_day is not None else 0
    hi = end_day if end_day is not None else 1 << 32
    rows: dict[bytes, Row] = {}
    matrix: dict[tuple[bytes, bytes], int] = {}
    liability: dict[bytes, int] = {}
    debt = 0

    def row(key: bytes) -> Row:
        return rows.setdefault(key, Row(key))

    for key, raw in items:
        prefix = key[:2]
        if prefix == PREFIX_MERCHANT:
            m = Merchant.from_wire(_value(raw))
            r = row(key[2:])
            r.name = m.name
            r.price_per_coin = m.price_per_coin
            r.reimbursement_per_coin = m.reimbursement_per_coin
            if not period:
                r.issued, r.redeemed = m.issued, m.redeemed
                r.expired, r.clawed_back = m.expired, m.clawed_back
        elif prefix == PREFIX_MATRIX and not period:
            redeemer, issuer = key[2 : 2 + KEY], key[2 + KEY :]
            coins = _value(raw)[0]
            matrix[(redeemer, issuer)] = coins
            row(redeemer).redeemed_by_issuer[issuer] = coins
        elif prefix == PREFIX_DAY and period:
            merchant = key[2 : 2 + KEY]
            day = int.from_bytes(key[2 + KEY :], "big")
            if not lo <= day < hi:
                continue
            c = DayCounters.from_wire(_value(raw))
            r = row(merchant)
            r.issued += c.issued
            r.redeemed += c.redeemed - c.reversed
            r.expired += c.expired
            r.clawed_back += c.clawed_back
            for issuer, coins in c.by_issuer:
                pair = (merchant, issuer)
                matrix[pair] = matrix.get(pair, 0) + coins
                r.redeemed_by_issuer[issuer] = (
                    r.redeemed_by_issuer.get(issuer, 0) + coins
                )
        elif prefix == PREFIX_ACCOUNT:
            account = Account.from_wire(_value(raw))
            debt += account.debt
            for amount, expires_at, issuer, _ in account.lots:
                if now_s is None or expires_at == 0 or expires_at > now_s:
                    liability[issuer] = liability.get(issuer, 0) + amount
            for amount, _, expires_at, issuer, _, _ in account.pending:
                if now_s is None or expires_at == 0 or expires_at > now_s:
                    liability[issuer] = liability.get(issuer, 0) + amount

    # A redemption and its reversal on different days of the period cancel out.
    for r in rows.values():
        r.redeemed_by_issuer = {
            k: v for k, v in sorted(r.redeemed_by_issuer.items()) if v
        }
    return Settlement(
        rows=[rows[k] for k in sorted(rows)],
        matrix={k: v for k, v in sorted(matrix.items()) if v},
        liability=sum(liability.values()),
        liability_by_issuer=dict(sorted(liability.items())),
        debt=debt,
    )


def supply(items: Iterable[tuple[bytes, bytes]]) -> Supply:
    """Both sides of the supply identity from the state entries."""
    issued = held = redeemed = expired = clawed = debt = 0
    for key, raw in items:
        prefix = key[:2]
        if prefix == PREFIX_MERCHANT:
            m = Merchant.from_wire(_value(raw))
            issued += m.issued
            redeemed += m.redeemed
            expired += m.expired
            clawed += m.clawed_back
        elif prefix == PREFIX_ACCOUNT:
            account = Account.from_wire(_value(raw))
            held += account.held()
            debt += account.debt
    return Supply(issued, held, redeemed, expired, clawed, debt)
