"""Random sequences of transactions over a few blocks: conservation of coins,
agreement with a simple model, identical roots on a replaying validator, and
the stored root equal to one recomputed from scratch."""

from __future__ import annotations

import random
import tempfile
from dataclasses import dataclass, field

import msgpack
from hypothesis import event, given, settings
from hypothesis import strategies as st

from state.block import decode_block
from state.codes import Code
from state.ledger import PREFIX_ACCOUNT, PREFIX_MERCHANT, Account, Merchant
from state.root import Accumulator
from state.tx import decode_tx
from tests.state_helpers import (
    ADMIN,
    C1,
    C2,
    C3,
    C4,
    DAY_S,
    M1,
    M2,
    M3,
    Chain,
    b,
    make_genesis,
    merchant_doc,
    recompute_root,
)

MERCHANTS = [M1, M2, M3]
TERMS = [("Merchant One", 10, 10**12), ("Merchant Two", 150, 10**12), ("Cap", 100, 500)]
CUSTOMERS = [C1, C2, C3, C4]
OFFSET_MIN = 60


def genesis():
    return make_genesis(
        merchants=[merchant_doc(m, *t) for m, t in zip(MERCHANTS, TERMS, strict=True)],
        utc_offset_minutes=OFFSET_MIN,
    )


# --- operations --------------------------------------------------------------------

m_idx = st.integers(0, len(MERCHANTS) - 1)
c_idx = st.integers(0, len(CUSTOMERS) - 1)
award_op = st.tuples(
    st.just("award"), m_idx, c_idx, st.integers(0, 9), st.integers(1, 6000)
)
redeem_op = st.tuples(st.just("redeem"), c_idx, m_idx, st.integers(1, 700))
transfer_op = st.tuples(st.just("transfer"), c_idx, c_idx, st.integers(1, 700))
ops = st.one_of(
    award_op,
    award_op,
    award_op,
    redeem_op,
    redeem_op,
    transfer_op,
    transfer_op,
    transfer_op,
    st.tuples(st.just("freeze"), c_idx, st.booleans()),
    st.tuples(st.just("suspend"), m_idx, st.booleans()),
    st.one_of(
        st.tuples(st.just("award_by_customer"), c_idx, c_idx, st.integers(0, 2)),
        st.tuples(st.just("redeem_at_customer"), c_idx, c_idx, st.integers(1, 10)),
    ),
)
# Gaps between blocks: a second, an hour, across a program midnight.
gaps = st.sampled_from([1_000, 1_500, 3_600_000, 12 * 3_600_000])
blocks = st.lists(st.tuples(gaps, st.lists(ops, max_size=20)), min_size=1, max_size=6)


@dataclass
class Model:
    """What the ledger should do, in totals only (no lots)."""

    balance: dict[bytes, int] = field(default_factory=dict)
    frozen: set[bytes] = field(default_factory=set)
    active: dict[bytes, bool] = field(default_factory=dict)
    issued: dict[bytes, int] = field(default_factory=dict)
    redeemed: dict[bytes, int] = field(default_factory=dict)
    today: dict[bytes, tuple[int, int]] = field(default_factory=dict)
    orders: set[tuple[bytes, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        for m in MERCHANTS:
            self.active[m.public_key] = True
            self.issued[m.public_key] = self.redeemed[m.public_key] = 0

    def bal(self, k: bytes) -> int:
        return self.balance.get(k, 0)

    def apply(self, op: tuple, day: int) -> Code:
        kind = op[0]
        if kind == "award":
            m, c = MERCHANTS[op[1]].public_key, CUSTOMERS[op[2]].public_key
            oid, amount = f"order-{op[3]}", op[4]
            rate, cap = TERMS[op[1]][1:]
            if not self.active[m]:
                return Code.MERCHANT_SUSPENDED
            if c in self.frozen:
                return Code.ACCOUNT_FROZEN
            if (m, oid) in self.orders:
                return Code.DUPLICATE_ORDER
            coins = amount * rate // 100
            d, so_far = self.today.get(m, (day, 0))
            so_far = so_far if d == day else 0
            if so_far + coins > cap:
                return Code.DAILY_CAP_EXCEEDED
            self.orders.add((m, oid))
            self.today[m] = (day, so_far + coins)
            self.issued[m] += coins
            self.balance[c] = self.bal(c) + coins
            return Code.OK
        if kind == "award_by_customer":
            return Code.UNKNOWN_MERCHANT
        if kind == "redeem_at_customer":
            return Code.UNKNOWN_MERCHANT
        if kind == "redeem":
            c, m, amount = (
                CUSTOMERS[op[1]].public_key,
                MERCHANTS[op[2]].public_key,
                op[3],
            )
            if not self.active[m]:
                return Code.MERCHANT_SUSPENDED
            if c in self.frozen:
                return Code.ACCOUNT_FROZEN
            if self.bal(c) < amount:
                return Code.INSUFFICIENT_BALANCE
            self.balance[c] -= amount
            self.redeemed[m] += amount
            return Code.OK
        if kind == "transfer":
            s, r, amount = (
                CUSTOMERS[op[1]].public_key,
                CUSTOMERS[op[2]].public_key,
                op[3],
            )
            if s == r:
                return Code.INVALID_RECIPIENT
            if s in self.frozen:
                return Code.ACCOUNT_FROZEN
            if self.bal(s) < amount:
                return Code.INSUFFICIENT_BALANCE
            if r in self.frozen:
                return Code.ACCOUNT_FROZEN
            self.balance[s] -= amount
            self.balance[r] = self.bal(r) + amount
            return Code.OK
        if kind == "freeze":
            c = CUSTOMERS[op[1]].public_key
            (self.frozen.add if op[2] else self.frozen.discard)(c)
            return Code.OK
        if kind == "suspend":
            self.active[MERCHANTS[op[1]].public_key] = op[2]
            return Code.OK
        raise AssertionError(kind)


def raw_of(op: tuple, chain_id: str, exp: int, n: int) -> bytes:
    kind = op[0]
    if kind == "award":
        _, m, c, order, amount = op
        return b.award_purchase(
            MERCHANTS[m], chain_id, exp, CUSTOMERS[c], f"order-{order}", amount
        )
    if kind == "award_by_customer":
        _, signer, c, order = op
        return b.award_purchase(CUSTOMERS[signer], chain_id, exp, CUSTOMERS[c], "o", 1)
    if kind == "redeem":
        _, c, m, amount = op
        return b.redeem(CUSTOMERS[c], chain_id, exp, MERCHANTS[m], amount, f"r{n}")
    if kind == "redeem_at_customer":
        _, c, at, amount = op
        return b.redeem(CUSTOMERS[c], chain_id, exp, CUSTOMERS[at], amount, f"r{n}")
    if kind == "transfer":
        _, s, r, amount = op
        return b.transfer(CUSTOMERS[s], chain_id, exp, CUSTOMERS[r], amount, f"t{n}")
    if kind == "freeze":
        _, c, frozen = op
        return b.set_account_frozen(ADMIN, chain_id, exp, CUSTOMERS[c], frozen, f"f{n}")
    if kind == "suspend":
        _, m, active = op
        return b.update_merchant(ADMIN, chain_id, exp, MERCHANTS[m], *TERMS[m], active)
    raise AssertionError(kind)


# --- invariants ----------------------------------------------------------------------


def ledger_totals(chain: Chain) -> tuple[dict[bytes, int], dict[bytes, Merchant]]:
    now_s = chain.store.time_ms // 1000
    balances: dict[bytes, int] = {}
    merchants: dict[bytes, Merchant] = {}
    for k, v in chain.store.state_items():
        record = msgpack.unpackb(v)
        if k.startswith(PREFIX_ACCOUNT):
            acc = Account.from_wire(record)
            assert acc.debt == 0
            assert all(lot[0] > 0 for lot in acc.lots), acc.lots
            assert all(lot[1] == 0 for lot in acc.lots)  # nothing expires yet
            balances[k[len(PREFIX_ACCOUNT) :]] = acc.balance(now_s)
            # One lot per issuer, kept sorted.
            issuers = [lot[2] for lot in acc.lots]
            assert issuers == sorted(set(issuers))
            assert acc.lots or acc.frozen  # an empty account is no entry
        elif k.startswith(PREFIX_MERCHANT):
            merchants[k[len(PREFIX_MERCHANT) :]] = Merchant.from_wire(record)
    return balances, merchants


def check_invariants(chain: Chain, model: Model) -> None:
    balances, merchants = ledger_totals(chain)
    assert all(v >= 0 for v in balances.values())
    issued = sum(m.issued for m in merchants.values())
    redeemed = sum(m.redeemed for m in merchants.values())
    assert sum(balances.values()) == issued - redeemed
    # Agreement with the model.
    assert {k: v for k, v in balances.items() if v} == {
        k: v for k, v in model.balance.items() if v
    }
    for m in MERCHANTS:
        rec = merchants[m.public_key]
        key = m.public_key
        assert (rec.issued, rec.redeemed, rec.active) == (
            model.issued[key],
            model.redeemed[key],
            model.active[key],
        )
    for c in CUSTOMERS:
        acc = chain.account(c)
        assert (acc is not None and acc.frozen) == (c.public_key in model.frozen)
    # The auditor's root.
    assert recompute_root(chain.store) == chain.store.state_root


@given(blocks)
@settings(max_examples=30, deadline=None)
def test_random_blocks_keep_the_ledger_consistent(plan) -> None:
    run_plan(plan, event)


def random_op(rng: random.Random) -> tuple:
    m, c, c2 = rng.randrange(3), rng.randrange(4), rng.randrange(4)
    kind = rng.choices(
        ["award", "redeem", "transfer", "freeze", "suspend", "award_by_customer"],
        weights=[40, 15, 35, 3, 3, 4],
    )[0]
    if kind == "award":
        return (kind, m, c, rng.randrange(60), rng.randint(1, 6000))
    if kind == "redeem":
        return (kind, c, m, rng.randint(1, 700))
    if kind == "transfer":
        return (kind, c, c2, rng.randint(1, 700))
    if kind == "freeze":
        return (kind, c, rng.random() < 0.6)
    if kind == "suspend":
        return (kind, m, rng.random() < 0.3)
    return (kind, c, c2, 0)


def test_long_seeded_run() -> None:
    """Fewer, bigger blocks than the generated cases: 12 blocks of 80."""
    rng = random.Random(20251201)
    plan = [
        (
            rng.choice([1_000, 3_600_000, 12 * 3_600_000]),
            [random_op(rng) for _ in range(80)],
        )
        for _ in range(12)
    ]
    seen = run_plan(plan)
    assert len(seen) > 700
    for code in (Code.OK, Code.INSUFFICIENT_BALANCE, Code.DAILY_CAP_EXCEEDED):
        assert code in seen


def run_plan(plan: list[tuple[int, list[tuple]]], record=lambda _: None) -> list[Code]:
    """Run `plan` on a proposer and a replaying validator; return all codes."""
    seen_codes: list[Code] = []
    with tempfile.TemporaryDirectory() as tmp:
        proposer = Chain(f"{tmp}/proposer", genesis())
        validator = Chain(f"{tmp}/validator", genesis())
        model = Model()
        n = 0
        try:
            for gap_ms, block_ops in plan:
                time_ms = proposer.store.time_ms + gap_ms
                exp = time_ms // 1000 + 60
                raws = []
                for op in block_ops:
                    n += 1
                    raws.append(raw_of(op, proposer.chain_id, exp, n))
                block, result = proposer.build(raws, time_ms)
                # Only exact repeats are dropped (same op, same block).
                for tx, code, _ in result.dropped:
                    assert code == Code.DUPLICATE_TX
                    assert tx.raw in raws
                assert len(block.txs) == len(set(raws))

                day = (time_ms // 1000 + OFFSET_MIN * 60) // DAY_S
                seen: set[bytes] = set()
                expected = []
                for op, raw in zip(block_ops, raws, strict=True):
                    if raw in seen:
                        continue
                    seen.add(raw)
                    expected.append(model.apply(op, day))
                assert [r.code for r in result.receipts] == expected
                seen_codes.extend(expected)
                for code in set(expected):
                    record(f"code {code.slug}")

                proposer.store.commit_block(block, b"", result)
                assert block.header.state_root == proposer.store.state_root

                # The validator only sees bytes.
                received = decode_block(block.encode())
                replayed = validator.executor.execute_block(received)
                validator.store.commit_block(received, b"", replayed)
                assert validator.store.state_root == proposer.store.state_root
                assert validator.store.block_hash == proposer.store.block_hash
                assert [decode_tx(r).hash for r in received.txs] == [
                    t.hash for t in result.txs
                ]
                check_invariants(proposer, model)

            assert validator.state() == proposer.state()
            check_invariants(validator, model)
            return seen_codes
        finally:
            proposer.close()
            validator.close()


@given(st.lists(st.tuples(st.binary(min_size=1, max_size=40), st.binary(max_size=60))))
@settings(max_examples=50, deadline=None)
def test_accumulator_is_order_independent(pairs) -> None:
    forward, backward, batch = Accumulator(), Accumulator(), Accumulator()
    for k, v in pairs:
        forward.add(k, v)
    for k, v in reversed(pairs):
        backward.add(k, v)
    batch.update(pairs, [])
    assert forward.value == backward.value == batch.value
    for k, v in pairs:
        forward.remove(k, v)
    assert forward.value == 0
    assert forward.root() == Accumulator().root()
