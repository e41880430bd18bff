"""Earning coins: purchase awards, refunds that claw them back, engagement
rewards.

Award of a purchase (docs/loyalty.md has the worked example):

    spend  = amount - paid_with_coins          (coins paid earn nothing)
    base   = floor(spend * rate / 100)         0 when spend < min_spend;
                                               rate: the merchant's rate for the
                                               award's category, else its rate
    coins  = floor(base * tier_bp / 10,000)
           + sum over active campaigns c of
             min(floor(base * (c.multiplier_bp - 10,000) / 10,000) + c.bonus,
                 c.customer_cap - used by this customer)   (no cap: no min)

so campaign multipliers add their excess over 1x to the tier's multiplier and
bonuses add, each campaign floored on its own. Earnings repay a debt first.
Purchase coins stay pending for the program's return window (pending_s).

A refund of r minor units claws back, cumulatively, floor(coins * refunded /
amount) coins of the order: from the order's pending coins first, then live
lots issued by the refunding merchant (earliest expiry first); what the
customer has already spent becomes debt.
"""

from __future__ import annotations

from state.books import Books
from state.codes import Code
from state.program import (
    BP,
    C_CAP,
    C_ID,
    active_campaigns,
    add_to_history,
    campaign_extra,
    prune_history,
    take_from_history,
    window_total,
)
from state.records import (
    COMPANY,
    PREFIX_ACCOUNT,
    TODAY_AWARDS,
    TODAY_EARNED,
    TODAY_ENGAGEMENT,
    Account,
    Entry,
    Order,
    Refused,
    campaign_use_key,
    engagement_key,
    order_key,
)
from state.tx import (
    AwardPurchase,
    AwardPurchaseWithDetails,
    EngagementReward,
    RefundPurchase,
)


class EarningRules(Books):
    # --- purchases ---

    def award_purchase(
        self, signer: bytes, p: AwardPurchase | AwardPurchaseWithDetails
    ) -> list:
        view = self.view
        customer_key = p.customer
        merchant = self.active_merchant(signer)
        if customer_key == signer:
            raise Refused(Code.INVALID_RECIPIENT, "a merchant cannot award itself")
        customer = self.customer(customer_key)
        if customer.frozen:
            raise Refused(Code.ACCOUNT_FROZEN)
        key_of_order = order_key(signer, p.order_id)
        if view.record(key_of_order, Order) is not None:
            raise Refused(Code.DUPLICATE_ORDER)
        rules = self.rules
        day = self.day
        tiers_on = rules.tiers_on

        spend = p.amount - p.paid_with_coins
        base = (
            0
            if spend < rules.min_spend
            else spend * merchant.rate_for(p.category) // 100
        )
        if tiers_on:
            history = prune_history(customer.history, day, rules.tier_window_days)
            tier = rules.tier_of(window_total(history, day, rules.tier_window_days))
            coins = base * rules.tier_multiplier(tier) // BP
        else:
            coins = base
        uses = []  # (campaign id, coins) counted against per-customer caps
        if base and self.campaigns:
            for campaign in active_campaigns(self.campaigns, self.now_s, signer):
                extra = campaign_extra(campaign, base)
                if campaign[C_CAP]:
                    used = self.campaign_used(customer_key, campaign[C_ID])
                    extra = max(0, min(extra, campaign[C_CAP] - used))
                    uses.append((campaign[C_ID], used + extra))
                coins += extra

        counts_days = rules.counts_days
        if counts_days:
            today = customer.counts_on(day)
            if rules.velocity_per_day and today[TODAY_AWARDS] >= rules.velocity_per_day:
                raise Refused(Code.VELOCITY_LIMIT_EXCEEDED)
            if (
                rules.customer_daily_cap
                and today[TODAY_EARNED] + coins > rules.customer_daily_cap
            ):
                raise Refused(Code.CUSTOMER_DAILY_CAP_EXCEEDED)
        if merchant.issued_today(day) + coins > merchant.daily_cap:
            raise Refused(Code.DAILY_CAP_EXCEEDED)
        self.check_balance_limit(customer, coins)

        release_at = self.now_s + rules.pending_s if rules.pending_s else 0
        live, pending, repaid = self.credit(
            customer_key, customer, coins, signer, release_at, p.order_id
        )
        if counts_days:
            customer.count(day, TODAY_EARNED, coins)
            customer.count(day, TODAY_AWARDS, 1)
        if tiers_on:
            # Re-evaluated on each award, with this award's coins counted.
            add_to_history(history, day, coins)
            customer.history = history
            customer.tier = rules.tier_of(
                window_total(history, day, rules.tier_window_days)
            )
        for campaign_id, used in uses:
            view.put(campaign_use_key(customer_key, campaign_id), Entry([used]))
        self.count_issued(signer, merchant, coins)
        view.put(PREFIX_ACCOUNT + customer_key, customer)
        order = Order(
            customer_key,
            p.amount,
            coins,
            release_at=release_at if pending else 0,
            tier_day=day if tiers_on else 0,
        )
        view.put(key_of_order, order)
        events = [("earn", customer_key, live), ("issue", signer, coins)]
        if pending:
            events.append(("pending", customer_key, pending))
        if repaid:
            events.append(("repay", customer_key, repaid))
        return events

    def campaign_used(self, customer: bytes, campaign_id: str) -> int:
        value = self.view.entry(campaign_use_key(customer, campaign_id)).value
        return value[0] if value else 0

    # --- refunds ---

    def refund_purchase(self, signer: bytes, p: RefundPurchase) -> list:
        # A suspended merchant may still refund: it only takes coins back.
        merchant = self.view.merchant(signer)
        if merchant is None:
            raise Refused(Code.UNKNOWN_MERCHANT)
        order = self.view.order(signer, p.order_id)
        if order is None:
            raise Refused(Code.UNKNOWN_ORDER)
        if p.amount > order.amount - order.refunded:
            raise Refused(
                Code.REFUND_EXCEEDS_ORDER,
                f"{order.amount - order.refunded} of the order is left to refund",
            )
        # Frozen accounts are not exempt: a clawback only returns coins to
        # their issuer.
        customer = self.customer(order.customer)

        refunded = order.refunded + p.amount
        claw = order.coins * refunded // order.amount - order.clawed
        cancelled = self.cancel_pending(customer, signer, p.order_id, claw)
        lots = customer.take(
            min(claw - cancelled, customer.live_from(signer, self.now_s)),
            self.now_s,
            issuer=signer,
        )
        taken = sum(lot[0] for lot in lots)
        debt = claw - cancelled - taken
        customer.debt += debt
        if order.tier_day and customer.history:
            take_from_history(customer.history, order.tier_day, claw)
        order.refunded = refunded
        order.clawed += claw
        merchant.clawed_back += claw
        self.put_merchant(signer, merchant)
        if claw:
            self.count_day(signer, "clawed_back", claw)
        self.put_account(order.customer, customer)
        self.view.put(order_key(signer, p.order_id), order)
        events = [("clawback", order.customer, -(cancelled + taken))]
        if debt:
            events.append(("debt", order.customer, debt))
        events.append(("claw", signer, claw))
        return events

    @staticmethod
    def cancel_pending(account: Account, issuer: bytes, order_id: str, coins: int):
        """Take up to `coins` from the order's pending entry; return how many."""
        cancelled = 0
        for entry in account.pending:
            if entry[3] == issuer and entry[5] == order_id and coins > cancelled:
                part = min(entry[0], coins - cancelled)
                entry[0] -= part
                cancelled += part
        account.pending = [e for e in account.pending if e[0]]
        return cancelled

    # --- engagement ---

    def engagement_reward(self, signer: bytes, p: EngagementReward) -> list:
        coins, daily_cap = self.rules.engagement_rule(p.kind)
        if not coins:
            raise Refused(Code.ENGAGEMENT_NOT_OFFERED)
        # The company awards as itself; a merchant must be active.
        issuer = COMPANY if signer in self.program.admins else signer
        merchant = (
            self.issuer_record(COMPANY)
            if issuer == COMPANY
            else self.active_merchant(signer)
        )
        if p.customer == signer:
            raise Refused(Code.INVALID_RECIPIENT, "cannot reward oneself")
        if self.view.entry(engagement_key(signer, p.reference)).value is not None:
            raise Refused(Code.DUPLICATE_REFERENCE)
        customer = self.customer(p.customer)
        if customer.frozen:
            raise Refused(Code.ACCOUNT_FROZEN)
        slot = TODAY_ENGAGEMENT + p.kind - 1
        if daily_cap and customer.counts_on(self.day)[slot] >= daily_cap:
            raise Refused(Code.ENGAGEMENT_CAP_EXCEEDED)
        if issuer != COMPANY and merchant.issued_today(self.day) + coins > (
            merchant.daily_cap
        ):
            raise Refused(Code.DAILY_CAP_EXCEEDED)
        self.check_balance_limit(customer, coins)

        live, _, repaid = self.credit(p.customer, customer, coins, issuer)
        customer.count(self.day, slot, 1)
        self.count_issued(issuer, merchant, coins)
        self.put_account(p.customer, customer)
        self.view.put(
            engagement_key(signer, p.reference), Entry([p.customer, int(p.kind), coins])
        )
        events = [("earn", p.customer, live), ("issue", issuer, coins)]
        if repaid:
            events.append(("repay", p.customer, repaid))
        return events
