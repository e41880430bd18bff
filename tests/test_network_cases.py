"""Failure cases seen in systems like ours, on four validator processes and an
auditor.

C11, the same transaction twice: a redemption that must fail and a valid
transfer, each sent to every API at once, are each in exactly one block; the
failed one is recorded as failed and cannot be submitted again; no mempool
still holds either.

C17, the same order awarded again: resubmitted, re-signed, sent in parallel to
every API with other amounts; the customer is credited exactly once and every
later award of that order is refused as already awarded, while another
merchant's order with the same id is another order.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from client import builders
from client.http import ApiError, AsyncClient, Conflict
from client.keys import Keypair
from state.block import decode_block
from state.codec import sha256
from tests.harness.cluster import MERCHANT_RATE, launched_cluster

log = logging.getLogger("tests.network")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


@pytest.fixture
def cluster(tmp_path, request):
    with launched_cluster(tmp_path / "devnet", request) as running:
        yield running


def submit_everywhere(cluster, raw: bytes, wait: bool) -> list:
    """The same bytes to every node's API at once; each answer or its error."""

    async def one(name: str):
        async with AsyncClient(cluster.nodes[name].api_url) as api:
            try:
                return await api.submit(raw, wait=wait, timeout=20)
            except ApiError as exc:
                return exc

    async def all_of():
        return await asyncio.gather(*(one(n) for n in cluster.members))

    return asyncio.run(all_of())


def occurrences(cluster, name: str, hashes: set[bytes]) -> dict[bytes, int]:
    """How many times each hash appears in the blocks `name` stores."""
    counts = dict.fromkeys(hashes, 0)
    client = cluster.client(name)
    for height in range(1, cluster.height(name) + 1):
        block_bytes, _, _ = client.raw_block(height)
        for raw in decode_block(block_bytes).txs:
            tx_hash = sha256(raw)
            if tx_hash in counts:
                counts[tx_hash] += 1
    return counts


def test_c11_the_same_transaction_sent_to_every_node(cluster):
    merchant = cluster.register_merchant(via="v1")
    customer, friend = Keypair.generate(), Keypair.generate()
    cluster.award(merchant, customer, 10_000, via="v2")  # 1,000 coins
    expiry = cluster.expiry()
    too_much = builders.redeem(
        customer, cluster.chain_id, expiry, merchant.address, 5_000, "C11"
    )
    transfer = builders.transfer(
        customer, cluster.chain_id, expiry, friend.address, 300, "C11"
    )

    log.info("a failing redemption and a transfer, each to every API at once")
    submit_everywhere(cluster, too_much, wait=False)
    submit_everywhere(cluster, transfer, wait=False)
    heights = [
        cluster.wait_for_tx(sha256(raw).hex(), cluster.members)
        for raw in (too_much, transfer)
    ]
    cluster.wait_for_height(cluster.members, max(heights) + 20, timeout=60)

    log.info("each is in exactly one block, on every node")
    for name in cluster.members:
        counts = occurrences(cluster, name, {sha256(too_much), sha256(transfer)})
        assert set(counts.values()) == {1}, f"{name}: {counts}"

    failed = cluster.client("a1").tx(sha256(too_much).hex())
    assert failed["receipt"]["code"] == "insufficient_balance"
    with pytest.raises(Conflict) as again:
        cluster.client("v3").submit(too_much)
    assert again.value.code == "duplicate_tx"

    for name in cluster.members:
        assert cluster.status(name)["mempool_txs"] == 0, name
    assert cluster.balances(customer, cluster.members) == dict.fromkeys(
        cluster.members, 1_000 - 300
    )
    cluster.assert_consistent(cluster.members)


def test_c17_the_same_order_awarded_again(cluster):
    merchant = cluster.register_merchant(via="v1")
    other = cluster.register_merchant(via="v2", name="Other Shop")
    customer = Keypair.generate()

    def award(by: Keypair, amount: int, expiry_shift: int = 0) -> bytes:
        return builders.award_purchase(
            by, cluster.chain_id, cluster.expiry() + expiry_shift,
            customer.address, "order-17", amount,
        )  # fmt: skip

    log.info("the order is awarded once")
    first = award(merchant, 2_000)
    cluster.submit(first, via="v1")
    earned = 2_000 * MERCHANT_RATE // 100

    log.info("the very same bytes again: the transaction is a duplicate")
    with pytest.raises(Conflict):
        cluster.client("v4").submit(first)

    log.info("re-signed and with other amounts, to every API in parallel")
    attempts = [award(merchant, 2_000 + 100 * i, expiry_shift=i + 1) for i in range(10)]

    async def send_all():
        async def one(i: int, raw: bytes):
            name = cluster.members[i % len(cluster.members)]
            async with AsyncClient(cluster.nodes[name].api_url) as api:
                try:
                    return await api.submit(raw, wait=True, timeout=20)
                except ApiError as exc:
                    return exc

        return await asyncio.gather(*(one(i, raw) for i, raw in enumerate(attempts)))

    answers = asyncio.run(send_all())
    codes = {getattr(a, "code", None) for a in answers}
    assert codes == {"duplicate_order"}, answers

    log.info("another merchant's order with the same id is another order")
    cluster.submit(award(other, 1_000), via="v3")
    earned += 1_000 * MERCHANT_RATE // 100

    height = cluster.tip(cluster.members)
    cluster.wait_for_height(cluster.members, height, timeout=15)
    assert cluster.balances(customer, cluster.members) == dict.fromkeys(
        cluster.members, earned
    )
    cluster.assert_consistent(cluster.members)
