"""A validator killed with SIGKILL, again and again, under a steady load.

What this proves: a validator that loses its process at arbitrary moments
(mid-round, mid-write, mid-sync) restarts from what it had made durable,
catches up to the tip and takes part in consensus again: later commit
certificates, as stored by the other nodes, carry its precommit. Meanwhile
every transaction the other nodes admitted becomes final exactly once, so the
customer's balance is the sum of the awards on every node. It never signed
two conflicting messages: no certificate anywhere puts its key on two blocks
at one height, no node saw a double sign, and its own log shows no signer
failure.
"""

from __future__ import annotations

import logging
import random
import time

import pytest

from client.keys import Keypair
from tests.harness.cluster import launched_cluster
from tests.harness.load import SteadyLoad

log = logging.getLogger("tests.network")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

KILLS = 5
VICTIM = "v4"
# Log lines that would mean the victim lost its signer record or its consensus
# failed. ("signer refused" is the guard working: a kill between recording a
# signature and logging the vote may leave the engine wanting another one.)
SIGNER_TROUBLE = r"signer record missing|consensus handler failed|node failed|Traceback"


@pytest.fixture
def cluster(tmp_path, request):
    with launched_cluster(tmp_path / "devnet", request) as running:
        yield running


def test_validator_killed_repeatedly_rejoins_without_double_signing(cluster):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    log.info("random kill moments seed=%d", seed)
    merchant = cluster.register_merchant(via="v1")
    customer = Keypair.generate()
    others = [n for n in cluster.members if n != VICTIM]

    with SteadyLoad(cluster, merchant, customer, targets=others) as load:
        for kill in range(1, KILLS + 1):
            kill_at_a_random_moment(cluster, rng, kill)
            restart_victim(cluster)
        catch_up_to_the_tip(cluster)
    assert not load.errors, f"submissions refused: {load.errors[:5]}"
    assert load.submitted, "the load generator submitted nothing"

    log.info("the victim signs commits again")
    rejoined_at = cluster.tip()
    cluster.wait_until_signing(VICTIM, after=rejoined_at, timeout=30)

    log.info("every admitted transaction is final on every node")
    last = max(
        cluster.wait_for_tx(s.tx_hash, ["v1"], timeout=30) for s in load.submitted
    )
    cluster.wait_for_height(cluster.members, last, timeout=20)
    assert cluster.balances(customer, cluster.members) == dict.fromkeys(
        cluster.members, load.expected_coins
    ), f"{len(load.submitted)} awards submitted"

    log.info("one chain everywhere, and no key on two blocks at one height")
    cluster.assert_consistent(cluster.members)
    cluster.assert_no_double_signing(cluster.members)
    trouble = cluster.log_matches(VICTIM, SIGNER_TROUBLE)
    assert not trouble, f"{VICTIM}'s log: {trouble[:5]}"
    refusals = cluster.log_matches(VICTIM, "signer refused")
    log.info("signatures the guard refused after restarts count=%d", len(refusals))


def kill_at_a_random_moment(cluster, rng: random.Random, kill: int) -> None:
    delay = rng.uniform(0.2, 3.0)
    log.info("kill %d of %d in %.2fs", kill, KILLS, delay)
    time.sleep(delay)
    height = cluster.height(VICTIM)
    cluster.kill(VICTIM)
    log.info("victim killed at height=%s tip=%s", height, cluster.height("v1"))


def restart_victim(cluster) -> None:
    cluster.start(VICTIM)


def catch_up_to_the_tip(cluster) -> None:
    tip = cluster.tip(["v1", "v2", "v3"])
    cluster.wait_for_height([VICTIM], tip, timeout=30)
    log.info("victim caught up height=%d", tip)
