"""What every loyalty rule shares: the block's context and the bookkeeping of
coins (crediting with debt repayment, the expiry index, merchant counters).

Each rule in state.governance, state.earning and state.spending is a method of
a class built on Books; state.ledger combines them into the Ledger. A rule
checks everything first (raising Refused) and only then calls the writing
helpers here, so a refused transaction changes nothing.
"""

from __future__ import annotations

from state.calendar import expiry_time
from state.codes import Code
from state.program import Rules
from state.records import (
    COMPANY,
    KEY_CAMPAIGNS,
    KEY_RULES,
    PREFIX_MERCHANT,
    Account,
    Entry,
    Merchant,
    Refused,
    StateView,
    account_key,
    day_key,
    expiry_key,
    merchant_key,
)

# No balance may exceed this, so no sum of balances nears the int64 range that
# other systems reading our exports may use.
MAX_BALANCE = 1 << 62
COMPANY_NAME = "Program operator"


class Books:
    """The state view at one block's height and (whole-second) time."""

    def __init__(
        self,
        view: StateView,
        now_s: int,
        height: int,
        chain_id: str,
        genesis_rules: Rules | None = None,
    ):
        self.view = view
        self.now_s = now_s
        self.height = height
        self.chain_id = chain_id
        self.program = view.program()
        self.day = self.program.day_of(now_s)
        self.genesis_rules = genesis_rules if genesis_rules is not None else Rules()
        self.tx_hash = b""
        # The rules and campaigns records, read once per block: every rule
        # reads them, and put_rules and put_campaigns are their only writers.
        self._rules: Rules | None = None
        self._campaigns: list[list] | None = None
        # Expiry times by (time, policy, days): one per block time in practice.
        self._expiries: dict[tuple[int, int, int], int] = {}
        # (account, issuer, coins) removed by expiry at the start of the block,
        # for the node's indexer; not state.
        self.expirations: list[tuple[bytes, bytes, int]] = []

    # --- program ---

    @property
    def rules(self) -> Rules:
        if self._rules is None:
            found = self.view.rules()
            self._rules = found if found is not None else self.genesis_rules
        return self._rules

    def put_rules(self, rules: Rules) -> None:
        self.view.put(KEY_RULES, rules)
        self._rules = rules

    @property
    def campaigns(self) -> list[list]:
        if self._campaigns is None:
            self._campaigns = self.view.entry(KEY_CAMPAIGNS).value or []
        return self._campaigns

    def put_campaigns(self, campaigns: list[list]) -> None:
        self.view.put(KEY_CAMPAIGNS, Entry(campaigns))
        self._campaigns = campaigns

    def require_admin(self, signer: bytes) -> None:
        if signer not in self.program.admins:
            raise Refused(Code.UNAUTHORISED, "signer is not a program admin")

    # --- merchants ---

    def active_merchant(self, key: bytes) -> Merchant:
        merchant = self.view.merchant(key)
        if merchant is None:
            raise Refused(Code.UNKNOWN_MERCHANT)
        if not merchant.active:
            raise Refused(Code.MERCHANT_SUSPENDED)
        return merchant

    def issuer_record(self, key: bytes) -> Merchant:
        """The counters of an issuer; the company's are made on first use."""
        merchant = self.view.merchant(key)
        if merchant is None and key == COMPANY:
            merchant = Merchant(COMPANY_NAME, 0, 0, False)
        return merchant

    def put_merchant(self, key: bytes, merchant: Merchant) -> None:
        self.view.put(merchant_key(key), merchant)

    def count_day(self, merchant: bytes, field: str, coins: int) -> None:
        """Add to one of the merchant's counters for today (`sd`)."""
        key = day_key(merchant, self.day)
        counters = self.view.day_counters_at(key)
        setattr(counters, field, getattr(counters, field) + coins)
        self.view.put(key, counters)

    def count_issued(self, issuer: bytes, merchant: Merchant, coins: int) -> None:
        day = self.day
        merchant.issued += coins
        merchant.issued_on_day = (
            merchant.issued_on_day if merchant.day == day else 0
        ) + coins
        merchant.day = day
        self.view.put(PREFIX_MERCHANT + issuer, merchant)
        if coins:
            self.count_day(issuer, "issued", coins)

    def count_expired(self, issuer: bytes, coins: int) -> None:
        merchant = self.issuer_record(issuer)
        merchant.expired += coins
        self.put_merchant(issuer, merchant)
        self.count_day(issuer, "expired", coins)

    # --- accounts ---

    def customer(self, key: bytes) -> Account:
        """The account of `key` as of now: pending coins whose return window has
        closed are ordinary lots. Releasing changes no balance, so doing it
        before a rule refuses is harmless."""
        account = self.view.account(key) or Account()
        account.release(self.now_s)
        return account

    def put_account(self, key: bytes, account: Account) -> None:
        self.view.put(account_key(key), account)

    def index_expiry(self, key: bytes, expires_at: int) -> None:
        if expires_at:
            self.view.put_index(expiry_key(expires_at, key), b"")

    def expiry_for(self, available_s: int) -> int:
        rules = self.rules
        args = (available_s, rules.expiry_policy, rules.expiry_days)
        found = self._expiries.get(args)
        if found is None:
            found = self._expiries[args] = expiry_time(
                rules.expiry_policy,
                rules.expiry_days,
                available_s,
                self.program.utc_offset_minutes,
            )
        return found

    def credit(
        self,
        key: bytes,
        account: Account,
        coins: int,
        issuer: bytes,
        release_at: int = 0,
        order_id: str = "",
    ) -> tuple[int, int, int]:
        """Give `coins` from `issuer`: debt first, then a lot, or a pending
        entry until release_at. Returns (spendable, pending, repaid)."""
        repaid = min(account.debt, coins)
        account.debt -= repaid
        rest = coins - repaid
        if not rest:
            return 0, 0, repaid
        if release_at > self.now_s:
            # Expiry counts from the moment the coins become spendable.
            expires_at = self.expiry_for(release_at)
            account.pending.append(
                [rest, release_at, expires_at, issuer, self.now_s, order_id]
            )
            self.index_expiry(key, expires_at)
            return 0, rest, repaid
        expires_at = self.expiry_for(self.now_s)
        account.add_lot(rest, expires_at, issuer, self.now_s)
        self.index_expiry(key, expires_at)
        return rest, 0, repaid

    def check_balance_limit(self, account: Account, coins: int) -> None:
        if account.holding(self.now_s) + coins > MAX_BALANCE:
            raise Refused(Code.BALANCE_LIMIT)
