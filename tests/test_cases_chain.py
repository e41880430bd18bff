"""Failure cases on a network of node processes: validators that lose their
disks, their quorum or their process, and clients that resend or crowd in.

One cluster (4 validators, 1 auditor; tests.harness.cluster) serves the whole
module, so each scenario starts on a chain with history; each leaves every
node running and committing. Sizes are module constants, shortened for
`make test`; each scenario is a function a soak can call with the case's
full sizes.

C01 `wiped_validators_rejoin`: v3 and v4 stopped, database and signer state
    deleted (keys kept), started: both reach the tip, a new block follows
    within three times (block interval + round timeout), both sign some of
    the next 10 commits. Variant `three_validators_wiped`: v2, v3 and v4
    wiped; the chain resumes once three have the tip, on the history v1 kept.
C02 `quorum_lost_for_long`: v3 and v4 stopped for OUTAGE_S (the case: 15
    minutes); once they are back a block is committed within the round
    timeout cap plus two block intervals, v1 and v2 never restarted, and no
    round of the stall took longer than its timeouts at the cap allow.
C03 `wiped_in_the_middle_of_a_round`: v2 stopped while it votes, its
    database and signer state deleted, started at once: it signs nothing at a
    height it could already have signed, no two messages its key signed
    conflict, and v1, v3, v4 keep committing.
C07 `killed_under_load`: SIGKILL at random moments on random validators,
    some during large write bursts (the case: 100 kills): each database
    opens, every node serves each height's block with its state, hashes and
    state roots agree, and every final transaction is in the chain once.
C09 `replay_after_restart`: a committed transfer and award, every node
    restarted, REPLAY_OTHERS other transactions (the case: 20,000), the exact
    bytes of both resubmitted to every node: refused as duplicates,
    balances unchanged.
C10 `one_merchant_many_tills`: 800 awards from 8 concurrent clients of one
    merchant while another merchant awards once a second: all 800 final
    within a bounded number of blocks, and each of the other merchant's
    awards final within a block or two throughout.

Every scenario ends with the harness's safety check (one block per height,
no key on two blocks for one step, every final transaction exactly once).
"""

from __future__ import annotations

import logging
import time

import pytest

from tests.harness.chain import heights_signed_by
from tests.harness.cluster import CONSENSUS_SETTINGS, launched_cluster

log = logging.getLogger("tests.network")

pytestmark = [pytest.mark.slow]

BLOCK_INTERVAL_S = 0.5  # the devnet's block_interval_ms
TIMEOUT_CAP_S = CONSENSUS_SETTINGS["timeout_cap_ms"] / 1000
# A round that hears nothing: propose, prevote and precommit timeouts.
ROUND_TIMEOUT_S = (
    CONSENSUS_SETTINGS["timeout_propose_ms"]
    + CONSENSUS_SETTINGS["timeout_prevote_ms"]
    + CONSENSUS_SETTINGS["timeout_precommit_ms"]
) / 1000

# C01
C01_HEIGHT = 40  # the case: 200
NEXT_COMMITS = 10


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("cases-chain") / "devnet"
    with launched_cluster(root, request) as running:
        yield running


@pytest.fixture(autouse=True)
def every_node_running(cluster):
    """Each scenario starts, and must end, with every node up and at the tip."""
    for name in cluster.members:
        if not cluster.nodes[name].running:
            cluster.start(name)
    cluster.wait_for_blocks(1, cluster.members, timeout=30)
    yield
    down = [n for n in cluster.members if not cluster.nodes[n].running]
    assert not down, f"the scenario left {down} stopped"
    cluster.wait_for_blocks(1, cluster.members, timeout=30)


# --- C01: wiped validators rejoin ---------------------------------------------------


def wiped_validators_rejoin(cluster, height: int = C01_HEIGHT) -> None:
    wiped = ["v3", "v4"]
    cluster.wait_for_height(cluster.members, height, timeout=height * 1.5 + 30)

    log.info("v3 and v4 stop and lose their data; their keys stay")
    for name in wiped:
        cluster.stop(name)
        cluster.wipe(name, consensus=True)
    stalled_at = cluster.wait_for_same_height(["v1", "v2", "a1"])
    for name in wiped:
        cluster.start(name)

    log.info("both rebuild the chain from the others, then it goes on")
    cluster.wait_for_height(wiped, stalled_at, timeout=60)
    caught_up = time.monotonic()
    cluster.wait_for_height(cluster.members, stalled_at + 1, timeout=60)
    resumed_after = time.monotonic() - caught_up
    bound = 3 * (BLOCK_INTERVAL_S + ROUND_TIMEOUT_S)
    assert resumed_after < bound, (
        f"the next block came {resumed_after:.1f}s after v3 and v4 had the tip"
    )

    log.info("both sign some of the next %d commits", NEXT_COMMITS)
    cluster.wait_for_height(cluster.members, stalled_at + NEXT_COMMITS, timeout=60)
    chains = cluster.fetch_chains(["v1", "v2"], from_height=stalled_at + 1)
    for chain in chains.values():
        for h in list(chain.certificates):
            if h > stalled_at + NEXT_COMMITS:
                del chain.certificates[h]
    for name in wiped:
        signed = heights_signed_by(chains, cluster.nodes[name].public_key)
        assert signed, f"{name} signed none of the {NEXT_COMMITS} commits"
    cluster.assert_consistent(cluster.members)
    cluster.assert_no_double_signing(cluster.members)


def three_validators_wiped(cluster) -> None:
    wiped = ["v2", "v3", "v4"]
    log.info("v2, v3 and v4 stop together and lose their data")
    for name in wiped:
        cluster.kill(name)
        cluster.wipe(name, consensus=True)
    stalled_at = cluster.height("v1")
    for name in wiped:
        cluster.start(name)

    log.info("the chain resumes once three have the tip")
    cluster.wait_for_height(wiped, stalled_at, timeout=60)
    cluster.wait_for_height(cluster.members, stalled_at + 3, timeout=60)
    cluster.assert_consistent(cluster.members)
    cluster.assert_no_double_signing(cluster.members)


@pytest.mark.timeout(240)
def test_c01_wiped_validators_rejoin_and_sign(cluster):
    wiped_validators_rejoin(cluster)
    three_validators_wiped(cluster)
    cluster.check_safety()
