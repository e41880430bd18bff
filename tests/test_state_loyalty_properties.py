"""Random loyalty programs and histories: the supply identity at every height,
settlement totals equal to the sum of the merchants' rows, and a second store
replaying the blocks from their bytes to the same roots and state."""

from __future__ import annotations

import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st

from state.block import decode_block
from state.changes import ChangeAction
from state.codes import Code
from state.settlement import settlement, supply
from state.tx import EngagementKind
from tests.state_helpers import ADMIN, C1, C2, C3, GENESIS_S, M1, M2, b, recompute_root
from tests.test_state_loyalty_support import LoyaltyChain, loyalty_genesis

MERCHANTS = [M1, M2]
CUSTOMERS = [C1, C2, C3]
CHAIN = "perk-test-1"

programs = st.fixed_dictionaries(
    {
        "utc_offset_minutes": st.sampled_from([0, 60, -300]),
        "pending_seconds": st.sampled_from([0, 0, 3600]),
        "min_spend": st.sampled_from([0, 200]),
        "customer_daily_cap": st.sampled_from([0, 0, 2000]),
        "velocity_per_day": st.sampled_from([0, 0, 6]),
        "transfer_daily_limit": st.sampled_from([0, 300]),
        "expiry": st.sampled_from(
            [
                {"policy": "never"},
                {"policy": "days", "days": 1},
                {"policy": "end_of_month"},
            ]
        ),
        "tiers": st.sampled_from(
            [
                {"window_days": 2, "levels": []},
                {
                    "window_days": 2,
                    "levels": [{"threshold": 300, "multiplier_bp": 15_000}],
                },
            ]
        ),  # fmt: skip
        "engagement": st.just({"feedback": {"coins": 25, "daily_cap": 2}}),
    }
)

m = st.integers(0, 1)
c = st.integers(0, 2)
order = st.integers(0, 7)
ops = st.one_of(
    st.tuples(st.just("award"), m, c, order, st.integers(1, 5000), st.integers(0, 3)),
    st.tuples(st.just("refund"), m, order, st.integers(1, 5000)),
    st.tuples(st.just("redeem"), c, m, st.integers(1, 400)),
    st.tuples(st.just("reverse"), m, st.integers(0, 20)),
    st.tuples(st.just("transfer"), c, c, st.integers(1, 300)),
    st.tuples(st.just("engage"), st.integers(0, 2), c),
    st.tuples(st.just("campaign"), st.integers(0, 2), st.integers(0, 3)),
    st.tuples(st.just("freeze"), c, st.booleans()),
)
# Gaps: a second, an hour, a day and a half, forty days (past any expiry).
gaps = st.sampled_from([1, 3600, 36 * 3600, 40 * 86_400])
plans = st.lists(st.tuples(gaps, st.lists(ops, max_size=12)), min_size=1, max_size=6)


def raw_of(op: tuple, exp: int, now: int, n: int, redemptions: list) -> bytes:
    kind = op[0]
    if kind == "award":
        _, mi, ci, o, amount, paid = op
        extra = (amount * paid // 4, "") if paid else ()
        return b.award_purchase(MERCHANTS[mi], CHAIN, exp, CUSTOMERS[ci],
                                f"o{o}", amount, *extra)  # fmt: skip
    if kind == "refund":
        _, mi, o, amount = op
        return b.refund_purchase(MERCHANTS[mi], CHAIN, exp, f"o{o}", amount)
    if kind == "redeem":
        _, ci, mi, amount = op
        return b.redeem(CUSTOMERS[ci], CHAIN, exp, MERCHANTS[mi], amount, f"r{n}")
    if kind == "reverse":
        _, mi, pick = op
        rid = redemptions[pick % len(redemptions)] if redemptions else bytes(32)
        return b.reverse_redemption(MERCHANTS[mi], CHAIN, exp, rid)
    if kind == "transfer":
        _, s, r, amount = op
        return b.transfer(CUSTOMERS[s], CHAIN, exp, CUSTOMERS[r], amount, f"t{n}")
    if kind == "engage":
        _, who, ci = op
        signer = [M1, M2, ADMIN][who]
        return b.engagement_reward(signer, CHAIN, exp, CUSTOMERS[ci],
                                   EngagementKind.FEEDBACK, f"e{n}")  # fmt: skip
    if kind == "campaign":
        _, which, shape = op
        mult, bonus, cap = [(20_000, 0, 0), (0, 30, 0), (15_000, 5, 60), (0, 0, 0)][
            shape
        ]
        args = [f"c{which}", now, now + 7200, mult, bonus or (0 if mult else 1),
                cap, []]  # fmt: skip
        return b.propose_change(ADMIN, CHAIN, exp, ChangeAction.CAMPAIGN, args,
                                exp + 60)  # fmt: skip
    _, ci, frozen = op
    return b.set_account_frozen(ADMIN, CHAIN, exp, CUSTOMERS[ci], frozen, f"f{n}")


def run_plan(program: dict, plan: list) -> set[Code]:
    seen: set[Code] = set()
    genesis = loyalty_genesis(program)
    with tempfile.TemporaryDirectory() as tmp:
        proposer = LoyaltyChain(f"{tmp}/p", genesis)
        replica = LoyaltyChain(f"{tmp}/r", genesis)
        redemptions: list[bytes] = []
        n = 0
        try:
            for gap, block_ops in plan:
                now = proposer.now + gap
                raws = []
                for op in block_ops:
                    n += 1
                    raws.append(raw_of(op, now + 60, now, n, redemptions))
                block, result = proposer.build(list(dict.fromkeys(raws)), now * 1000)
                proposer.store.commit_block(block, b"", result)
                proposer.check_supply()
                for tx, receipt in zip(result.txs, result.receipts, strict=True):
                    seen.add(receipt.code)
                    if receipt.code == Code.OK and tx.kind.name == "REDEEM":
                        redemptions.append(tx.hash)

                received = decode_block(block.encode())
                replayed = replica.executor.execute_block(received)
                replica.store.commit_block(received, b"", replayed)
                assert replica.store.state_root == proposer.store.state_root
                check_settlement(proposer)
            assert replica.state() == proposer.state()
            assert recompute_root(replica.store) == replica.store.state_root
        finally:
            proposer.close()
            replica.close()
    return seen


def check_settlement(chain: LoyaltyChain) -> None:
    items = list(chain.store.state_items())
    s = supply(items)
    assert s.holds, s
    table = settlement(items)
    for name in ("issued", "redeemed", "expired", "clawed_back", "fee", "net"):
        assert table.total(name) == sum(getattr(r, name) for r in table.rows)
    assert table.total("expired") == s.expired
    assert table.total("clawed_back") == s.clawed_back
    assert sum(table.matrix.values()) == table.total("redeemed")
    # Per-day counters over all days agree with the all-time counters.
    by_day = settlement(items, 0, 1 << 31)
    assert [(r.issued, r.redeemed, r.expired, r.clawed_back) for r in by_day.rows] == [
        (r.issued, r.redeemed, r.expired, r.clawed_back)
        for r in table.rows
        if r.merchant in {row.merchant for row in by_day.rows}
    ]
    assert by_day.matrix == {k: v for k, v in table.matrix.items() if v}


@given(programs, plans)
@settings(max_examples=40, deadline=None)
def test_random_programs_keep_supply_settlement_and_replay_consistent(
    program, plan
) -> None:
    run_plan(program, plan)


def test_a_long_seeded_history_reaches_the_interesting_outcomes() -> None:
    import random

    rng = random.Random(5)
    program = {
        "pending_seconds": 3600,
        "customer_daily_cap": 4000,
        "velocity_per_day": 8,
        "transfer_daily_limit": 300,
        "expiry": {"policy": "days", "days": 1},
        "tiers": {"window_days": 2,
                  "levels": [{"threshold": 300, "multiplier_bp": 15_000}]},
        "engagement": {"feedback": {"coins": 25, "daily_cap": 2}},
    }  # fmt: skip
    plan = []
    for _ in range(10):
        block = []
        for _ in range(40):
            kind = rng.choice(["award"] * 4 + ["refund", "redeem", "redeem",
                              "reverse", "transfer", "engage", "campaign"])  # fmt: skip
            if kind == "award":
                block.append((kind, rng.randrange(2), rng.randrange(3),
                              rng.randrange(30), rng.randint(1, 5000),
                              rng.randrange(4)))  # fmt: skip
            elif kind == "refund":
                block.append((kind, rng.randrange(2), rng.randrange(30),
                              rng.randint(1, 3000)))  # fmt: skip
            elif kind == "redeem":
                block.append((kind, rng.randrange(3), rng.randrange(2),
                              rng.randint(1, 300)))  # fmt: skip
            elif kind == "reverse":
                block.append((kind, rng.randrange(2), rng.randrange(20)))
            elif kind == "transfer":
                block.append((kind, rng.randrange(3), rng.randrange(3),
                              rng.randint(1, 200)))  # fmt: skip
            elif kind == "engage":
                block.append((kind, rng.randrange(3), rng.randrange(3)))
            else:
                block.append((kind, rng.randrange(3), rng.randrange(4)))
        plan.append((rng.choice([1, 1800, 3600, 86_400]), block))
    seen = run_plan(program, plan)
    for code in (Code.OK, Code.REFUND_EXCEEDS_ORDER, Code.DUPLICATE_ORDER,
                 Code.INSUFFICIENT_BALANCE, Code.ENGAGEMENT_CAP_EXCEEDED):  # fmt: skip
        assert code in seen, code


assert GENESIS_S  # the plans start from the helpers' genesis time
