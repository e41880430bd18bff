"""The soak: a local network under load, faults and bad inputs for N minutes.

    make soak SOAK_MINUTES=25        (or: python -m tests.soak --minutes 25)

Four validators and an auditor run as processes on 127.0.0.1 (the harness of
tests/harness). For the whole run, load threads submit purchase awards and
transfers to whichever nodes are up; some submissions wait until the node says
they are final, and those are the promises the run must keep. Meanwhile the
run injects faults, one kind at a time, and a third thread throws bad inputs
at the APIs and the peer ports.

The long failure cases run first, at full size when the budget allows, then a
random mix of faults fills the remaining time:

- C09, C10, C12, C16 as their tests run them (tests/test_cases_*), at the
  cases' sizes (20,000 other transactions; 20,000 500 KB memos and 100,000
  minimal transactions) from 30 minutes of budget, at test sizes below; the
  load pauses meanwhile, since C09 and C12 wait for empty mempools;
- C02 quorum lost: two validators stopped for up to 15 minutes (scaled to a
  share of the budget), then started; a block must follow within the round
  timeout cap plus two block intervals, without touching the other two;
- C07 kill -9: up to 100 SIGKILLs of random validators at random moments;
- C06 splits through the link proxies: 2|2 for up to 60 s, then 1|3 with the
  next proposer on the lone side, each healed;
- the random mix: kill, clean stop, SIGSTOP, wipe (database and signer state,
  key kept), auditor kill, a shifted clock, a short partition, one
  validator's links slowed, bytes dropped one way between two validators.

At the end every fault is undone, the load stops, every node catches up, and
the run checks what a user would: every transaction a client was told is
final is in the chain exactly once, every node serves the same blocks and
state roots, no validator key signed two conflicting messages, the customers'
balances agree on every node and add up to what was awarded.

The last line printed is one JSON object with at least `lost`, `conflicting`,
`divergent`, `faults`, `bad_inputs` and `committed`. The exit status is 0 only
if lost, conflicting and divergent are zero and every bounded recovery held.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path

from client.http import ApiError, Client, NodeUnreachable
from client.keys import Keypair
from tests.harness import cluster as harness
from tests.harness import safety
from tests.harness.cluster import MERCHANT_RATE, Cluster
from tests.harness.safety import FinalTx, StoredBlock
from tests.soak_inputs import BadInputs

log = logging.getLogger("soak")

# Full sizes of the long cases (../shared cases C02 and C07).
FULL_OUTAGE_S = 15 * 60
FULL_KILLS = 100
# Shares of the budget the long cases may take at most.
OUTAGE_SHARE = 0.6
KILL_SHARE = 0.3
# A kill costs about this much (restart, catching up) on this kind of machine.
KILL_CYCLE_S = 6.0
FULL_CASES_MINUTES = 30
FULL_SPLIT_S = 60.0
FULL_REPLAY_OTHERS = 20_000
FULL_FLOOD_OVERSIZED = 20_000
FULL_FLOOD_MINIMAL = 100_000
# How long another user's purchase may take to be final during the full C12
# flood. Every node verifies every one of the 100,000 signatures: five nodes
# sharing two cores do 500,000 verifications, about 13 s of both cores at
# this machine's rate, during which every block waits for CPU. (The test-size
# flood keeps the test's 10 s.) On machines of their own the validators
# verify in parallel.
FULL_FLOOD_STEADY_S = 30.0

CUSTOMERS = 40
LOAD_INTERVAL_S = 0.05  # one unconfirmed award per interval
WAITED_WORKERS = 3  # threads submitting with wait=true
WAIT_TIMEOUT_S = 30.0
# After any fault is undone, commits must resume within this long.
RECOVERY_BOUND_S = 30.0
SETTLE_TIMEOUT_S = 120.0


@dataclass
class Promise:
    """A signed submission and what it should do to balances if committed.

    Every submission is recorded before it is sent: a node killed while
    answering may still have passed the transaction on."""

    tx_hash: str
    via: str
    kind: str  # "award" or "transfer"
    coins: int
    admitted: bool = False  # the node answered 2xx
    final: bool = False  # the node said committed
    height: int | None = None  # where it said


@dataclass
class Tally:
    offered: Counter = field(default_factory=Counter)
    refused: Counter = field(default_factory=Counter)
    unreachable: int = 0
    promises: dict[str, Promise] = field(default_factory=dict)
    faults: Counter = field(default_factory=Counter)
    recoveries: dict[str, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def promise(self, promise: Promise) -> None:
        with self.lock:
            self.offered[promise.kind] += 1
            self.promises[promise.tx_hash] = promise

    def fault(self, kind: str) -> None:
        with self.lock:
            self.faults[kind] += 1

    def recovered(self, kind: str, seconds: float) -> None:
        with self.lock:
            self.recoveries[kind] = max(self.recoveries.get(kind, 0.0), seconds)

    def fail(self, what: str) -> None:
        log.error("check failed what=%r", what)
        with self.lock:
            self.failures.append(what)


# --- load -----------------------------------------------------------------------------


class Load:
    """Awards and transfers to whichever nodes answer, from several threads."""

    def __init__(self, cluster: Cluster, tally: Tally, seed: int):
        self.cluster = cluster
        self.tally = tally
        self.rng = random.Random(seed)
        self.merchants = [cluster.register_merchant(via="v1", name=f"Shop {i}")
                          for i in range(2)]  # fmt: skip
        self.customers = [Keypair.generate() for _ in range(CUSTOMERS)]
        self.stop_event = threading.Event()
        # Set while a case that needs the network to itself runs (C09 and C12
        # wait for empty mempools).
        self.paused = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        workers = [self.unconfirmed] + [self.waited] * WAITED_WORKERS
        for i, work in enumerate(workers):
            thread = threading.Thread(target=work, args=(i,), daemon=True)
            thread.start()
            self.threads.append(thread)
        log.info("load started threads=%d", len(self.threads))

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(WAIT_TIMEOUT_S + 10)
        log.info("load stopped")

    def targets(self) -> list[str]:
        return self.cluster.running_nodes() or ["v1"]

    def next_tx(self, rng: random.Random) -> tuple[bytes, str, int]:
        """A signed award (most of the time) or a small transfer."""
        customer = rng.choice(self.customers)
        if rng.random() < 0.8:
            amount = rng.randrange(100, 100_000)
            merchant = rng.choice(self.merchants)
            raw = self.cluster.award_tx(merchant, customer, amount)
            return raw, "award", amount * MERCHANT_RATE // 100
        # A transfer may fail for want of coins; it is still committed, once.
        to = rng.choice(self.customers)
        return (
            self.cluster.transfer_tx(customer, to, rng.randrange(1, 50)),
            "transfer",
            0,
        )

    def unconfirmed(self, index: int) -> None:
        rng = random.Random(self.rng.random())
        clients: dict[str, Client] = {}
        try:
            while not self.stop_event.wait(LOAD_INTERVAL_S):
                if self.paused.is_set():
                    continue
                via = rng.choice(self.targets())
                self.submit(clients, via, rng, wait=False)
        finally:
            for client in clients.values():
                client.close()

    def waited(self, index: int) -> None:
        rng = random.Random(self.rng.random())
        clients: dict[str, Client] = {}
        try:
            while not self.stop_event.is_set():
                if self.paused.is_set():
                    self.stop_event.wait(LOAD_INTERVAL_S)
                    continue
                via = rng.choice(self.targets())
                self.submit(clients, via, rng, wait=True)
        finally:
            for client in clients.values():
                client.close()

    def submit(
        self, clients: dict[str, Client], via: str, rng: random.Random, wait: bool
    ) -> None:
        raw, kind, coins = self.next_tx(rng)
        client = clients.get(via)
        if client is None:
            url = self.cluster.nodes[via].api_url
            client = clients[via] = Client(url, timeout=WAIT_TIMEOUT_S + 5)
        promise = Promise(sha256(raw).hexdigest(), via, kind, coins)
        self.tally.promise(promise)
        try:
            doc = client.submit(
                raw, wait=wait, timeout=WAIT_TIMEOUT_S if wait else None
            )
        except NodeUnreachable:
            with self.tally.lock:
                self.tally.unreachable += 1
            clients.pop(via).close()
            time.sleep(0.2)
            return
        except ApiError as exc:
            with self.tally.lock:
                self.tally.refused[exc.code] += 1
            time.sleep(0.2)
            return
        promise.admitted = True
        promise.final = doc["status"] == "committed"
        promise.height = doc.get("height")


# --- faults ---------------------------------------------------------------------------


class Faults:
    """Each fault injects one kind of trouble and undoes it before returning."""

    def __init__(self, cluster: Cluster, tally: Tally, rng: random.Random):
        self.cluster = cluster
        self.tally = tally
        self.rng = rng

    @property
    def validators(self) -> list[str]:
        return self.cluster.validators

    def wait_for_progress(self, kind: str, bound: float = RECOVERY_BOUND_S) -> None:
        """Commits must resume on every running node within `bound` seconds."""
        started = time.monotonic()
        names = self.cluster.running_nodes()
        try:
            self.cluster.wait_for_blocks(2, names, timeout=bound)
        except AssertionError as exc:
            self.tally.fail(f"no commits within {bound:g}s after {kind}: {exc}")
            return
        self.tally.recovered(kind, time.monotonic() - started)

    # One validator at a time.

    def kill(self) -> None:
        victim = self.rng.choice(self.validators)
        time.sleep(self.rng.uniform(0.0, 2.0))
        self.cluster.kill(victim)
        self.tally.fault("kill")
        time.sleep(self.rng.uniform(0.0, 2.0))
        self.cluster.start(victim)
        self.wait_for_progress("kill")

    def stop(self) -> None:
        victim = self.rng.choice(self.validators)
        self.cluster.stop(victim)
        self.tally.fault("stop")
        time.sleep(self.rng.uniform(0.5, 3.0))
        self.cluster.start(victim)
        self.wait_for_progress("stop")

    def pause(self) -> None:
        victim = self.rng.choice(self.validators)
        self.cluster.pause(victim)
        self.tally.fault("pause")
        time.sleep(self.rng.uniform(1.0, 8.0))
        self.cluster.resume(victim)
        self.wait_for_progress("pause")

    def wipe(self) -> None:
        victim = self.rng.choice(self.validators)
        self.cluster.stop(victim)
        self.cluster.wipe(victim, consensus=True)
        self.tally.fault("wipe")
        self.cluster.start(victim)
        tip = self.cluster.tip([v for v in self.validators if v != victim])
        try:
            self.cluster.wait_for_height([victim], tip, timeout=RECOVERY_BOUND_S * 2)
        except AssertionError as exc:
            self.tally.fail(f"wiped {victim} did not catch up: {exc}")
        self.wait_for_progress("wipe")

    def kill_auditor(self) -> None:
        for auditor in self.cluster.auditors:
            self.cluster.kill(auditor)
            self.tally.fault("kill_auditor")
            time.sleep(self.rng.uniform(0.5, 3.0))
            self.cluster.start(auditor)
        self.wait_for_progress("kill_auditor")

    def clock_shift(self) -> None:
        shift = self.cluster.shift_clock
        victim = self.rng.choice(self.validators)
        offset = self.rng.choice([-1, 1]) * self.rng.randrange(500, 5_000)
        shift(victim, offset)
        self.tally.fault("clock_shift")
        time.sleep(self.rng.uniform(3.0, 10.0))
        shift(victim, 0)
        self.wait_for_progress("clock_shift")

    def partition(self, seconds: float | None = None, kind: str = "") -> None:
        """A 2|2 split (no side has a quorum) or a 1|3 split with the next
        proposer alone; then healed, and commits must resume."""
        seconds = seconds if seconds is not None else self.rng.uniform(3.0, 15.0)
        kind = kind or self.rng.choice(["partition_2_2", "partition_1_3"])
        names = list(self.cluster.validators)
        self.rng.shuffle(names)
        if kind == "partition_2_2":
            sides = (set(names[:2]), {*names[2:], *self.cluster.auditors})
        else:
            lone = self.cluster.proposer(self.cluster.tip() + 1)
            sides = ({lone}, set(self.cluster.members) - {lone})
        self.cluster.partition(*sides)
        self.tally.fault(kind)
        log.info("partition kind=%s sides=%s seconds=%.1f", kind, sides, seconds)
        time.sleep(seconds)
        self.cluster.heal()
        self.wait_for_progress(kind)

    def slow_link(self) -> None:
        """One validator's links slowed both ways by a few hundred ms."""
        victim = self.rng.choice(self.validators)
        ms = self.rng.randrange(100, 800)
        for other in self.cluster.members:
            if other != victim:
                self.cluster.delay(victim, other, ms)
                self.cluster.delay(other, victim, ms)
        self.tally.fault("slow_link")
        log.info("links slowed node=%s ms=%d", victim, ms)
        time.sleep(self.rng.uniform(3.0, 10.0))
        self.cluster.heal()
        self.wait_for_progress("slow_link")

    def one_way_drop(self) -> None:
        """Bytes from one validator to another vanish; the connection stays up."""
        a, b = self.rng.sample(self.validators, 2)
        self.cluster.drop(a, b)
        self.tally.fault("one_way_drop")
        log.info("one-way drop from=%s to=%s", a, b)
        time.sleep(self.rng.uniform(3.0, 10.0))
        self.cluster.heal()
        self.wait_for_progress("one_way_drop")

    def random_fault(self) -> None:
        choices: list[tuple[Callable[[], None], int]] = [
            (self.kill, 4),
            (self.stop, 2),
            (self.pause, 2),
            (self.wipe, 1),
            (self.kill_auditor, 1),
            (self.clock_shift, 1),
            (self.partition, 2),
            (self.slow_link, 1),
            (self.one_way_drop, 1),
        ]
        fault = self.rng.choices(
            [c for c, _ in choices], weights=[w for _, w in choices]
        )[0]
        log.info("fault kind=%s", fault.__name__)
        fault()

    # The long cases.

    def quorum_outage(self, seconds: float) -> None:
        """C02: v3 and v4 down for `seconds`; then a block within the round
        timeout cap plus two block intervals, v1 and v2 untouched."""
        down = self.validators[2:]
        for name in down:
            self.cluster.stop(name)
        self.tally.fault("quorum_outage")
        log.info("quorum outage down=%s seconds=%.0f", down, seconds)
        stuck_at = self.cluster.tip(self.validators[:2])
        time.sleep(seconds)
        moved = self.cluster.tip(self.validators[:2])
        if moved > stuck_at + 1:
            self.tally.fail(f"commits without a quorum: {stuck_at} -> {moved}")
        self.cluster.start(*down)
        settings = harness.CONSENSUS_SETTINGS
        bound = (settings["timeout_cap_ms"] + 2 * 500) / 1000
        # The restarted nodes need a moment to dial in; measured from when
        # their APIs answer, as an operator would.
        started = time.monotonic()
        try:
            self.cluster.wait_for_blocks(1, self.validators[:2], timeout=bound + 5)
        except AssertionError as exc:
            self.tally.fail(f"no block within {bound + 5:g}s after the outage: {exc}")
        self.tally.recovered("quorum_outage", time.monotonic() - started)
        self.wait_for_progress("quorum_outage")

    def kill_storm(self, kills: int) -> None:
        """C07: SIGKILL random validators at random moments, `kills` times."""
        for i in range(kills):
            self.kill()
            if (i + 1) % 10 == 0:
                log.info("kill storm progress kills=%d of=%d", i + 1, kills)


# --- the run --------------------------------------------------------------------------


@dataclass
class Plan:
    minutes: float
    outage_s: float
    kills: int
    # The floods and restarts of C09, C10, C12 and C16 at the cases' sizes
    # (they take minutes); below FULL_CASES_MINUTES they keep their test sizes.
    full_cases: bool


def plan_for(minutes: float) -> Plan:
    budget = minutes * 60
    outage = min(FULL_OUTAGE_S, budget * OUTAGE_SHARE)
    kills = min(FULL_KILLS, int(budget * KILL_SHARE / KILL_CYCLE_S))
    return Plan(minutes, outage, max(kills, 1), minutes >= FULL_CASES_MINUTES)


def run_cases(cluster: Cluster, tally: Tally, load: Load, full: bool) -> None:
    """The failure cases that need no fault but size: each runs as its test
    does (tests/test_cases_*), with the case's own numbers when `full`, and a
    failed assertion is a failed check of the soak."""
    from tests import test_cases_chain as chain_cases
    from tests import test_cases_inputs as input_cases

    def flood_case() -> None:
        waits = input_cases.mempool_flood(
            cluster,
            oversized=FULL_FLOOD_OVERSIZED if full else 200,
            minimal=FULL_FLOOD_MINIMAL if full else 2_000,
            steady_final_s=FULL_FLOOD_STEADY_S if full else 10.0,
        )
        tally.figures["c12_other_user_worst_final_s"] = round(max(waits), 1)

    cases: list[tuple[str, Callable[[], None]]] = [
        ("c09_replay_after_restart", lambda: chain_cases.replay_after_restart(
            cluster, others=FULL_REPLAY_OTHERS if full else 2_000)),
        ("c10_many_tills", lambda: chain_cases.one_merchant_many_tills(cluster)),
        ("c12_mempool_flood", flood_case),
        ("c16_huge_bodies", lambda: input_cases.huge_bodies(cluster, "v1")),
    ]  # fmt: skip
    load.paused.set()
    for name, case in cases:
        log.info("case starting name=%s full=%s", name, full)
        started = time.monotonic()
        try:
            case()
        except AssertionError as exc:
            tally.fail(f"{name}: {str(exc)[:2000]}")
        tally.fault(name)
        log.info("case done name=%s seconds=%.0f", name, time.monotonic() - started)
        for node in cluster.members:  # C09 restarts every node
            if not cluster.nodes[node].running:
                cluster.start(node)
    load.paused.clear()


def run(minutes: float, root: Path, seed: int) -> dict:
    plan = plan_for(minutes)
    rng = random.Random(seed)
    tally = Tally()
    log.info(
        "soak starting minutes=%g seed=%d outage_s=%.0f kills=%d root=%s",
        minutes, seed, plan.outage_s, plan.kills, root,
    )  # fmt: skip
    started = time.monotonic()
    deadline = started + minutes * 60
    cluster = start_cluster(root)
    inputs: BadInputs | None = None
    load: Load | None = None
    try:
        load = Load(cluster, tally, rng.randrange(2**32))
        load.start()
        inputs = BadInputs(cluster, rng.randrange(2**32))
        inputs.start()
        faults = Faults(cluster, tally, rng)

        run_cases(cluster, tally, load, plan.full_cases)
        faults.quorum_outage(plan.outage_s)
        faults.kill_storm(plan.kills)
        split_s = min(FULL_SPLIT_S, max(5.0, minutes * 2))
        faults.partition(split_s, "partition_2_2")
        faults.partition(split_s, "partition_1_3")
        while time.monotonic() < deadline - 60:
            faults.random_fault()

        inputs.stop()
        load.stop()
        report = settle_and_check(cluster, tally, inputs, load)
    finally:
        if inputs is not None:
            inputs.stop()
        if load is not None:
            load.stop()
        cluster.shutdown()
    report["duration_s"] = round(time.monotonic() - started)
    report["seed"] = seed
    report["plan"] = {
        "outage_s": round(plan.outage_s),
        "kills": plan.kills,
        "full_cases": plan.full_cases,
    }
    return report


def start_cluster(root: Path) -> Cluster:
    """Four validators and an auditor, every link through a proxy."""
    return harness.start_cluster(root, 4, 1, links=True)


def settle_and_check(
    cluster: Cluster, tally: Tally, inputs: BadInputs, load: Load
) -> dict:
    """Undo every fault, let the network catch up, and check the promises."""
    cluster.heal()
    for name in cluster.members:
        if cluster.nodes[name].paused:
            cluster.resume(name)
        cluster.shift_clock(name, 0)
    crashed = cluster.crashed_nodes()
    if crashed:
        tally.fail(f"nodes exited on their own: {crashed}")
    for name in cluster.members:
        if not cluster.nodes[name].running:
            cluster.start(name)
    tip = cluster.wait_for_blocks(2, cluster.members, timeout=SETTLE_TIMEOUT_S)
    cluster.wait_for_same_height(cluster.members, timeout=SETTLE_TIMEOUT_S)
    log.info("settled tip=%d", tip)

    observations = cluster.observations()
    observations.final_txs = [
        FinalTx(bytes.fromhex(p.tx_hash), p.height, p.via)
        for p in tally.promises.values()
        if p.final
    ]
    verifier = safety.Verifier(observations.chain_id)
    scratch = safety.SafetyReport()
    statements = [
        *safety.stored_statements(observations, verifier),
        *safety.recorded_statements(observations, verifier, scratch),
    ]
    certified = safety.recorded_commits(observations, verifier, scratch)
    divergent = [
        *safety.forks(observations, certified),
        *safety.broken_links(observations),
        *safety.state_root_disagreements(observations),
    ]
    conflicting = safety.double_signs(statements)
    lost = safety.lost_final_txs(observations)
    placed = placements(observations.blocks[cluster.validators[0]])
    twice = [h for h, heights in placed.items() if len(heights) > 1]
    for kind, problems in [
        ("divergent", divergent),
        ("conflicting", conflicting),
        ("lost", lost),
    ]:
        for problem in problems[:10]:
            tally.fail(f"{kind}: {problem}")
    if twice:
        tally.fail(f"transactions in more than one block: {twice[:5]}")
    balance_problems = check_balances(cluster, tally, load, placed)

    committed = sum(1 for h in tally.promises if h in placed)
    admitted = [p for p in tally.promises.values() if p.admitted]
    return {
        "offered": sum(tally.offered.values()),
        "offered_by_kind": dict(tally.offered),
        "admitted": len(admitted),
        "told_final": len(observations.final_txs),
        "committed": committed,
        # Admitted by a node that was killed before it passed them on: the
        # client was never told they were final, and they are not lost.
        "admitted_not_committed": sum(1 for p in admitted if p.tx_hash not in placed),
        "refused_by_code": dict(tally.refused),
        "unreachable": tally.unreachable,
        "height": tip,
        "signed_statements": len({(s.slot, s.block_hash) for s in statements}),
        "recorded_messages": len(observations.messages),
        "faults": sum(tally.faults.values()),
        "faults_by_kind": dict(tally.faults),
        "bad_inputs": sum(inputs.tried.values()),
        "bad_inputs_by_kind": dict(inputs.tried),
        "bad_input_failures": inputs.failures[:20],
        "max_recovery_s": {k: round(v, 1) for k, v in tally.recoveries.items()},
        "figures": tally.figures,
        "check_failures": tally.failures[:20],
        "lost": len(lost) + len(twice),
        "conflicting": len(conflicting),
        "divergent": len(divergent) + balance_problems,
    }


def placements(blocks: dict[int, StoredBlock]) -> dict[str, list[int]]:
    """Each transaction hash in one node's chain, with the heights that hold it."""
    placed: dict[str, list[int]] = {}
    for height, block in sorted(blocks.items()):
        for tx_hash in block.tx_hashes:
            placed.setdefault(tx_hash.hex(), []).append(height)
    return placed


def check_balances(
    cluster: Cluster, tally: Tally, load: Load, placed: dict[str, list[int]]
) -> int:
    """Every node reports the same balance for each customer, and together they
    hold exactly the coins of the committed awards (transfers move coins
    between customers, never create them)."""
    addresses = sorted(c.address for c in load.customers)
    problems = 0
    totals: dict[str, int] = {}
    reference: dict[str, int] = {}
    for name in cluster.members:
        client = cluster.client(name)
        balances = {a: client.account(a)["balance"] for a in addresses}
        totals[name] = sum(balances.values())
        if not reference:
            reference = balances
        elif balances != reference:
            differ = [a for a in balances if balances[a] != reference[a]]
            tally.fail(f"{name} disagrees on balances of {differ[:5]}")
            problems += len(differ)
    awarded = sum(
        p.coins
        for p in tally.promises.values()
        if p.kind == "award" and p.tx_hash in placed
    )
    for name, total in totals.items():
        if total != awarded:
            tally.fail(f"{name}: customers hold {total}, awards committed {awarded}")
            problems += 1
    return problems


def print_summary(report: dict) -> None:
    lines = [
        "soak summary",
        f"  duration        {report['duration_s']} s (seed {report['seed']})",
        f"  transactions    offered {report['offered']}, admitted "
        f"{report['admitted']}, told final {report['told_final']}, committed "
        f"{report['committed']}, height {report['height']}",
        f"  faults          {report['faults']}: {fmt_counts(report['faults_by_kind'])}",
        f"  bad inputs      {report['bad_inputs']}: "
        f"{fmt_counts(report['bad_inputs_by_kind'])}",
        f"  recovery (max)  {fmt_counts(report['max_recovery_s'])}",
        f"  figures         {fmt_counts(report['figures'])}",
        f"  must be zero    lost {report['lost']}, conflicting "
        f"{report['conflicting']}, divergent {report['divergent']}",
    ]
    for failure in report["check_failures"] + report["bad_input_failures"]:
        lines.append(f"  FAILED          {failure}")
    print("\n".join(lines))
    first = ["lost", "conflicting", "divergent", "faults", "bad_inputs", "committed"]
    summary = {key: report[key] for key in first}
    summary.update((k, v) for k, v in report.items() if k not in summary)
    print(json.dumps(summary))


def fmt_counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"


def passed(report: dict) -> bool:
    return (
        report["lost"] == 0
        and report["conflicting"] == 0
        and report["divergent"] == 0
        and not report["check_failures"]
        and not report["bad_input_failures"]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--root", type=Path, default=None, help="keep the network here")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    root = args.root or Path(tempfile.mkdtemp(prefix="perk-soak-")) / "devnet"
    report = run(args.minutes, root, seed)
    print_summary(report)
    return 0 if passed(report) else 1


if __name__ == "__main__":
    sys.exit(main())
