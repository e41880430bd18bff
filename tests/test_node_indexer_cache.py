"""The indexer's cache of committed entries saves database reads only: with it,
however small, the index holds exactly what it holds without it."""

from __future__ import annotations

import pytest

import node.indexer
from node.indexer import INDEX_PREFIX, Indexer
from tests.state_helpers import DAY_S, M1, M2, Chain, b, key

CUSTOMERS = [key(200 + n) for n in range(7)]
STRAY = key(250)


def index_a_chain(path, monkeypatch, capacity: int | None) -> dict[bytes, bytes]:
    """Commit blocks over three program days, index each as the node does, and
    return every index entry. capacity None: no cache at all."""
    if capacity is None:
        monkeypatch.setattr(node.indexer, "_keep", lambda cache, key, value: None)
    else:
        monkeypatch.setattr(node.indexer, "COMMITTED_CACHE_ENTRIES", capacity)
    chain = Chain(path)
    indexer = Indexer(chain.store)
    try:
        start_ms = chain.store.time_ms
        for height in range(12):
            when = start_ms + (height // 4) * DAY_S * 1000 + (height % 4 + 1) * 1000
            exp = when // 1000 + 600
            # Customers come back on the same day and on later days.
            raws = [
                b.award_purchase(
                    (M1, M2)[n % 2], chain.chain_id, exp, c, f"o-{height}-{n}", 900 + n
                )
                for n, c in enumerate(CUSTOMERS[height % 3 : height % 3 + 4])
            ]
            # An index computed for a block that is then not committed (another
            # proposal won the round, the store refused it) must leave no trace.
            stray = b.award_purchase(M1, chain.chain_id, exp, STRAY, f"s-{height}", 5)
            other, other_result = chain.build([stray], when)
            indexer.block_entries(
                other, other_result.txs, other_result.receipts, [], lambda k: None
            )

            block, result = chain.build(raws, when)

            writes = result.state_writes

            def state_after(k: bytes, writes=writes) -> bytes | None:
                return writes[k] if k in writes else chain.store.get_state(k)

            entries = indexer.block_entries(
                block, result.txs, result.receipts, result.expirations, state_after
            )
            result.state_writes = {**writes, **entries}
            chain.store.commit_block(block, b"", result)
            indexer.committed(block.height)
        return dict(chain.store.db.iterator(prefix=INDEX_PREFIX))
    finally:
        chain.close()


@pytest.mark.parametrize("capacity", [2, 10_000])
def test_index_is_the_same_with_and_without_the_cache(
    tmp_path, monkeypatch, capacity
) -> None:
    with monkeypatch.context() as patch:
        expected = index_a_chain(tmp_path / "plain", patch, None)
    got = index_a_chain(tmp_path / "cached", monkeypatch, capacity)
    assert got == expected
    # The chain did what the comparison needs: customers active on three days.
    assert sum(k.startswith(b"ia") for k in expected) > len(CUSTOMERS)
    assert not any(k.endswith(STRAY.public_key) for k in expected)
