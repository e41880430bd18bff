"""The loyalty program's rules as kept in state, and the arithmetic they imply.

The company sets the rules in genesis and changes them later by k-of-n admin
proposals (state.governance). They live in one record, `sl`, written the first
time a change applies; until then the genesis rules hold. Campaigns live in a
second record, `sc`, so that changing a campaign does not rewrite the rules.

Everything here is integer arithmetic with floor rounding: multipliers are in
basis points (10,000 = 1x), rates in coins per 100 minor units, times in block
seconds and days in program days (state.calendar).
"""

from __future__ import annotations

from state.calendar import ExpiryPolicy

BP = 10_000  # basis points in 1x
# At most this many campaigns are kept; ended ones are pruned first.
MAX_CAMPAIGNS = 32


class Rules:
    """Program rules (`sl`):

        [admin_threshold, min_spend, pending_s, customer_daily_cap,
         velocity_per_day, expiry_policy, expiry_days, tier_window_days,
         tiers, engagement, transfer_daily_limit]

    tiers is [[threshold, multiplier_bp], ...] with thresholds ascending;
    engagement is [[kind, coins, daily_cap], ...] by kind. A cap or limit of
    0 means none.
    """

    __slots__ = ("admin_threshold", "min_spend", "pending_s", "customer_daily_cap",
                 "velocity_per_day", "expiry_policy", "expiry_days",
                 "tier_window_days", "tiers", "engagement",
                 "transfer_daily_limit")  # fmt: skip

    def __init__(self, admin_threshold: int = 1, min_spend: int = 0,
                 pending_s: int = 0, customer_daily_cap: int = 0,
                 velocity_per_day: int = 0,
                 expiry_policy: int = ExpiryPolicy.NEVER, expiry_days: int = 0,
                 tier_window_days: int = 0, tiers: list | None = None,
                 engagement: list | None = None,
                 transfer_daily_limit: int = 0):  # fmt: skip
        self.admin_threshold = admin_threshold
        self.min_spend = min_spend
        self.pending_s = pending_s
        self.customer_daily_cap = customer_daily_cap
        self.velocity_per_day = velocity_per_day
        self.expiry_policy = int(expiry_policy)
        self.expiry_days = expiry_days
        self.tier_window_days = tier_window_days
        self.tiers: list[list] = [list(t) for t in tiers or []]
        self.engagement: list[list] = [list(e) for e in engagement or []]
        self.transfer_daily_limit = transfer_daily_limit

    def to_wire(self) -> list:
        return [
            self.admin_threshold,
            self.min_spend,
            self.pending_s,
            self.customer_daily_cap,
            self.velocity_per_day,
            self.expiry_policy,
            self.expiry_days,
            self.tier_window_days,
            self.tiers,
            self.engagement,
            self.transfer_daily_limit,
        ]

    @classmethod
    def from_wire(cls, v: list) -> Rules:
        return cls(*v)

    def copy(self) -> Rules:
        return Rules.from_wire(self.to_wire())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rules) and self.to_wire() == other.to_wire()

    def __hash__(self) -> int:
        return hash(repr(self.to_wire()))

    def __repr__(self) -> str:
        return f"Rules({self.to_wire()!r})"

    def is_default(self) -> bool:
        return self.to_wire() == Rules().to_wire()

    # --- tiers ---

    @property
    def tiers_on(self) -> bool:
        return self.tier_window_days > 0 and bool(self.tiers)

    def tier_of(self, earned_in_window: int) -> int:
        """0 below the first threshold, else the 1-based level reached."""
        level = 0
        for i, (threshold, _) in enumerate(self.tiers):
            if earned_in_window >= threshold:
                level = i + 1
        return level

    def tier_multiplier(self, tier: int) -> int:
        if tier == 0 or tier > len(self.tiers):
            return BP
        return self.tiers[tier - 1][1]

    # --- engagement ---

    def engagement_rule(self, kind: int) -> tuple[int, int]:
        """(coins, daily_cap) of an engagement kind; (0, 0) when not offered."""
        for k, coins, cap in self.engagement:
            if k == kind:
                return coins, cap
        return 0, 0

    def set_engagement(self, kind: int, coins: int, daily_cap: int) -> None:
        kept = [e for e in self.engagement if e[0] != kind]
        if coins:
            kept.append([kind, coins, daily_cap])
        self.engagement = sorted(kept)

    @property
    def counts_days(self) -> bool:
        """Whether purchase awards must keep the customer's daily counters."""
        return bool(self.customer_daily_cap or self.velocity_per_day)


# --- campaigns ---------------------------------------------------------------------
#
# A campaign is [campaign_id, start, end, multiplier_bp, bonus, customer_cap,
# merchants]. It is active at block time t when start <= t < end, and applies
# to an award by merchant m when merchants is empty or names m.

C_ID, C_START, C_END, C_MULT, C_BONUS, C_CAP, C_MERCHANTS = range(7)


def active_campaigns(campaigns: list[list], now_s: int, merchant: bytes) -> list:
    return [
        c
        for c in campaigns
        if c[C_START] <= now_s < c[C_END]
        and (not c[C_MERCHANTS] or merchant in c[C_MERCHANTS])
    ]


def campaign_extra(campaign: list, base: int) -> int:
    """What one campaign adds to an award of `base` coins, before its cap:
    the multiplier's excess over 1x (floored) plus the fixed bonus."""
    extra = campaign[C_BONUS]
    if campaign[C_MULT]:
        extra += base * (campaign[C_MULT] - BP) // BP
    return extra


def with_campaign(campaigns: list[list], campaign: list, now_s: int) -> list[list]:
    """The campaign list after setting `campaign` (replacing one with its id),
    ended campaigns pruned, sorted by id."""
    kept = [c for c in campaigns if c[C_ID] != campaign[C_ID] and c[C_END] > now_s]
    return sorted([*kept, campaign])


# --- tier history ------------------------------------------------------------------


def window_total(history: list[list], today: int, window_days: int) -> int:
    """Coins earned on days in (today - window_days, today]."""
    first = today - window_days + 1
    return sum(coins for day, coins in history if day >= first)


def prune_history(history: list[list], today: int, window_days: int) -> list[list]:
    """Drop day buckets that have left the window; at most window_days remain."""
    first = today - window_days + 1
    return [bucket for bucket in history if bucket[0] >= first]


def add_to_history(history: list[list], day: int, coins: int) -> None:
    if history and history[-1][0] == day:
        history[-1][1] += coins
    elif coins:
        history.append([day, coins])


def take_from_history(history: list[list], day: int, coins: int) -> None:
    """Remove clawed-back coins from the bucket of the day they were earned."""
    for bucket in history:
        if bucket[0] == day:
            bucket[1] = max(0, bucket[1] - coins)
    history[:] = [b for b in history if b[1]]
