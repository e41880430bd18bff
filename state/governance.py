"""Program changes by k of n admins.

An admin proposes one change (state.changes) with a deadline; the proposal's
id is the hash of the proposing transaction. Other admins approve it by id.
The proposer's signature is the first approval, and the change applies inside
the transaction that brings the approvals to the program's
`admin_threshold` (k). With k = 1 a proposal applies at once.

A proposal may be approved while block time < deadline (half-open, like every
window of the program). From the deadline on, approvals are refused as
PROPOSAL_EXPIRED; a week after it the proposal is dropped from state at the
start of a block, and approvals are then refused as UNKNOWN_PROPOSAL.

A change is checked against the state when it is proposed and again when it
applies; if it no longer fits (a merchant registered meanwhile), the approval
that would apply it is refused with that reason and the proposal stays open.
"""

from __future__ import annotations

from typing import NamedTuple

from state.books import Books
from state.changes import (
    MAX_CAMPAIGN_MERCHANTS,
    CampaignRule,
    ChangeAction,
    EarningRules,
    EngagementRule,
    ExpiryRule,
    MerchantTerms,
    TierRules,
    TransferRules,
    change_wire,
    parse_change,
)
from state.codes import Code
from state.program import MAX_CAMPAIGNS, with_campaign
from state.records import (
    COMPANY,
    KEY_PROGRAM,
    KEY_PROPOSALS,
    Entry,
    Merchant,
    Refused,
)
from state.tx import ApproveChange, ProposeChange, RegisterMerchant, UpdateMerchant

MAX_PROPOSAL_S = 30 * 86_400  # a deadline at most 30 days ahead
PROPOSAL_GRACE_S = 7 * 86_400  # expired proposals kept this long, then dropped
MAX_OPEN_PROPOSALS = 64

# An open proposal: [id, proposer, action, args, deadline, approvals].
P_ID, P_PROPOSER, P_ACTION, P_ARGS, P_DEADLINE, P_APPROVALS = range(6)


class GovernanceRules(Books):
    @property
    def proposals(self) -> list[list]:
        return self.view.entry(KEY_PROPOSALS).value or []

    def propose_change(self, signer: bytes, p: ProposeChange) -> list:
        self.require_admin(signer)
        if not self.now_s < p.deadline <= self.now_s + MAX_PROPOSAL_S:
            raise Refused(
                Code.INVALID_PROGRAM_CHANGE,
                f"deadline must be in ({self.now_s}, {self.now_s + MAX_PROPOSAL_S}]",
            )
        self.check_change(p.action, p.args)
        threshold = self.rules.admin_threshold
        if threshold <= 1:
            self.write_change(p.action, p.args)
            return [("change_applied", signer, int(p.action))]
        proposals = self.proposals
        if len(proposals) >= MAX_OPEN_PROPOSALS:
            raise Refused(Code.TOO_MANY_PROPOSALS)

        proposal = [self.tx_hash, signer, int(p.action), change_wire(p.args),
                    p.deadline, [signer]]  # fmt: skip
        self.view.put(KEY_PROPOSALS, Entry(sorted([*proposals, proposal])))
        return [("change_proposed", signer, int(p.action))]

    def approve_change(self, signer: bytes, p: ApproveChange) -> list:
        self.require_admin(signer)
        proposals = self.proposals
        found = [q for q in proposals if q[P_ID] == p.proposal]
        if not found:
            raise Refused(Code.UNKNOWN_PROPOSAL)
        proposal = found[0]
        if self.now_s >= proposal[P_DEADLINE]:
            raise Refused(Code.PROPOSAL_EXPIRED)
        if signer in proposal[P_APPROVALS]:
            raise Refused(Code.DUPLICATE_APPROVAL)
        approvals = sorted([*proposal[P_APPROVALS], signer])
        action = ChangeAction(proposal[P_ACTION])
        if len(approvals) >= self.rules.admin_threshold:
            args = parse_change(action, proposal[P_ARGS])
            self.check_change(action, args)

            self.write_change(action, args)
            rest = [q for q in proposals if q[P_ID] != p.proposal]
            self.view.put(KEY_PROPOSALS, Entry(rest))
            return [("change_applied", signer, int(action))]

        updated = [*proposal[:P_APPROVALS], approvals]
        rest = [updated if q[P_ID] == p.proposal else q for q in proposals]
        self.view.put(KEY_PROPOSALS, Entry(rest))
        return [("change_approved", signer, int(action))]

    def prune_proposals(self) -> None:
        """Drop proposals a week past their deadline (start of each block)."""
        proposals = self.proposals
        kept = [q for q in proposals if q[P_DEADLINE] + PROPOSAL_GRACE_S > self.now_s]
        if len(kept) != len(proposals):
            self.view.put(KEY_PROPOSALS, Entry(kept))

    def require_single_admin_rule(self) -> None:
        """Direct merchant registration and updates are the k = 1 shortcut."""
        if self.rules.admin_threshold > 1:
            raise Refused(
                Code.APPROVAL_REQUIRED,
                "this program changes merchants by proposal (propose_change)",
            )

    # --- checking and writing one change ---

    def check_change(self, action: ChangeAction, args: NamedTuple) -> None:
        if action == ChangeAction.REGISTER_MERCHANT:
            if args.merchant == COMPANY:
                raise Refused(Code.INVALID_PROGRAM_CHANGE, "reserved key")
            if self.view.merchant(args.merchant) is not None:
                raise Refused(Code.MERCHANT_EXISTS)
        elif action in (ChangeAction.UPDATE_MERCHANT, ChangeAction.MERCHANT_TERMS):
            if args.merchant == COMPANY or self.view.merchant(args.merchant) is None:
                raise Refused(Code.UNKNOWN_MERCHANT)
        elif action == ChangeAction.CAMPAIGN:
            self.check_campaign(args)

    def check_campaign(self, c: CampaignRule) -> None:
        assert len(c.merchants) <= MAX_CAMPAIGN_MERCHANTS
        for merchant in c.merchants:
            if merchant == COMPANY or self.view.merchant(merchant) is None:
                raise Refused(Code.UNKNOWN_MERCHANT, "a campaign names a non-merchant")
        campaign = self.campaign_wire(c)
        if len(with_campaign(self.campaigns, campaign, self.now_s)) > MAX_CAMPAIGNS:
            raise Refused(Code.INVALID_PROGRAM_CHANGE, f"at most {MAX_CAMPAIGNS}")

    @staticmethod
    def campaign_wire(c: CampaignRule) -> list:
        return [c.campaign_id, c.start, c.end, c.multiplier_bp, c.bonus,
                c.customer_cap, list(c.merchants)]  # fmt: skip

    def write_change(self, action: ChangeAction, args: NamedTuple) -> None:
        writer = {
            ChangeAction.REGISTER_MERCHANT: self.write_register,
            ChangeAction.UPDATE_MERCHANT: self.write_update,
            ChangeAction.MERCHANT_TERMS: self.write_terms,
            ChangeAction.EARNING: self.write_earning,
            ChangeAction.EXPIRY: self.write_expiry,
            ChangeAction.TIERS: self.write_tiers,
            ChangeAction.CAMPAIGN: self.write_campaign,
            ChangeAction.ENGAGEMENT: self.write_engagement,
            ChangeAction.TRANSFERS: self.write_transfers,
        }[action]
        writer(args)

    def write_register(self, p: RegisterMerchant) -> None:
        self.put_merchant(p.merchant, Merchant(p.name, p.rate, p.daily_cap))

    def write_update(self, p: UpdateMerchant) -> None:
        merchant = self.view.merchant(p.merchant)
        merchant.name = p.name
        merchant.rate = p.rate
        merchant.daily_cap = p.daily_cap
        merchant.active = p.active
        self.put_merchant(p.merchant, merchant)

    def write_terms(self, p: MerchantTerms) -> None:
        merchant = self.view.merchant(p.merchant)
        merchant.price_per_coin = p.price_per_coin
        merchant.reimbursement_per_coin = p.reimbursement_per_coin
        merchant.categories = [list(c) for c in p.categories]
        self.put_merchant(p.merchant, merchant)

    def write_earning(self, p: EarningRules) -> None:
        rules = self.rules.copy()
        rules.min_spend = p.min_spend
        rules.pending_s = p.pending_s
        rules.customer_daily_cap = p.customer_daily_cap
        rules.velocity_per_day = p.velocity_per_day
        self.put_rules(rules)

    def write_expiry(self, p: ExpiryRule) -> None:
        rules = self.rules.copy()
        rules.expiry_policy = p.policy
        rules.expiry_days = p.days
        self.put_rules(rules)

    def write_tiers(self, p: TierRules) -> None:
        rules = self.rules.copy()
        rules.tier_window_days = p.window_days
        rules.tiers = [list(level) for level in p.levels]
        self.put_rules(rules)

    def write_campaign(self, p: CampaignRule) -> None:
        campaigns = with_campaign(self.campaigns, self.campaign_wire(p), self.now_s)
        self.put_campaigns(campaigns)

    def write_engagement(self, p: EngagementRule) -> None:
        rules = self.rules.copy()
        rules.set_engagement(int(p.kind), p.coins, p.daily_cap)
        self.put_rules(rules)

    def write_transfers(self, p: TransferRules) -> None:
        rules = self.rules.copy()
        rules.transfer_daily_limit = p.daily_limit
        self.put_rules(rules)
        program = self.program
        program.transfers_allowed = p.allowed
        self.view.put(KEY_PROGRAM, program)
