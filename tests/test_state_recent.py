"""The in-memory window of recently committed transactions (state.recent): the
replay check answers from it only where it is exact, and is never wrong."""

from __future__ import annotations

import hashlib

from hypothesis import given, settings
from hypothesis import strategies as st

import state.recent as recent
from state.codes import Code
from state.recent import RecentTxs
from state.tx import MAX_TTL_S, decode_tx
from tests.state_helpers import C1, M1, Chain, b
from tests.test_state_admission import admit_code


def h(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(8, "big")).digest()


def test_a_fresh_store_answers_the_replay_check_from_memory(tmp_path) -> None:
    chain = Chain(tmp_path / "db")
    raw = b.award_purchase(M1, chain.chain_id, chain.exp, C1, "o", 1000)
    assert chain.run([raw]) == [Code.OK]

    now_s = chain.store.time_ms // 1000
    assert chain.store.recent.covers(now_s)
    assert decode_tx(raw).hash in chain.store.recent
    assert chain.store.is_replay(decode_tx(raw).hash, now_s)
    assert admit_code(chain, raw) == Code.DUPLICATE_TX
    chain.close()


def test_a_reopened_store_reads_the_index_until_the_window_covers_now(
    tmp_path,
) -> None:
    chain = Chain(tmp_path / "db")
    raw = b.award_purchase(M1, chain.chain_id, chain.exp, C1, "o", 1000)
    assert chain.run([raw]) == [Code.OK]
    tip_s = chain.store.time_ms // 1000
    chain.close()

    reopened = Chain(tmp_path / "db")
    tx_hash = decode_tx(raw).hash
    assert tx_hash not in reopened.store.recent
    assert not reopened.store.recent.covers(tip_s + MAX_TTL_S - 1)
    assert reopened.store.recent.covers(tip_s + MAX_TTL_S)
    # Not in memory, yet refused: the check reads the transaction index.
    assert reopened.store.is_replay(tx_hash, tip_s + 1)
    assert admit_code(reopened, raw) == Code.DUPLICATE_TX
    reopened.close()


def test_blocks_leave_the_window_once_nothing_they_hold_can_be_admitted() -> None:
    window = RecentTxs(0)
    window.add(1_000, [h(1)])
    window.add(999 + MAX_TTL_S, [h(2)])
    # Committed at 1000, it may expire as late as 1000 + TTL: alive until then.
    assert h(1) in window

    window.add(1_000 + MAX_TTL_S, [])
    assert h(1) not in window and h(2) in window
    assert window.exact_from_s == 1_000 + MAX_TTL_S
    assert window.covers(1_000 + MAX_TTL_S)


def test_a_window_over_its_cap_drops_the_oldest_and_says_so(monkeypatch) -> None:
    monkeypatch.setattr(recent, "MAX_RECENT", 3)
    window = RecentTxs(0)
    window.add(10, [h(1), h(2)])
    window.add(11, [h(3), h(4)])

    assert len(window) == 2 and h(3) in window and h(1) not in window
    # Time 10's hashes are gone: until 10 + TTL the caller must ask the index.
    assert not window.covers(10 + MAX_TTL_S - 1)
    assert window.covers(10 + MAX_TTL_S)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2 * MAX_TTL_S), st.integers(0, 5)),
        min_size=1,
        max_size=40,
    ),
    st.integers(1, 6),
    st.integers(-MAX_TTL_S, MAX_TTL_S),
)
def test_the_window_never_misses_an_admissible_replay(
    steps, cap: int, skew: int
) -> None:
    """Whatever the block times, sizes and cap: a hash in the window was
    committed, and where the window covers `now` it holds every hash committed
    after now - MAX_TTL_S (the only ones a transaction alive at now can be)."""
    recent.MAX_RECENT, saved = cap, recent.MAX_RECENT
    try:
        window, committed, time_s, n = RecentTxs(0), {}, 0, 0
        for gap, count in steps:
            time_s += gap
            hashes = [h(n + i) for i in range(count)]
            n += count
            committed.update(dict.fromkeys(hashes, time_s))
            window.add(time_s, hashes)

            now_s = time_s + skew
            for tx_hash, at in committed.items():
                if tx_hash in window:
                    assert at <= time_s
                elif window.covers(now_s):
                    assert at <= now_s - MAX_TTL_S
    finally:
        recent.MAX_RECENT = saved
