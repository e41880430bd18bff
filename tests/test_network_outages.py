"""Validators going away: the chain keeps going while a quorum remains, stops
safely when it does not, and resumes when a quorum is back.

What this proves, with 4 validators (a quorum is 3) and 1 auditor:

- one validator stopped: transactions sent to the others and to the auditor
  still become final;
- two stopped: nothing is committed, and the live nodes all stay at one
  height with the same block (no fork, no half-committed block); a
  transaction submitted meanwhile waits in the mempool instead of being lost;
- one of the two returns: commits resume, the waiting transaction becomes
  final, and the returned validator, which missed blocks, catches up;
- a validator hung with its connections open (SIGSTOP) does not stop the
  others either, and it catches up once it runs again;
- at the end all five nodes hold the same chain and the same balances;
- a transaction an app sends through the auditor while every validator is
  down for a restart is not lost: once they are back, it (or the app's retry
  of the same bytes) becomes final.
"""

from __future__ import annotations

import logging
import time

import pytest

from client.http import Unavailable
from client.keys import Keypair
from tests.harness.cluster import MERCHANT_RATE, launched_cluster

log = logging.getLogger("tests.network")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

STALL_S = 4.0
# Blocks come at least every second once the validators are back.
RETRY_WAIT_S = 15.0


@pytest.fixture
def cluster(tmp_path, request):
    with launched_cluster(tmp_path / "devnet", request) as running:
        yield running


def test_commits_need_a_quorum_and_resume_with_it(cluster):
    merchant = cluster.register_merchant(via="v1")
    customer = Keypair.generate()
    spent = 0

    def award(spend: int, via: str) -> dict:
        nonlocal spent
        spent += spend
        return cluster.award(merchant, customer, spend, via)

    log.info("one validator stopped: the other three and the auditor still commit")
    cluster.stop("v4")
    for via in ("v1", "v2", "v3", "a1"):
        award(1000, via)
    behind = cluster.wait_for_blocks(2, ["v1", "v2", "v3", "a1"])
    log.info("v4 is now behind height=%d", behind)

    log.info("two validators stopped: no quorum, so no block")
    cluster.stop("v3")
    live = ["v1", "v2", "a1"]
    stalled_at = cluster.wait_for_same_height(live)
    waiting = cluster.submit_pending(cluster.award_tx(merchant, customer, 500), "v1")
    spent += 500
    time.sleep(STALL_S)
    heights = cluster.heights(live)
    assert heights == dict.fromkeys(live, stalled_at), (
        f"with 2 of 4 validators the live nodes moved from height {stalled_at}: "
        f"{heights}\n{cluster.describe()}"
    )
    status = cluster.client("v1").tx(waiting)["status"]
    assert status == "pending", f"tx submitted during the stall is {status}"
    cluster.assert_consistent(live)

    log.info("v4 returns: a quorum again; it catches up and the waiting tx is final")
    cluster.start("v4")
    final_at = cluster.wait_for_tx(waiting, ["v1", "v2", "v4", "a1"], timeout=30)
    assert final_at > stalled_at
    cluster.wait_for_blocks(2, ["v1", "v2", "v4", "a1"])

    log.info("v3 returns too")
    cluster.start("v3")
    cluster.wait_for_blocks(2, cluster.members)

    log.info("a validator hangs with its connections open: the rest still commit")
    cluster.pause("v1")
    hung_at = cluster.tip(["v2", "v3", "v4"])
    award(700, "v2")
    cluster.wait_for_height(["v2", "v3", "v4", "a1"], hung_at + 2, timeout=20)
    cluster.resume("v1")
    cluster.wait_for_blocks(1, cluster.members)

    log.info("all five nodes hold the same chain and the same balance")
    cluster.assert_consistent(cluster.members)
    expected = spent * MERCHANT_RATE // 100
    assert cluster.balances(customer, cluster.members) == dict.fromkeys(
        cluster.members, expected
    )


def test_auditor_submission_during_a_validator_restart_becomes_final(cluster):
    merchant = cluster.register_merchant(via="v1")
    customer = Keypair.generate()

    log.info("every validator goes down for maintenance; the auditor stays up")
    for name in cluster.validators:
        cluster.stop(name)
    cluster.wait_until(lambda: auditor_peers(cluster) == 0, 10, "a1 alone", ["a1"])

    log.info("an app submits an award through the auditor meanwhile")
    raw = cluster.award_tx(merchant, customer, 1000)
    try:
        tx_hash = cluster.submit_pending(raw, "a1")
        log.info("the auditor accepted it for later hash=%s", tx_hash[:16])
    except Unavailable as exc:
        log.info("the auditor asked to come back later: %s", exc)

    log.info("the validators return; the app retries the same bytes, as it may")
    cluster.start(*cluster.validators)
    cluster.wait_until(
        lambda: auditor_peers(cluster) == len(cluster.validators),
        15,
        "a1 connected to every validator again",
        ["a1"],
    )
    doc = cluster.client("a1").submit(raw, wait=True, timeout=RETRY_WAIT_S)
    assert doc["status"] == "committed", (
        f"a transaction submitted to the auditor while no validator was connected "
        f"is still {doc['status']} {RETRY_WAIT_S:g}s after the validators returned "
        f"and the same bytes were resubmitted: the auditor never forwarded it\n"
        f"{cluster.describe()}"
    )
    cluster.wait_for_tx(doc["hash"], cluster.members)
    assert cluster.balances(customer, cluster.members) == dict.fromkeys(
        cluster.members, 1000 * MERCHANT_RATE // 100
    )


def auditor_peers(cluster) -> int | None:
    return (cluster.status("a1") or {}).get("peers")
