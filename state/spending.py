"""Spending coins, and coins leaving by expiry.

- Redeem: a customer spends coins at a merchant, earliest-expiring lots first.
  The lots taken are kept with the redemption (`su` + tx hash) so the merchant
  can reverse it and return exactly those lots, and each is counted in the
  issuer-to-redeemer matrix (`sr` + redeemer + issuer) that settlement reads.
- Transfer: lots move to another customer keeping expiry and issuer, within
  the program's daily limit per sender.
- Expiry: every lot with expires_at <= T is removed at the start of the first
  block at time T or later, through the expiry index (`x` + expires_at +
  account, beside the state), and counted as expired against its issuer.
  Reads between blocks already leave such lots out of the balance
  (Account.balance).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from state.books import Books
from state.codes import Code
from state.records import (
    PREFIX_EXPIRY,
    TODAY_SENT,
    Account,
    Entry,
    Refused,
    account_key,
    matrix_key,
    redemption_key,
)
from state.tx import Redeem, ReverseRedemption, Transfer

# Scans the committed state: (start, stop) -> keys in order, stop exclusive.
Scan = Callable[[bytes, bytes], Iterable[bytes]]

# A redemption record: [customer, merchant, amount, lots, reversed].
R_CUSTOMER, R_MERCHANT, R_AMOUNT, R_LOTS, R_REVERSED = range(5)


class SpendingRules(Books):
    # --- redemption ---

    def redeem(self, signer: bytes, p: Redeem) -> list:
        merchant = self.active_merchant(p.merchant)
        customer = self.spending_account(signer, p.amount)

        lots = customer.take(p.amount, self.now_s)
        merchant.redeemed += p.amount
        self.put_merchant(p.merchant, merchant)
        self.put_account(signer, customer)
        self.count_redeemed(p.merchant, lots, 1)
        self.count_day(p.merchant, "redeemed", p.amount)
        self.view.put(
            redemption_key(self.tx_hash),
            Entry([signer, p.merchant, p.amount, lots, False]),
        )
        return [("redeem", signer, -p.amount), ("accept", p.merchant, p.amount)]

    def count_redeemed(self, redeemer: bytes, lots: list[list], sign: int) -> None:
        """Add (sign 1) or take back (sign -1) lots in the issuer matrix."""
        by_issuer: dict[bytes, int] = {}
        for amount, _, issuer, _ in lots:
            by_issuer[issuer] = by_issuer.get(issuer, 0) + amount
        counters = self.view.day_counters(redeemer, self.day)
        for issuer in sorted(by_issuer):
            coins = sign * by_issuer[issuer]
            entry = self.view.entry(matrix_key(redeemer, issuer))
            total = (entry.value[0] if entry.value else 0) + coins
            self.view.put(
                matrix_key(redeemer, issuer), Entry([total] if total else None)
            )
            counters.add_by_issuer(issuer, coins)
        self.view.put_day(redeemer, self.day, counters)

    def reverse_redemption(self, signer: bytes, p: ReverseRedemption) -> list:
        record = self.view.entry(redemption_key(p.redemption)).value
        if record is None:
            raise Refused(Code.UNKNOWN_REDEMPTION)
        if record[R_MERCHANT] != signer:
            raise Refused(Code.NOT_REDEEMING_MERCHANT)
        if record[R_REVERSED]:
            raise Refused(Code.REDEMPTION_ALREADY_REVERSED)
        merchant = self.view.merchant(signer)
        key = record[R_CUSTOMER]
        customer = self.customer(key)
        if customer.frozen:
            raise Refused(Code.ACCOUNT_FROZEN)
        self.check_balance_limit(customer, record[R_AMOUNT])

        # The same lots come back; one that expired meanwhile is expired now.
        for amount, expires_at, issuer, earned_at in record[R_LOTS]:
            if expires_at and expires_at <= self.now_s:
                self.count_expired(issuer, amount)
                self.expirations.append((key, issuer, amount))
            else:
                customer.add_lot(amount, expires_at, issuer, earned_at)
                self.index_expiry(key, expires_at)
        merchant.redeemed -= record[R_AMOUNT]
        self.put_merchant(signer, merchant)
        self.put_account(key, customer)
        self.count_redeemed(signer, record[R_LOTS], -1)
        self.count_day(signer, "reversed", record[R_AMOUNT])
        self.view.put(redemption_key(p.redemption), Entry([*record[:4], True]))
        return [("reverse", key, record[R_AMOUNT]), ("unaccept", signer, -record[2])]

    # --- transfer ---

    def transfer(self, signer: bytes, p: Transfer) -> list:
        if not self.program.transfers_allowed:
            raise Refused(Code.TRANSFERS_DISABLED)
        if p.to == signer:
            raise Refused(Code.INVALID_RECIPIENT, "cannot transfer to oneself")
        sender = self.spending_account(signer, p.amount)
        recipient = self.customer(p.to)
        if recipient.frozen:
            raise Refused(Code.ACCOUNT_FROZEN, "recipient account is frozen")
        self.check_balance_limit(recipient, p.amount)
        limit = self.rules.transfer_daily_limit
        if limit and sender.counts_on(self.day)[TODAY_SENT] + p.amount > limit:
            raise Refused(Code.TRANSFER_LIMIT_EXCEEDED)

        # Transferred lots keep their expiry and issuer.
        for amount, expires_at, issuer, _ in sender.take(p.amount, self.now_s):
            recipient.add_lot(amount, expires_at, issuer, self.now_s)
            self.index_expiry(p.to, expires_at)
        if limit:
            sender.count(self.day, TODAY_SENT, p.amount)
        self.put_account(signer, sender)
        self.put_account(p.to, recipient)
        return [("transfer_out", signer, -p.amount), ("transfer_in", p.to, p.amount)]

    def spending_account(self, key: bytes, amount: int) -> Account:
        if self.view.account(key) is None:
            raise Refused(Code.INSUFFICIENT_BALANCE)
        account = self.customer(key)
        if account.frozen:
            raise Refused(Code.ACCOUNT_FROZEN)
        if account.balance(self.now_s) < amount:
            raise Refused(Code.INSUFFICIENT_BALANCE)
        return account

    # --- expiry ---

    def expire_due(self, scan: Scan) -> None:
        """Remove every lot with expires_at <= now, in index order."""
        stop = PREFIX_EXPIRY + (self.now_s + 1).to_bytes(8, "big")
        for key in list(scan(PREFIX_EXPIRY, stop)):
            self.expire_account(key[len(PREFIX_EXPIRY) + 8 :])
            self.view.put_index(key, None)

    def expire_account(self, key: bytes) -> None:
        account = self.view.account(key)
        if account is None:
            return
        now = self.now_s
        expired: dict[bytes, int] = {}
        kept = []
        for lot in account.lots:
            if lot[1] and lot[1] <= now:
                expired[lot[2]] = expired.get(lot[2], 0) + lot[0]
            else:
                kept.append(lot)
        pending = []
        for entry in account.pending:
            if entry[2] and entry[2] <= now:
                expired[entry[3]] = expired.get(entry[3], 0) + entry[0]
            else:
                pending.append(entry)
        if not expired:
            return
        account.lots, account.pending = kept, pending
        self.view.put(account_key(key), account)
        for issuer in sorted(expired):
            self.count_expired(issuer, expired[issuer])
            self.expirations.append((key, issuer, expired[issuer]))
