"""Faults of the network, the clock and one node's timing, on real processes.

Each test runs a cluster of four validators and an auditor whose nodes record
every signed consensus message; `launched_cluster` ends each one with the
safety checker (harness.safety) over all blocks, messages and final
transactions of the run. C06 also routes every link through a proxy
(harness.links) to split the network.

- C06, a 2|2 split: neither half has a quorum, so nothing commits, and a
  transaction admitted by one half waits; after healing, peers reconnect
  (each redials with a backoff capped at 10 s), commits resume within two
  capped round timeouts of the mesh being back, and every node holds the
  same block at every height. Then a 1|3 split with the next proposer
  alone: its turns are decided by the next proposer in round 1, it commits
  nothing alone, and after healing it catches up and the transaction it
  admitted alone becomes final, once.
- C04: v2 misses the proposal of one round (and, until it leaves that
  round, every word of the block being committed), so it alone moves to the
  next round while the others commit; it gets the block by sync, is back
  within two heights and precommits at least four of the next five commits.
- Clock shifts beyond the allowed drift (see the test for what happens).
- C03, stopped in the middle of a round: v2 exits right after its signer
  recorded a prevote it never sent; its database and signer state are
  wiped and it starts at once. It signs nothing at a height it could have
  signed before, and the other three keep committing.

The 2|2 split lasts SPLIT_S seconds (60 in the case; 15 by default here, set
PERK_FAULT_SPLIT_S for the full length).
"""

from __future__ import annotations

import logging
import os
import re
import time

import pytest

from client.keys import Keypair
from consensus.messages import PRECOMMIT, Vote
from node.config import ConsensusSection
from p2p.policing import Limits
from tests.harness.cluster import CONSENSUS_SETTINGS, MERCHANT_RATE, launched_cluster

log = logging.getLogger("tests.network")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

SPLIT_S = float(os.environ.get("PERK_FAULT_SPLIT_S", "15"))
# A round whose every step waited its longest: what "a round timeout" means
# for the resumption bound.
ROUND_TIMEOUT_S = CONSENSUS_SETTINGS["timeout_cap_ms"] / 1000
# The longest a node waits before redialling a lost peer (p2p.policing).
REDIAL_CAP_S = Limits().backoff_max
RESUME_WAIT_S = 60.0
# Heights the three commit while the fourth is alone: its turn to propose
# comes at least once in any four.
LONE_HEIGHTS = 5
POLL_S = 0.25
LATE = "v2"
# v1 proposes at this height's round 0 (validators take turns by height).
MISSED_HEIGHT = 4
SKEWED = "v3"
CLOCK_DRIFT_MS = ConsensusSection().max_clock_drift_ms
SKEW_HEIGHTS = 5
WIPED = "v2"
# v1 proposes here, so the first thing v2 signs at this height is a prevote.
CRASH_HEIGHT = 4
SIGN_FROM = re.compile(r"signer record missing tip=(\d+) sign_from=(\d+)")


@pytest.fixture
def cluster(tmp_path, request):
    with launched_cluster(tmp_path / "devnet", request, links=True) as running:
        yield running


def test_c06_splits_commit_nothing_twice_and_heal(cluster):
    merchant = cluster.register_merchant(via="v1")
    customer = Keypair.generate()

    log.info("a 2|2 split: neither half has a quorum")
    before = cluster.tip()
    cluster.partition({"v1", "v2", "a1"}, {"v3", "v4"})
    # Admitted by one half, it can only become final after healing.
    during_split = cluster.submit_pending(
        cluster.award_tx(merchant, customer, 1000), "v3"
    )
    highest = watch_heights(cluster, SPLIT_S)
    # A commit under way when the links went may still land; nothing after.
    assert highest <= before + 1, (
        f"a half without a quorum committed: tip {before} before the split, "
        f"{highest} during it\n{cluster.describe()}"
    )

    log.info("healed: peers reconnect, commits resume, one chain everywhere")
    cluster.heal()
    reconnect_s, resume_s = watch_resumption(cluster, highest)
    # Each node redials a lost peer with a backoff capped at REDIAL_CAP_S; once
    # the mesh is back, the rounds must agree within two round timeouts.
    assert reconnect_s <= REDIAL_CAP_S + 2, f"peers back {reconnect_s:.1f}s after"
    assert resume_s - reconnect_s <= 2 * ROUND_TIMEOUT_S, (
        f"commits resumed {resume_s - reconnect_s:.1f}s after the peers were back"
    )
    cluster.wait_for_tx(during_split, cluster.members)
    cluster.assert_consistent(cluster.members)

    log.info("a 1|3 split with the next proposer alone")
    tip = cluster.wait_for_blocks(1, cluster.members)
    lone = cluster.proposer(tip + 1)
    rest = [v for v in cluster.validators if v != lone]
    cluster.partition({lone}, {*rest, "a1"})
    split_tip = cluster.tip()
    sent_to_lone = cluster.submit_pending(
        cluster.award_tx(merchant, customer, 2000), lone
    )
    cluster.wait_for_height(rest, split_tip + LONE_HEIGHTS, timeout=60)
    lone_height = cluster.height(lone)
    assert lone_height <= split_tip + 1, (
        f"{lone}, alone, reached height {lone_height} (tip {split_tip} at the split)"
    )
    # Where the lone validator was to propose first, a later round decided.
    chains = cluster.fetch_chains(rest[:1], from_height=split_tip + 2)
    lone_key = cluster.nodes[lone].public_key
    lone_turns = [
        h
        for h in chains[rest[0]].certificates
        if cluster.proposer(h) == lone and h <= split_tip + LONE_HEIGHTS
    ]
    assert lone_turns, f"{lone} had no turn to propose during the split"
    for height in lone_turns:
        certificate = chains[rest[0]].certificates[height]
        assert certificate.round >= 1, f"height {height} decided in round 0"
        assert lone_key not in certificate.validators

    log.info("healed: the lone validator catches up, its pending tx is final")
    cluster.heal()
    cluster.wait_for_height([lone], cluster.tip(rest) + 1, timeout=40)
    cluster.wait_for_tx(sent_to_lone, cluster.members, timeout=40)
    cluster.assert_consistent(cluster.members)
    expected = (1000 + 2000) * MERCHANT_RATE // 100
    assert cluster.balances(customer, cluster.members) == dict.fromkeys(
        cluster.members, expected
    )


def test_c04_a_validator_that_missed_a_proposal_is_back_within_two_heights(
    tmp_path, request
):
    switches = {LATE: {"miss_proposal_height": MISSED_HEIGHT, "miss_proposal_round": 0}}
    with launched_cluster(tmp_path / "devnet", request, switches=switches) as cluster:
        assert cluster.proposer(MISSED_HEIGHT) != LATE, "it would propose itself"
        cluster.wait_for_height(cluster.members, MISSED_HEIGHT + 8, timeout=60)
        chains = cluster.fetch_chains(["v1"])
        certificates = chains["v1"].certificates

        log.info("the others decided in round 0; %s alone went on", LATE)
        assert certificates[MISSED_HEIGHT].round == 0
        assert cluster.log_matches(LATE, r"test switch: proposal missed")
        assert cluster.log_matches(
            LATE, rf"moved past the missed round height={MISSED_HEIGHT} round=1"
        ), f"{LATE} did not move to round 1 at height {MISSED_HEIGHT}"
        assert cluster.log_matches(LATE, rf"sync applied .* from={MISSED_HEIGHT} ")

        log.info("back within two heights, then it signs the commits")
        signed = precommitted(cluster, LATE, chains["v1"])
        back = min(h for h in signed if h > MISSED_HEIGHT)
        log.info("back at height=%d precommitted=%s", back, sorted(signed))
        assert back <= MISSED_HEIGHT + 2, f"{LATE} precommitted again only at {back}"
        following = range(back + 1, back + 6)
        count = sum(1 for h in following if h in signed)
        assert count >= 4, f"{LATE} precommitted {count} of heights {following}"


def test_a_validator_clock_beyond_the_allowed_drift(tmp_path, request):
    """What a validator whose clock is off by more than max_clock_drift_ms
    does, and what the others do about it.

    Behind: its clock never goes back, so when set behind it stands still
    until the shifted time catches up, and lags from then on. The others'
    blocks are dated in its future, so it prevotes nil on them; the three
    others are a quorum, and it still precommits the block they prevoted (a
    block only has to be on time to be prevoted, never to be committed). Its
    own proposals are dated just after their parent, in its own future, so it
    prevotes nil even on them, but the others find them on time and commit
    them: at its turns block time hardly advances, and the next proposer moves
    it on. (It starts each height from its own commit, not from the last
    block's time by its lagging clock, or on an idle chain it would start
    after the others' propose timeout and lose every turn.)

    Ahead: its proposals are dated in the others' future, so the others
    prevote nil on them and each of its turns is decided by the next
    proposer in round 1. It votes on the others' blocks as usual.

    Either way the chain keeps committing with the other three, block times
    keep increasing, and nothing forks.
    """
    drift_ms = 2 * CLOCK_DRIFT_MS + 1000
    with launched_cluster(tmp_path / "devnet", request) as cluster:
        cluster.wait_for_height(cluster.members, 2)

        log.info("%s runs %d ms slow", SKEWED, drift_ms)
        cluster.shift_clock(SKEWED, -drift_ms)
        start = cluster.tip()
        cluster.wait_until(
            lambda: bool(cluster.log_matches(SKEWED, r"untimely block")),
            drift_ms / 1000 + 10,
            f"{SKEWED} finding the others' blocks in its future",
            [SKEWED],
        )
        cluster.wait_for_blocks(SKEW_HEIGHTS, cluster.members, timeout=40)
        chain = cluster.fetch_chains(["v1"], from_height=start + 1)["v1"]
        times = [chain.blocks[h]["header"]["time_ms"] for h in sorted(chain.blocks)]
        assert times == sorted(set(times)), f"block times not increasing: {times}"
        signed = precommitted(cluster, SKEWED, chain)
        assert len(signed) >= len(chain.blocks) - 2, (
            f"{SKEWED}, slow, precommitted only {sorted(signed)} of {start + 1}.."
        )
        address = cluster.nodes[SKEWED].plan.address
        own = [
            h for h in chain.blocks if chain.blocks[h]["header"]["proposer"] == address
        ]
        assert own, f"no block of {SKEWED} committed while its clock was slow"

        log.info("%s runs %d ms fast", SKEWED, drift_ms)
        cluster.shift_clock(SKEWED, drift_ms)
        start = cluster.tip()
        cluster.wait_for_height(cluster.members, start + SKEW_HEIGHTS, timeout=40)
        chain = cluster.fetch_chains(["v1"], from_height=start + 2)["v1"]
        turns = [h for h in chain.certificates if cluster.proposer(h) == SKEWED]
        assert turns, f"{SKEWED} had no turn to propose"
        for height in turns:
            assert chain.certificates[height].round >= 1, height
            assert chain.blocks[height]["header"]["proposer"] != address
        assert cluster.log_matches("v1", r"untimely block")
        signed = precommitted(cluster, SKEWED, chain)
        assert len(signed) >= len(chain.blocks) - 2, (
            f"{SKEWED}, fast, precommitted only {sorted(signed)} of {start + 2}.."
        )
        cluster.assert_consistent(cluster.members)


def test_c03_stopped_mid_round_and_wiped_signs_nothing_it_could_have_signed(
    tmp_path, request
):
    switches = {
        WIPED: {
            "crash_after_sign_height": CRASH_HEIGHT,
            "crash_after_sign_step": "prevote",
        }
    }
    with launched_cluster(tmp_path / "devnet", request, switches=switches) as cluster:
        assert cluster.proposer(CRASH_HEIGHT) != WIPED, "it would propose first"
        others = [v for v in cluster.validators if v != WIPED]

        log.info("%s exits right after signing its prevote of height %d",
                 WIPED, CRASH_HEIGHT)  # fmt: skip
        cluster.wait_for_crash(WIPED)
        assert cluster.log_matches(
            WIPED, rf"exiting right after signing height={CRASH_HEIGHT} round=0 "
        )
        crashed_at = cluster.tip(others)
        cluster.wipe(WIPED, consensus=True)
        cluster.start(WIPED, wait=False)

        log.info("the others keep committing; it syncs, then waits")
        cluster.wait_for_height(others, crashed_at + 3, timeout=30)
        cluster.wait_until_ready(WIPED, timeout=60)
        sign_from = logged_signing_height(cluster, WIPED)
        # Two above the tip its peers agree on, which is at least the height
        # below the one it crashed in: past anything it could have signed.
        assert sign_from > CRASH_HEIGHT
        cluster.wait_until_signing(WIPED, after=sign_from - 1, timeout=40)

        early = sorted(
            {
                m.height
                for m in cluster.signed_by(WIPED)
                if CRASH_HEIGHT <= m.height < sign_from
            }
        )
        assert not early, (
            f"{WIPED} signed at heights {early}: it crashed at {CRASH_HEIGHT} "
            f"and may sign only from {sign_from}"
        )
        cluster.assert_consistent(cluster.members)


def precommitted(cluster, name: str, chain) -> set[int]:
    """Heights of `chain` whose committed block `name` precommitted (in any
    round), as the consensus records show."""
    return {
        vote.height
        for vote in cluster.signed_by(name)
        if isinstance(vote, Vote)
        and vote.vote_type == PRECOMMIT
        and vote.height in chain.blocks
        and vote.block_hash.hex() == chain.hash_at(vote.height)
    }


def logged_signing_height(cluster, name: str) -> int:
    lines = cluster.log_matches(name, SIGN_FROM.pattern)
    assert lines, f"{name} did not log its signing height\n{cluster.log_tail(name)}"
    tip, sign_from = map(int, SIGN_FROM.search(lines[-1]).groups())
    log.info("wiped validator found tip=%d sign_from=%d", tip, sign_from)
    return sign_from


def watch_heights(cluster, seconds: float) -> int:
    """The highest height any node reports over `seconds`."""
    highest = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        highest = max(highest, cluster.tip())
        time.sleep(POLL_S)
    return highest


def watch_resumption(cluster, stalled_at: int) -> tuple[float, float]:
    """Seconds from now until every validator is connected to every other
    node again, and until some node commits above `stalled_at`."""
    start = time.monotonic()
    reconnected = resumed = None
    full_mesh = len(cluster.members) - 1
    while reconnected is None or resumed is None:
        elapsed = time.monotonic() - start
        assert elapsed < RESUME_WAIT_S, (
            f"after healing: peers back after {reconnected}, commits after "
            f"{resumed}\n{cluster.describe()}"
        )
        statuses = [cluster.status(n) for n in cluster.validators]
        if reconnected is None and all(
            s is not None and s["peers"] >= full_mesh for s in statuses
        ):
            reconnected = elapsed
        if resumed is None and any(
            s is not None and s["height"] > stalled_at for s in statuses
        ):
            resumed = elapsed
        time.sleep(POLL_S)
    log.info(
        "after healing peers_back_s=%.1f commits_resumed_s=%.1f", reconnected, resumed
    )
    return reconnected, resumed
