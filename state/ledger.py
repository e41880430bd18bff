"""The ledger: the rule of each transaction kind, applied at one block.

State is a set of byte keys and canonical values; every key that belongs to
the ledger starts with b"s" and is covered by the state root:

    sa + account               Account   [frozen, debt, lots]
                                         (+ [pending, tier, history, today])
    sm + merchant              Merchant  [name, rate, daily_cap, active, issued,
                                          redeemed, day, issued_on_day]
                                         (+ [expired, clawed_back, price_per_coin,
                                            reimbursement_per_coin, categories])
    so + merchant + order_id   Order     [customer, amount, coins, refunded]
                                         (+ [clawed, release_at, tier_day])
    sp                         Program   [admins, transfers_allowed,
                                          utc_offset_minutes, min_validators]
    sl                         Rules     loyalty program rules (state.program)
    sc                         campaigns not yet ended
    sg                         open program-change proposals
    sk + customer + campaign   [coins] a capped campaign gave the customer
    x + expires_at + account   b"": the account has a lot expiring then (an
                               index outside the state and its root)
    sr + redeemer + issuer     [coins] redeemed at redeemer, issued by issuer
    sd + merchant + day        DayCounters (state.records)
    sn + awarder + reference   [customer, kind, coins] an engagement reward
    su + redeem tx hash        [customer, merchant, amount, lots, reversed]
    sv                         validators [[name, key], ...] (proposer order)
    sw + key                   [name]: every key that ever was a validator
    sb + height + action + key Ballot    [name, [voter, ...]]: votes so far on
                                          one validator-set change
    sq                         approved changes not yet in effect,
                               [[effective_height, action, key, name], ...]
    se + key + height + round + type
                               evidence of double signing [evidence, reporter,
                                          height recorded]

The records and the view over them are in state.records; the loyalty rules in
state.governance (program changes), state.earning (awards, refunds,
engagement) and state.spending (redemptions, transfers, expiry), each built on
state.books. Each rule checks everything first and only then writes, so a
refused transaction changes nothing. The rules read block time (`now_s`) only.
"""

from __future__ import annotations

from collections.abc import Callable

from state.block import Receipt
from state.books import MAX_BALANCE, Books
from state.calendar import SECONDS_PER_DAY
from state.codes import Code
from state.earning import EarningRules
from state.genesis import MAX_VALIDATORS
from state.governance import GovernanceRules
from state.records import (
    KEY_PENDING_CHANGES,
    KEY_PROGRAM,
    KEY_VALIDATORS,
    PREFIX_ACCOUNT,
    PREFIX_BALLOT,
    PREFIX_EVIDENCE,
    PREFIX_MERCHANT,
    PREFIX_ORDER,
    PREFIX_PAST_VALIDATOR,
    STATE_PREFIX,
    Account,
    Entry,
    Merchant,
    Order,
    Program,
    Refused,
    StateView,
    account_key,
    ballot_key,
    evidence_key,
    merchant_key,
    order_key,
    past_validator_key,
)
from state.spending import Scan, SpendingRules
from state.tx import (
    Kind,
    RegisterMerchant,
    ReportEvidence,
    SetAccountFrozen,
    Transaction,
    UpdateMerchant,
    ValidatorAction,
    ValidatorVote,
)
from state.votes import EvidenceError, check_double_sign

__all__ = [
    "KEY_PENDING_CHANGES",
    "KEY_PROGRAM",
    "KEY_VALIDATORS",
    "MAX_BALANCE",
    "PREFIX_ACCOUNT",
    "PREFIX_BALLOT",
    "PREFIX_EVIDENCE",
    "PREFIX_MERCHANT",
    "PREFIX_ORDER",
    "PREFIX_PAST_VALIDATOR",
    "SECONDS_PER_DAY",
    "STATE_PREFIX",
    "Account",
    "Entry",
    "Ledger",
    "Merchant",
    "Order",
    "Program",
    "Refused",
    "StateView",
    "account_key",
    "ballot_key",
    "evidence_key",
    "merchant_key",
    "order_key",
    "past_validator_key",
]

# A validator-set change may be voted for at most this many heights ahead.
MAX_CHANGE_AHEAD = 1_000_000


class Ledger(GovernanceRules, EarningRules, SpendingRules, Books):
    """Applies transactions to a StateView at one block's height and time
    (Books.__init__ takes them)."""

    def begin_block(self, scan: Scan) -> None:
        """Before the block's transactions: expire every lot due at or before
        block time, and drop proposals long past their deadline."""
        self.expire_due(scan)
        self.prune_proposals()

    def apply(self, tx: Transaction) -> Receipt:
        """Apply one admitted transaction; a refusal changes nothing."""
        self.tx_hash = tx.hash
        try:
            events = HANDLERS[tx.kind](self, tx.signer, tx.payload)
        except Refused as refusal:
            return Receipt(refusal.code)
        return Receipt(Code.OK, tuple(events))

    # --- admin ---

    def register_merchant(self, signer: bytes, p: RegisterMerchant) -> list:
        self.require_admin(signer)
        self.require_single_admin_rule()
        if self.view.merchant(p.merchant) is not None:
            raise Refused(Code.MERCHANT_EXISTS)

        self.put_merchant(p.merchant, Merchant(p.name, p.rate, p.daily_cap))
        return [("register", p.merchant, 0)]

    def update_merchant(self, signer: bytes, p: UpdateMerchant) -> list:
        self.require_admin(signer)
        self.require_single_admin_rule()
        merchant = self.view.merchant(p.merchant)
        if merchant is None:
            raise Refused(Code.UNKNOWN_MERCHANT)

        merchant.name = p.name
        merchant.rate = p.rate
        merchant.daily_cap = p.daily_cap
        merchant.active = p.active
        self.put_merchant(p.merchant, merchant)
        return [("update", p.merchant, 0)]

    def set_account_frozen(self, signer: bytes, p: SetAccountFrozen) -> list:
        # Freezing is an operational control, not a program change: one admin
        # acts at once, whatever the approval threshold.
        self.require_admin(signer)
        account = self.view.account(p.account) or Account()

        account.frozen = p.frozen
        self.put_account(p.account, account)
        return [("freeze" if p.frozen else "unfreeze", p.account, 0)]

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


# The rule of each kind, as plain functions called with the ledger. Not a dict
# of bound methods on each Ledger: that would be a reference cycle, and every
# block's ledger, view and records would then wait for the cyclic garbage
# collector instead of being freed when the block is done (measured: a twentieth
# of block execution time went to collecting them).
HANDLERS: dict[Kind, Callable] = {
    Kind.REGISTER_MERCHANT: Ledger.register_merchant,
    Kind.UPDATE_MERCHANT: Ledger.update_merchant,
    Kind.SET_ACCOUNT_FROZEN: Ledger.set_account_frozen,
    Kind.PROPOSE_CHANGE: Ledger.propose_change,
    Kind.APPROVE_CHANGE: Ledger.approve_change,
    Kind.AWARD_PURCHASE: Ledger.award_purchase,
    Kind.REFUND_PURCHASE: Ledger.refund_purchase,
    Kind.ENGAGEMENT_REWARD: Ledger.engagement_reward,
    Kind.REDEEM: Ledger.redeem,
    Kind.TRANSFER: Ledger.transfer,
    Kind.REVERSE_REDEMPTION: Ledger.reverse_redemption,
    Kind.VALIDATOR_VOTE: Ledger.validator_vote,
    Kind.REPORT_EVIDENCE: Ledger.report_evidence,
}
