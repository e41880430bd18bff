"""Four validators and one auditor, as separate processes, agree on one ledger.

What this proves: a transaction submitted to any node, the read-only auditor
included (it forwards to the validators), becomes final; every node then
reports the same balances for the accounts involved and the same transaction
at the same height; and every node serves the same block hash and state root
at every height, each block certified by a quorum for exactly that block.
"""

from __future__ import annotations

import logging
import urllib.request

import pytest

from client.keys import Keypair
from tests.harness.cluster import MERCHANT_RATE, launched_cluster

log = logging.getLogger("tests.network")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.fixture
def cluster(tmp_path, request):
    with launched_cluster(tmp_path / "devnet", request) as running:
        yield running


def test_transactions_to_every_node_become_final_everywhere(cluster):
    merchant = cluster.register_merchant(via="v1")
    customer, friend = Keypair.generate(), Keypair.generate()

    log.info("awarding a purchase through each node at once: %s", cluster.members)
    spends = {via: 1000 + 100 * i for i, via in enumerate(cluster.members)}
    awards = cluster.submit_concurrently(
        [
            (via, cluster.award_tx(merchant, customer, spend))
            for via, spend in spends.items()
        ]
    )
    earned = sum(spend * MERCHANT_RATE // 100 for spend in spends.values())

    log.info("the customer passes coins on through the auditor")
    transfer = cluster.transfer(customer, friend, 250, via="a1")

    final = [*awards, transfer]
    top = max(doc["height"] for doc in final)
    cluster.wait_for_height(cluster.members, top, timeout=15)

    log.info("every node knows every transaction, at the height it was final")
    for doc in final:
        height = cluster.wait_for_tx(doc["hash"], cluster.members, timeout=10)
        assert height == doc["height"], (
            f"tx {doc['hash'][:16]} final at {doc['height']}, stored at {height}"
        )

    log.info("every node reports the balances")
    assert cluster.balances(customer, cluster.members) == dict.fromkeys(
        cluster.members, earned - 250
    )
    assert cluster.balances(friend, cluster.members) == dict.fromkeys(
        cluster.members, 250
    )

    log.info("every node serves the same blocks")
    chains = cluster.assert_consistent(cluster.members)
    assert min(chain.tip for chain in chains.values()) >= top

    log.info("every node's metrics count the peers its status reports")
    for name in cluster.members:
        status = cluster.status(name)
        assert status is not None and status["peers"] >= 3, (name, status)
        assert peers_gauge(cluster.nodes[name].api_url) == status["peers"], name


def peers_gauge(api_url: str) -> int:
    with urllib.request.urlopen(f"{api_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    (line,) = [x for x in text.splitlines() if x.startswith("perk_peers ")]
    return int(float(line.split()[1]))
