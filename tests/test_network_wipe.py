"""Nodes that lost their disk rebuild the chain from their peers.

What this proves:

- a validator stopped and wiped (database, signer state and write-ahead log
  gone, key kept) syncs from genesis to the same blocks and state root as
  the others, while the remaining three keep committing;
- having lost the record of what it signed, it does not sign again until
  past the tip it found on its return and past the last height the others
  heard it sign (no certificate carries its key at a height in between), and
  from there on it signs commits again;
- an auditor wiped and started long after the others catches up from genesis
  too and reports the same balances;
- after a full outage, a validator that lost its disk and comes back before
  any peer does must not sign at the height it was voting on when the
  network went down: it cannot tell "nobody answers" from "a new chain".
"""

from __future__ import annotations

import logging
import re
import time

import pytest

from client.keys import Keypair
from tests.harness.cluster import MERCHANT_RATE, launched_cluster

log = logging.getLogger("tests.network")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

WIPED = "v4"
LATE = "a1"
SIGN_FROM = re.compile(r"signer record missing tip=(\d+) sign_from=(\d+)")
# Long enough for a wiped validator left alone to have signed, had it wrongly
# taken silence for a new chain: start-up plus a few status intervals.
ALONE_S = 8.0


@pytest.fixture
def cluster(tmp_path, request):
    with launched_cluster(tmp_path / "devnet", request) as running:
        yield running


def test_wiped_validator_and_late_auditor_sync_from_genesis(cluster):
    merchant = cluster.register_merchant(via="v1")
    customer = Keypair.generate()
    spends = []

    def award(spend: int, via: str) -> dict:
        spends.append(spend)
        return cluster.award(merchant, customer, spend, via)

    log.info("some history every node holds")
    for via in cluster.members:
        award(1000, via)

    log.info("the auditor goes offline and loses its disk")
    cluster.stop(LATE)
    cluster.wipe(LATE)

    log.info("the validator goes offline and loses its disk")
    cluster.stop(WIPED)
    gone_at = cluster.tip(["v1", "v2", "v3"])
    cluster.wipe(WIPED, consensus=True)

    log.info("the other three keep committing meanwhile")
    for via in ("v1", "v2", "v3"):
        award(2000, via)

    log.info("the wiped validator returns and syncs while blocks keep coming")
    cluster.start(WIPED, wait=False)
    for via in ("v1", "v2", "v3", "v1"):
        award(3000, via)
    cluster.wait_until_ready(WIPED, timeout=60)
    cluster.wait_for_height([WIPED], cluster.tip(["v1"]), timeout=30)
    sign_from = signing_height(cluster)

    log.info("it signs again from height %d, never before", sign_from)
    cluster.wait_until_signing(WIPED, after=sign_from - 1, timeout=40)
    chains = cluster.assert_consistent(cluster.validators)
    key = cluster.nodes[WIPED].public_key
    # Its precommit of the height it left in may still land in that certificate.
    early = [
        h
        for chain in chains.values()
        for h in range(gone_at + 2, sign_from)
        if h in chain.certificates and key in chain.certificates[h].validators
    ]
    assert not early, f"{WIPED} signed at {early}, before height {sign_from}"

    log.info("the auditor returns late, empty, and catches up from genesis")
    award(4000, "v2")
    cluster.start(LATE)
    cluster.wait_for_height([LATE], cluster.tip(["v1"]), timeout=30)

    log.info("one chain and the same balance everywhere")
    cluster.wait_for_blocks(1, cluster.members)
    cluster.assert_consistent(cluster.members)
    cluster.assert_no_double_signing(cluster.members)
    expected = sum(spends) * MERCHANT_RATE // 100
    assert cluster.balances(customer, cluster.members) == dict.fromkeys(
        cluster.members, expected
    )


def signing_height(cluster) -> int:
    """The first height the wiped validator allowed itself to sign, from its log."""
    lines = cluster.log_matches(WIPED, SIGN_FROM.pattern)
    assert lines, f"{WIPED} did not log its signing height\n{cluster.log_tail(WIPED)}"
    tip, sign_from = map(int, SIGN_FROM.search(lines[-1]).groups())
    log.info("wiped validator found tip=%d sign_from=%d", tip, sign_from)
    # Past the tip it synced to, and past the last height any other validator
    # heard its key sign (the others went on without it, so that is below).
    assert sign_from == tip + 1
    return sign_from


def test_wiped_validator_alone_after_an_outage_does_not_sign(cluster):
    cluster.wait_for_height(cluster.members, 3)
    log.info("v1 and v2 go down: v3 and v4 vote at the next height without a quorum")
    cluster.stop("v1")
    cluster.stop("v2")
    stalled_at = cluster.wait_for_same_height(["v3", "v4", LATE])
    cluster.wait_until(
        lambda: signing_at(cluster, WIPED) == stalled_at + 1,
        10,
        f"{WIPED} voting at height {stalled_at + 1}",
        [WIPED],
    )
    time.sleep(1.0)

    log.info("the rest go down; v4 loses its disk (signer record included)")
    for name in ("v3", WIPED, LATE):
        cluster.stop(name)
    cluster.wipe(WIPED, consensus=True)

    log.info("v4 comes back first, alone")
    cluster.start(WIPED, wait=False)
    unsafe = watch_signing(cluster, WIPED, up_to=stalled_at + 1, seconds=ALONE_S)
    assert unsafe is None, (
        f"{WIPED} voted at height {stalled_at + 1}, lost its signer record, "
        f"came back while no peer answered and signs at height {unsafe} of a "
        f"chain at height {stalled_at}: it may sign twice at height(s) "
        f"{unsafe}..{stalled_at + 1}\n{cluster.log_tail(WIPED)}"
    )

    log.info("the others return: commits resume, and nobody saw a double sign")
    cluster.start("v1", "v2", "v3", LATE)
    cluster.wait_for_height(cluster.members, stalled_at + 3, timeout=40)
    cluster.assert_consistent(cluster.members)
    cluster.assert_no_double_signing(cluster.members)


def signing_at(cluster, name: str) -> int | None:
    """The height the node's consensus is signing at, or None."""
    status = cluster.status(name)
    consensus = (status or {}).get("consensus") or {}
    return consensus.get("height") if consensus.get("signing") else None


def watch_signing(cluster, name: str, up_to: int, seconds: float) -> int | None:
    """The first height <= `up_to` the node signs at within `seconds`, if any."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        height = signing_at(cluster, name)
        if height is not None and height <= up_to:
            return height
        time.sleep(0.2)
    return None
