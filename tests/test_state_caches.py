"""The store's state cache and the accumulator's element memo save work only:
with them the state and the root are exactly what they are without them."""

from __future__ import annotations

import random

import pytest

import state.store
from state.root import Accumulator, ElementMemo, element
from tests.state_helpers import ADMIN, M1, Chain, b, key, recompute_root


def test_memo_gives_the_same_accumulator_as_fresh_elements() -> None:
    rng = random.Random(7)
    keys = [b"s-key-%d" % n for n in range(40)]
    current: dict[bytes, bytes] = {}
    plain, memoised = Accumulator(), Accumulator()
    memo = ElementMemo(capacity=8)  # small: most keys fall out and come back

    for _ in range(300):
        added, removed = [], []
        for k in rng.sample(keys, 6):
            old = current.get(k)
            # Values repeat on purpose: a key often returns to an earlier value.
            new = None if rng.random() < 0.2 else b"v%d" % rng.randrange(4)
            if old == new:
                continue
            if old is not None:
                removed.append((k, old))
            if new is not None:
                added.append((k, new))
                current[k] = new
            else:
                current.pop(k, None)
        plain.update(added, removed)
        memoised.update(added, removed, memo)
        assert memoised.value == plain.value

    expected = sum(element(k, v) for k, v in current.items())
    assert plain.value == expected % (1 << (8 * len(plain.to_bytes())))


def test_memo_checks_the_value_not_only_the_key() -> None:
    memo = ElementMemo()
    memo.remember_all([(b"k", b"old", element(b"k", b"old"))])
    assert memo.element(b"k", b"other") == element(b"k", b"other")
    assert memo.element(b"k", b"old") == element(b"k", b"old")


@pytest.mark.parametrize("entries", [4, 10_000])
def test_state_cache_follows_every_commit(tmp_path, monkeypatch, entries) -> None:
    # A cache of a few entries evicts between blocks; a large one keeps
    # every record the blocks change.
    monkeypatch.setattr(state.store, "STATE_CACHE_ENTRIES", entries)
    chain = Chain(tmp_path)
    customers = [key(100 + n) for n in range(6)]
    try:
        for round_ in range(8):
            raws = [
                b.award_purchase(
                    M1, chain.chain_id, chain.exp, c, f"o-{round_}-{n}", 1000 + n
                )
                for n, c in enumerate(customers)
            ]
            if round_ == 4:
                raws.append(
                    b.set_account_frozen(
                        ADMIN, chain.chain_id, chain.exp, customers[0], True, "review"
                    )
                )
            chain.run(raws)
            for k, v in chain.state().items():
                assert chain.store.get_state(k) == v
            assert chain.store.state_root == recompute_root(chain.store)
    finally:
        chain.close()


@pytest.mark.parametrize("capacity", [1, 2, 3, 8])
def test_a_small_memo_stays_within_its_capacity(capacity) -> None:
    memo = ElementMemo(capacity=capacity)
    for n in range(20):
        memo.remember_all([(b"k%d" % n, b"v", n)])
        assert len(memo.known) <= capacity
    # The newest entry is always kept; the oldest go first.
    assert memo.known[b"k19"] == (b"v", 19)
    assert b"k0" not in memo.known
