"""Which waiting transactions a block takes: first come, first served, but no
signer beyond its fair share while others wait (failure case C12 at full
size: a flood of valid transactions from a few accounts must not hold back
everyone else's by the length of its queue)."""

from __future__ import annotations

import time
from types import SimpleNamespace

from client import builders
from client.keys import Keypair
from node.mempool import Mempool
from state.tx import SignatureCache

CHAIN = "perk-mempool-test-1"
NOW = int(time.time())
BYTES = 4 << 20


def pool() -> Mempool:
    store = SimpleNamespace(chain_id=CHAIN, is_replay=lambda tx_hash, now_s: False)
    return Mempool(store, SignatureCache(), max_txs=100_000, max_bytes=64 << 20)


def transfers(sender: Keypair, count: int, tag: str) -> list:
    to = Keypair.from_seed(b"\x01" * 32)
    mempool = pool()
    return [
        mempool.decode(
            builders.transfer(sender, CHAIN, NOW + 600, to.address, 1, f"{tag}-{i}")
        )
        for i in range(count)
    ]


def admit_all(mempool: Mempool, txs: list) -> None:
    for tx in txs:
        assert mempool.admit(tx, NOW).added


def test_a_pool_that_fits_in_a_block_is_taken_whole_in_order():
    mempool = pool()
    a, b = Keypair.generate(), Keypair.generate()
    txs = transfers(a, 5, "a") + transfers(b, 3, "b")
    admit_all(mempool, txs)
    assert mempool.reap(10, BYTES) == txs


def test_one_signer_alone_is_first_come_first_served():
    mempool = pool()
    txs = transfers(Keypair.generate(), 30, "solo")
    admit_all(mempool, txs)
    assert mempool.reap(10, BYTES) == txs[:10]


def test_a_flood_leaves_room_for_a_latecomer():
    mempool = pool()
    flooders = [Keypair.generate() for _ in range(3)]
    flood = [tx for f in flooders for tx in transfers(f, 200, "flood")]
    late = transfers(Keypair.generate(), 1, "late")
    admit_all(mempool, flood + late)

    block = mempool.reap(100, BYTES)

    assert late[0] in block  # after 600 others, yet in the next block
    assert len(block) == 100
    by_signer = {f.public_key: 0 for f in flooders}
    for tx in block:
        if tx.signer in by_signer:
            by_signer[tx.signer] += 1
    # Four signers waiting: a fair share is 25; the room the latecomer left
    # goes to the oldest of the rest, the first flooder's.
    assert sorted(by_signer.values()) == [25, 25, 49]
    order = {tx.hash: i for i, tx in enumerate(flood + late)}
    assert [order[tx.hash] for tx in block] == sorted(order[tx.hash] for tx in block)


def test_committed_transactions_free_their_signers_share():
    mempool = pool()
    a, b = Keypair.generate(), Keypair.generate()
    txs_a, txs_b = transfers(a, 50, "a"), transfers(b, 50, "b")
    admit_all(mempool, txs_a + txs_b)
    first = mempool.reap(40, BYTES)
    assert sum(tx.signer == b.public_key for tx in first) == 20
    mempool.update(first, NOW)
    mempool.update(txs_a, NOW)  # a's all committed: b alone waits now
    assert mempool.reap(40, BYTES) == txs_b[20:60]


def test_a_flood_of_large_transactions_leaves_room_by_bytes():
    # Few but large: the block fills by bytes long before its count, and the
    # latecomer's share is of the bytes too.
    mempool = pool()
    flood = transfers(Keypair.generate(), 400, "x" * 100)
    late = transfers(Keypair.generate(), 1, "late")
    admit_all(mempool, flood + late)
    size = len(flood[0].raw) + 3
    block = mempool.reap(1000, 100 * size)
    assert late[0] in block
    assert sum(len(tx.raw) + 3 for tx in block) <= 100 * size
    assert len(block) == 100  # the latecomer's unused bytes went to the flood
