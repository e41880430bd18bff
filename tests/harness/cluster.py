"""A cluster of real node processes on 127.0.0.1, driven like an operator would.

`Cluster` lays out a devnet folder with node.devnet (keys, certificates,
genesis, an admin wallet, one home per node with every validator as a peer),
then writes shorter consensus timeouts into each config so that stalls and
recoveries take seconds. Every node is a `perk node run` process started by
node.devnet.start_node_process, its output in HOME/node.log inside the test's
temp folder; devnet.json records the pids, so `perk devnet status --home DIR`
shows a running cluster while a test is paused in a debugger.

A node can be started, stopped (SIGTERM, which must exit 0), killed
(SIGKILL), paused (SIGSTOP) and resumed (SIGCONT), and wiped (its database
and optionally its consensus state removed, its key kept). Waits are bounded
and, when they fail, say where every node stands and show the tail of the
logs of the nodes that were waited for.

Faults beyond processes, for the fault suite and longer runs:

- links (opt-in, `Cluster(..., links=True)`): every dial between nodes goes
  through a TCP proxy of harness.links, so a test can `partition(*groups)`,
  `cut(a, b)`, `delay(a, b, ms)`, `drop(a, b)` and `heal()`;
- clocks: `shift_clock(name, offset_ms)` moves one node's clock away from
  the others' (a per-node offset file on top of the devnet's shared clock);
- test switches inside the node (node.testing, `[testing]` in config.toml):
  `set_switches(name, ...)` takes effect at the node's next start, e.g.
  `crash_after_sign(name, height, step)` then `wait_for_crash(name)`, or
  `miss_proposal_height`/`_round`; every node records the signed consensus
  messages it receives and sends.

Safety: the cluster remembers every transaction a client was told is final
(`submit`, `submit_concurrently`, `wait_for_tx` and the helpers built on
them). `check_safety()` gathers every running node's blocks and every node's
recorded messages and runs harness.safety over them: no height with two
committed blocks, no key signing two different blocks for one step, equal
hashes and state roots, every final transaction in the chain exactly once.

`launched_cluster` is the context manager behind the tests' fixtures: it stops
every process it started whatever happens, prints the tail of every log when
the test failed, and once the test body passed runs `check_safety()`, which
fails the test on any violation.

A soak or scenario runner drives the same API:

    cluster = Cluster(root, validators=4, auditors=1, links=True)
    cluster.create()
    cluster.start()
    cluster.partition({"v1", "v2"}, {"v3", "v4", "a1"})
    ...
    cluster.heal()
    report = cluster.check_safety()
    cluster.shutdown()
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from client import builders
from client.http import ApiError, AsyncClient, Client, NodeUnreachable, NotFound
from client.keys import Keypair
from client.keystore import load_keystore
from consensus.messages import (
    MalformedMessage,
    Proposal,
    Vote,
    decode_certificate,
    decode_proposal,
    decode_vote,
)
from node import devnet
from node.clock import write_clock_offset
from node.config import (
    CONFIG_FILE,
    NODE_CERT_FILE,
    ConfigError,
    PeerEntry,
    load_config,
)
from node.devnet import NodePlan
from node.testing import CRASH_EXIT_CODE, RECORD_FILE, read_consensus_record
from state.address import parse_address
from state.genesis import Genesis
from tests.harness.chain import (
    Chains,
    check_consistent,
    check_no_conflicting_signatures,
    fetch_chains,
    fetch_stored_blocks,
    heights_signed_by,
)
from tests.harness.links import LinkProxies
from tests.harness.safety import (
    FinalTx,
    Observations,
    RecordedMessage,
    SafetyReport,
    check_safety,
)

log = logging.getLogger("tests.network")
log.setLevel(logging.INFO)

CHAIN_ID = "perk-net-1"
# Written over the devnet's consensus settings (block_interval_ms stays the
# devnet's). An idle chain makes a block a second; a round without a proposer
# costs about a second, and after a long stall no timeout exceeds three
# seconds, so recovery is quick.
CONSENSUS_SETTINGS = {
    "heartbeat_ms": 1000,
    "timeout_propose_ms": 1000,
    "timeout_prevote_ms": 500,
    "timeout_precommit_ms": 500,
    "timeout_delta_ms": 250,
    "timeout_cap_ms": 3000,
}
READY_TIMEOUT_S = 30.0
START_ATTEMPTS = 3
STOP_TIMEOUT_S = 15.0
KILL_TIMEOUT_S = 5.0
POLL_S = 0.2
STATUS_TIMEOUT_S = 2.0
SUBMIT_WAIT_S = 20.0
LOG_TAIL_LINES = 25
TX_TTL_S = 600
# Each node's own clock offset file, beside its config (node.clock).
CLOCK_OFFSET_FILE = "clock-offset.json"
CRASH_TIMEOUT_S = 30.0
MERCHANT_RATE = 10  # coins per 100 minor units of spend
MERCHANT_DAILY_CAP = 10**12


@dataclass
class NodeProcess:
    """One node of the cluster: its plan (key, ports, home) and its process."""

    plan: NodePlan
    process: subprocess.Popen | None = None
    paused: bool = False
    # Exits the cluster caused (stop, kill); any other exit is a crash.
    expected_exit: bool = False

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def kind(self) -> str:
        return self.plan.kind

    @property
    def home(self) -> Path:
        return self.plan.home

    @property
    def api_url(self) -> str:
        return self.plan.api_url

    @property
    def p2p_port(self) -> int:
        return self.plan.p2p_port

    @property
    def key(self) -> Keypair:
        return Keypair.from_seed(self.plan.seed)

    @property
    def public_key(self) -> bytes:
        return self.key.public_key

    @property
    def log_path(self) -> Path:
        return self.home / devnet.NODE_LOG

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def state(self) -> str:
        if self.process is None:
            return "never started"
        code = self.process.poll()
        if code is None:
            return "paused" if self.paused else "running"
        return f"exited({code})" if not self.expected_exit else f"stopped({code})"


class Cluster:
    """Validators v1..vN and auditors a1..aM of one chain, as processes."""

    def __init__(
        self,
        root: Path,
        validators: int = devnet.DEFAULT_VALIDATORS,
        auditors: int = devnet.DEFAULT_AUDITORS,
        chain_id: str = CHAIN_ID,
        links: bool = False,
    ) -> None:
        self.root = Path(root).resolve()
        self.validator_count = validators
        self.auditor_count = auditors
        self.chain_id = chain_id
        self.nodes: dict[str, NodeProcess] = {}
        # Nodes that are not part of the chain's layout (see add_outsider).
        self.outsiders: set[str] = set()
        self.genesis: Genesis | None = None
        self.admin: Keypair | None = None
        self._doc: dict = {}
        self._clients: dict[str, Client] = {}
        self._counter = itertools.count(1)
        self._exit_hook_registered = False
        # Every dial between nodes goes through a proxy (harness.links).
        self.links: LinkProxies | None = LinkProxies() if links else None
        # Transactions a client was told are final (check_safety).
        self.final_txs: list[FinalTx] = []

    # --- layout ---------------------------------------------------------------------

    def create(self) -> None:
        """Lay out the devnet folder: admin wallet, genesis, one home per node."""
        self.root.mkdir(parents=True, exist_ok=True)
        plans = devnet.plan_nodes(self.root, self.validator_count, self.auditor_count)
        wallet = devnet.create_admin_wallet(self.root)
        self.genesis = devnet.build_genesis(self.chain_id, plans, wallet)
        self.genesis.write(self.root / devnet.GENESIS_FILE)
        for plan in plans:
            devnet.write_node_home(plan, plans, self.genesis)
            self.nodes[plan.name] = NodeProcess(plan)
        for plan in plans:
            self.tune_config(plan.home)
        self.admin = self.load_admin_wallet()
        self._doc = {
            "chain_id": self.chain_id,
            "genesis_hash": self.genesis.hash.hex(),
            "nodes": [devnet.node_record(plan) for plan in plans],
        }
        devnet.write_devnet(self.root, self._doc)
        log.info(
            "cluster created root=%s validators=%s auditors=%s links=%s",
            self.root,
            ",".join(self.validators),
            ",".join(self.auditors) or "-",
            "proxied" if self.links is not None else "direct",
        )

    def tune_config(self, home: Path) -> None:
        """Short timeouts, the consensus record, a clock offset file of its
        own, and with links every dialled peer reached through its proxy."""
        config = load_config(home)
        for setting, value in CONSENSUS_SETTINGS.items():
            setattr(config.consensus, setting, value)
        config.testing.record_consensus = True
        config.testing.clock_offset_file = CLOCK_OFFSET_FILE
        if self.links is not None:
            self.route_through_links(config)
        config.save()

    def route_through_links(self, config) -> None:
        by_address = {node.plan.address: node for node in self.nodes.values()}
        for peer in config.p2p.peers:
            target = by_address.get(peer.key)
            if not peer.port or target is None:
                continue  # a peer this node never dials
            peer.port = self.links.add(config.node.name, target.name, target.p2p_port)

    def load_admin_wallet(self) -> Keypair:
        password = (self.root / devnet.ADMIN_PASSWORD_FILE).read_text().rstrip("\r\n")
        path = self.root / devnet.WALLET_DIR / f"{devnet.ADMIN_WALLET}.json"
        return load_keystore(path, password)

    def add_outsider(self, name: str, kind: str = "auditor") -> NodeProcess:
        """A node with a fresh key that no validator knows, configured with
        every validator as a peer (address and certificate), on this chain."""
        api_port, p2p_port = devnet.free_ports(2)
        plan = NodePlan(
            name, kind, os.urandom(32), api_port, p2p_port, self.root / name
        )
        validator_plans = [self.nodes[n].plan for n in self.validators]
        devnet.write_node_home(plan, [*validator_plans, plan], self.genesis)
        node = self.nodes[name] = NodeProcess(plan)
        self.tune_config(plan.home)
        self.outsiders.add(name)
        self._doc["nodes"].append(devnet.node_record(plan))
        devnet.write_devnet(self.root, self._doc)
        log.info("outsider created name=%s address=%s", name, plan.address)
        return node

    def pin_certificate(self, name: str, other: str) -> None:
        """Add `other` to `name`'s peer list (its certificate trusted, never
        dialled) without making it an observer; takes effect at the next start."""
        config = load_config(self.nodes[name].home)
        config.p2p.peers.append(
            PeerEntry(
                key=self.nodes[other].plan.address,
                host="",
                port=0,
                cert=f"../{other}/{NODE_CERT_FILE}",
            )
        )
        config.save()
        log.info("certificate pinned node=%s peer=%s", name, other)

    @property
    def validators(self) -> list[str]:
        return self.of_kind("validator")

    @property
    def auditors(self) -> list[str]:
        return self.of_kind("auditor")

    def of_kind(self, kind: str) -> list[str]:
        return [
            n.name
            for n in self.nodes.values()
            if n.kind == kind and n.name not in self.outsiders
        ]

    @property
    def members(self) -> list[str]:
        """The nodes of the chain as genesis and the devnet layout made them."""
        return [*self.validators, *self.auditors]

    def crashed_nodes(self) -> list[str]:
        """Nodes whose process exited without the cluster stopping it."""
        return [
            n.name
            for n in self.nodes.values()
            if n.process is not None and not n.running and not n.expected_exit
        ]

    def port_was_taken(self) -> bool:
        """A node could not listen on its planned port."""
        return any(self.log_matches(name, "cannot listen") for name in self.nodes)

    def running_nodes(self) -> list[str]:
        return [n.name for n in self.nodes.values() if n.running and not n.paused]

    # --- processes ------------------------------------------------------------------

    def start(self, *names: str, wait: bool = True) -> None:
        """Start the nodes' processes; with `wait`, until their APIs answer."""
        for name in names or self.members:
            node = self.nodes[name]
            assert not node.running, f"{name} is already running"
            self.forget_client(name)
            node.process = devnet.start_node_process(node.home)
            node.paused = False
            node.expected_exit = False
            self.record_pid(node)
            log.info("node started name=%s pid=%d", name, node.process.pid)
        self.register_exit_hook()
        if wait:
            self.wait_until_ready(*(names or self.members))

    def wait_until_ready(self, *names: str, timeout: float = READY_TIMEOUT_S) -> None:
        self.wait_until(
            lambda: all(self.status(n) is not None for n in names),
            timeout,
            f"the APIs of {', '.join(names)} to answer",
            names,
        )

    def stop(self, name: str, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, and the node must exit 0 within `timeout` (a clean stop)."""
        node = self.nodes[name]
        assert node.running, f"{name} is not running ({node.state})"
        node.expected_exit = True
        self.forget_client(name)
        if node.paused:
            self.resume(name)
        node.process.terminate()
        try:
            code = node.process.wait(timeout)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
            raise AssertionError(
                f"{name} did not stop within {timeout:g}s of SIGTERM; "
                f"{self.log_excerpt(name)}"
            ) from None
        self.record_pid(node)
        log.info("node stopped name=%s code=%d", name, code)
        assert code == 0, (
            f"{name} exited with code {code} after SIGTERM; {self.log_excerpt(name)}"
        )

    def kill(self, name: str) -> None:
        """SIGKILL: the node gets no chance to finish anything."""
        node = self.nodes[name]
        assert node.running, f"{name} is not running ({node.state})"
        node.expected_exit = True
        self.forget_client(name)
        node.process.kill()
        node.process.wait(KILL_TIMEOUT_S)
        node.paused = False
        self.record_pid(node)
        log.info("node killed name=%s", name)

    def pause(self, name: str) -> None:
        """SIGSTOP: the process hangs with its connections open."""
        node = self.nodes[name]
        assert node.running, f"{name} is not running ({node.state})"
        os.kill(node.process.pid, signal.SIGSTOP)
        node.paused = True
        log.info("node paused name=%s", name)

    def resume(self, name: str) -> None:
        node = self.nodes[name]
        os.kill(node.process.pid, signal.SIGCONT)
        node.paused = False
        log.info("node resumed name=%s", name)

    def wipe(self, name: str, consensus: bool = True) -> None:
        """Delete the node's database (and its signer state and write-ahead log
        with `consensus`); its key, certificate, config and log stay."""
        node = self.nodes[name]
        assert not node.running, f"stop {name} before wiping it"
        config = load_config(node.home)
        shutil.rmtree(config.data_dir, ignore_errors=True)
        if consensus:
            shutil.rmtree(config.consensus_dir, ignore_errors=True)
        log.info("node wiped name=%s consensus=%s", name, consensus)

    def shutdown(self) -> None:
        """Stop every process this cluster started: SIGTERM, then SIGKILL."""
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        live = [n for n in self.nodes.values() if n.running]
        for node in live:
            node.expected_exit = True
            with contextlib.suppress(ProcessLookupError):
                if node.paused:
                    os.kill(node.process.pid, signal.SIGCONT)
                node.process.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for node in live:
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("node did not stop, killing it name=%s", node.name)
                node.process.kill()
                node.process.wait()
            self.record_pid(node)
        if self.links is not None:
            self.links.stop()
        if self._exit_hook_registered:
            atexit.unregister(self.kill_all)
            self._exit_hook_registered = False

    def wait_for_crash(self, name: str, timeout: float = CRASH_TIMEOUT_S) -> None:
        """Until the node exits by its crash switch (node.testing); the
        switch is then turned off, so the next start runs normally."""
        node = self.nodes[name]
        assert node.process is not None, f"{name} was never started"
        try:
            code = node.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{name} did not crash within {timeout:g}s\n{self.describe()}\n"
                f"{self.log_excerpt(name)}"
            ) from None
        node.expected_exit = True
        node.paused = False
        self.forget_client(name)
        self.record_pid(node)
        assert code == CRASH_EXIT_CODE, (
            f"{name} exited with code {code}, not by its crash switch; "
            f"{self.log_excerpt(name)}"
        )
        self.set_switches(name, crash_after_sign_height=0)
        log.info("node crashed on purpose name=%s", name)

    def kill_all(self) -> None:
        """Last resort at interpreter exit: no node outlives the test run."""
        for node in self.nodes.values():
            if node.running:
                node.process.kill()

    def register_exit_hook(self) -> None:
        if not self._exit_hook_registered:
            atexit.register(self.kill_all)
            self._exit_hook_registered = True

    def record_pid(self, node: NodeProcess) -> None:
        if not self._doc:
            return  # the layout was never finished
        for record in self._doc["nodes"]:
            if record["name"] == node.name:
                record["pid"] = node.process.pid if node.running else None
                record["state"] = "running" if node.running else "stopped"
        devnet.write_devnet(self.root, self._doc)

    # --- faults ---------------------------------------------------------------------

    def set_switches(self, name: str, **switches: object) -> None:
        """Set `[testing]` switches (node.testing) in the node's config; they
        take effect at its next start."""
        home = self.nodes[name].home
        config = load_config(home)
        before = (home / CONFIG_FILE).read_text()
        for switch, value in switches.items():
            if not hasattr(config.testing, switch):
                raise AttributeError(f"no test switch {switch!r}")
            setattr(config.testing, switch, value)
        config.save()
        try:
            load_config(home)  # a bad value fails here, not at the next start
        except ConfigError:
            (home / CONFIG_FILE).write_text(before)
            raise
        log.info(
            "test switches set node=%s %s",
            name,
            " ".join(f"{k}={v}" for k, v in switches.items()),
        )

    def crash_after_sign(
        self, name: str, height: int, step: str = "prevote", round: int = -1
    ) -> None:
        """From the node's next start: exit right after its signer recorded
        `step` at `height` (in `round`, or whichever it signs first), before
        the message is logged or sent. Wait for it with wait_for_crash."""
        self.set_switches(
            name,
            crash_after_sign_height=height,
            crash_after_sign_round=round,
            crash_after_sign_step=step,
        )

    def shift_clock(self, name: str, offset_ms: int) -> None:
        """Run the node's clock `offset_ms` ahead (negative: behind) of the
        devnet's clock, from its next reading on. A node's clock never goes
        back: after a shift backwards it stands still until it catches up."""
        write_clock_offset(self.nodes[name].home / CLOCK_OFFSET_FILE, offset_ms)
        log.info("clock shifted node=%s offset_ms=%d", name, offset_ms)

    def require_links(self) -> LinkProxies:
        assert self.links is not None, "create the cluster with links=True"
        return self.links

    def partition(self, *groups: Iterable[str]) -> None:
        """Cut every link between nodes of different groups (harness.links)."""
        self.require_links().partition(*groups)

    def cut(self, a: str, b: str) -> None:
        self.require_links().cut(a, b)

    def delay(self, a: str, b: str, ms: int) -> None:
        """Hold bytes from `a` to `b` for `ms` (one way; 0 removes it)."""
        self.require_links().delay(a, b, ms)

    def drop(self, a: str, b: str) -> None:
        """Discard bytes from `a` to `b` (one way) until heal."""
        self.require_links().drop(a, b)

    def heal(self) -> None:
        """Every link whole again: no cut, drop or delay."""
        self.require_links().heal()

    # --- observing ------------------------------------------------------------------

    def forget_client(self, name: str) -> None:
        """Drop the node's client: its pooled connections died with the process."""
        client = self._clients.pop(name, None)
        if client is not None:
            client.close()

    def client(self, name: str) -> Client:
        """This node's API client (one per node, kept until shutdown)."""
        if name not in self._clients:
            self._clients[name] = Client(self.nodes[name].api_url)
        return self._clients[name]

    def status(self, name: str) -> dict | None:
        """GET /v1/status, or None when the node does not answer."""
        node = self.nodes[name]
        if not node.running or node.paused:
            return None
        try:
            with Client(node.api_url, timeout=STATUS_TIMEOUT_S) as api:
                return api.status()
        except (NodeUnreachable, ApiError):
            return None

    def height(self, name: str) -> int | None:
        status = self.status(name)
        return None if status is None else status["height"]

    def heights(self, names: Iterable[str] | None = None) -> dict[str, int | None]:
        return {name: self.height(name) for name in names or self.members}

    def tip(self, names: Iterable[str] | None = None) -> int:
        """The highest height any of the nodes reports."""
        return max(
            (h for h in self.heights(names).values() if h is not None), default=0
        )

    def validator_order(self) -> list[str]:
        """The validators' names in the order that picks proposers: the
        proposer of (height, round) is at (height + round) % n."""
        names = {node.public_key: node.name for node in self.nodes.values()}
        doc = self.client(self.running_nodes()[0]).validators()
        return [names[parse_address(v["address"])] for v in doc["validators"]]

    def proposer(self, height: int, round: int = 0) -> str:
        order = self.validator_order()
        return order[(height + round) % len(order)]

    def describe(self) -> str:
        """One line per node: state, height, peers, consensus round."""
        lines = []
        for name, node in self.nodes.items():
            status = self.status(name)
            if status is None:
                lines.append(f"  {name:<3} {node.kind:<9} {node.state:<12} no answer")
                continue
            consensus = status.get("consensus") or {}
            lines.append(
                f"  {name:<3} {node.kind:<9} {node.state:<12} "
                f"height={status['height']} peers={status['peers']} "
                f"round={consensus.get('round')} step={consensus.get('step')} "
                f"syncing={status['syncing']} mempool={status['mempool_txs']}"
            )
        return "\n".join(lines)

    def log_text(self, name: str) -> str:
        try:
            return self.nodes[name].log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, name: str, lines: int = LOG_TAIL_LINES) -> str:
        return "\n".join(self.log_text(name).splitlines()[-lines:]) or "(empty log)"

    def log_excerpt(self, *names: str) -> str:
        return "\n".join(
            f"--- last lines of {name}'s log ---\n{self.log_tail(name)}"
            for name in names
        )

    def log_matches(self, name: str, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        return [line for line in self.log_text(name).splitlines() if regex.search(line)]

    # --- waiting --------------------------------------------------------------------

    def wait_until(
        self,
        condition: Callable[[], bool],
        timeout: float,
        what: str,
        watched: Iterable[str] = (),
    ) -> None:
        """Poll `condition`; fail early if a watched node's process dies, and on
        timeout with where every node stands and the watched nodes' logs."""
        watched = list(watched)
        deadline = time.monotonic() + timeout
        while not condition():
            for name in watched:
                node = self.nodes[name]
                if node.process is not None and not node.running:
                    if not node.expected_exit:
                        raise AssertionError(
                            f"{name} exited with code {node.process.returncode} "
                            f"while waiting for {what}\n{self.describe()}\n"
                            f"{self.log_excerpt(name)}"
                        )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:g}s waiting for {what}\n"
                    f"{self.describe()}\n{self.log_excerpt(*watched)}"
                )
            time.sleep(POLL_S)

    def wait_for_height(
        self, names: Iterable[str], height: int, timeout: float = 30.0
    ) -> None:
        """Until every one of `names` reports at least `height`."""
        names = list(names)

        def reached() -> bool:
            return all((self.height(n) or 0) >= height for n in names)

        self.wait_until(
            reached, timeout, f"{', '.join(names)} at height {height}", names
        )

    def wait_for_blocks(
        self, count: int, names: Iterable[str] | None = None, timeout: float = 30.0
    ) -> int:
        """Until `names` (default: the running nodes) are `count` blocks past
        the current tip; returns the height waited for."""
        names = list(names or self.running_nodes())
        target = self.tip(names) + count
        self.wait_for_height(names, target, timeout)
        return target

    def wait_for_same_height(self, names: Iterable[str], timeout: float = 10.0) -> int:
        """Until `names` all report one height; returns it."""
        names = list(names)
        seen: set[int | None] = set()

        def one_height() -> bool:
            seen.clear()
            seen.update(self.heights(names).values())
            return len(seen) == 1 and None not in seen

        self.wait_until(one_height, timeout, f"{', '.join(names)} at one height", names)
        return seen.pop()

    def wait_for_tx(
        self, tx_hash: str, names: Iterable[str], timeout: float = SUBMIT_WAIT_S
    ) -> int:
        """Until every one of `names` reports the transaction committed, at one
        height; returns the height."""
        names = list(names)
        found: dict[str, int] = {}

        def committed_everywhere() -> bool:
            for name in names:
                if name in found:
                    continue
                try:
                    doc = self.client(name).tx(tx_hash)
                except (NotFound, NodeUnreachable):
                    continue
                if doc["status"] == "committed":
                    found[name] = doc["height"]
            return len(found) == len(names)

        self.wait_until(
            committed_everywhere,
            timeout,
            f"tx {tx_hash[:16]} committed on {', '.join(names)}",
            names,
        )
        heights = set(found.values())
        assert len(heights) == 1, f"tx {tx_hash[:16]} committed at {found}"
        height = heights.pop()
        self.note_final(tx_hash, height, ",".join(names))
        return height

    # --- transactions ---------------------------------------------------------------

    def expiry(self) -> int:
        return int(time.time()) + TX_TTL_S

    def register_merchant(
        self, via: str = "v1", name: str = "Corner Café", rate: int = MERCHANT_RATE
    ) -> Keypair:
        """The admin admits a new merchant; returns its key once final."""
        merchant = Keypair.generate()
        raw = builders.register_merchant(
            self.admin,
            self.chain_id,
            self.expiry(),
            merchant.address,
            name,
            rate,
            MERCHANT_DAILY_CAP,
        )
        doc = self.submit(raw, via)
        log.info("merchant registered via=%s height=%d", via, doc["height"])
        return merchant

    def award_tx(self, merchant: Keypair, customer: Keypair, amount: int) -> bytes:
        """A signed award for a purchase of `amount` minor units (unique order)."""
        order = f"order-{next(self._counter)}"
        return builders.award_purchase(
            merchant, self.chain_id, self.expiry(), customer.address, order, amount
        )

    def transfer_tx(self, sender: Keypair, to: Keypair, amount: int) -> bytes:
        memo = f"transfer-{next(self._counter)}"
        return builders.transfer(
            sender, self.chain_id, self.expiry(), to.address, amount, memo
        )

    def award(
        self, merchant: Keypair, customer: Keypair, amount: int, via: str
    ) -> dict:
        """Award coins for a purchase through node `via`; returns the final
        submission document (hash, height, receipt)."""
        return self.submit(self.award_tx(merchant, customer, amount), via)

    def transfer(self, sender: Keypair, to: Keypair, amount: int, via: str) -> dict:
        return self.submit(self.transfer_tx(sender, to, amount), via)

    def submit(self, raw: bytes, via: str, timeout: float = SUBMIT_WAIT_S) -> dict:
        """POST /v1/transactions?wait=true on `via`; the transaction must be
        final (committed and accepted by the ledger) within `timeout`."""
        doc = self.client(via).submit(raw, wait=True, timeout=timeout)
        assert doc["status"] == "committed", (
            f"tx {doc['hash'][:16]} submitted to {via} not final within "
            f"{timeout:g}s: {doc}\n{self.describe()}"
        )
        self.note_final(doc["hash"], doc.get("height"), via)
        return doc

    def submit_pending(self, raw: bytes, via: str) -> str:
        """Submit without waiting; returns the hash once the node admitted it."""
        doc = self.client(via).submit(raw)
        assert doc["status"] == "pending", f"{via} did not admit the tx: {doc}"
        return doc["hash"]

    def submit_concurrently(
        self, submissions: list[tuple[str, bytes]], timeout: float = SUBMIT_WAIT_S
    ) -> list[dict]:
        """Submit each (via, raw) at once, all waiting for finality; the final
        documents in order. Every one must be committed."""

        async def one(via: str, raw: bytes) -> dict:
            async with AsyncClient(self.nodes[via].api_url) as api:
                return await api.submit(raw, wait=True, timeout=timeout)

        async def all_of() -> list[dict]:
            return await asyncio.gather(*(one(via, raw) for via, raw in submissions))

        docs = asyncio.run(all_of())
        for (via, _), doc in zip(submissions, docs, strict=True):
            if doc["status"] == "committed":
                self.note_final(doc["hash"], doc.get("height"), via)
        for (via, _), doc in zip(submissions, docs, strict=True):
            assert doc["status"] == "committed", (
                f"tx {doc['hash'][:16]} submitted to {via} not final within "
                f"{timeout:g}s: {doc}\n{self.describe()}"
            )
        return docs

    def note_final(self, tx_hash: str, height: int | None, via: str) -> None:
        """Remember that a client was told this transaction is final."""
        self.final_txs.append(FinalTx(bytes.fromhex(tx_hash), height, via))

    def balance(self, name: str, account: Keypair) -> int:
        return self.client(name).account(account.address)["balance"]

    def balances(self, account: Keypair, names: Iterable[str]) -> dict[str, int]:
        return {name: self.balance(name, account) for name in names}

    # --- checks ---------------------------------------------------------------------

    def fetch_chains(
        self, names: Iterable[str] | None = None, from_height: int = 1
    ) -> Chains:
        names = list(names or self.running_nodes())
        return fetch_chains({n: self.nodes[n].api_url for n in names}, from_height)

    def assert_consistent(self, names: Iterable[str] | None = None) -> Chains:
        """Every block of every node (default: the running ones): one hash per
        height anywhere, equal state roots at shared heights, linked parents,
        certificates that name their block, and no validator signing two
        blocks at one height. Returns what was fetched."""
        chains = self.fetch_chains(names)
        check_consistent(chains)
        check_no_conflicting_signatures(chains)
        log.info(
            "chains consistent %s",
            " ".join(f"{c.name}={c.tip}" for c in chains.values()),
        )
        return chains

    def observations(self) -> Observations:
        """What harness.safety checks: the blocks of every node that answers,
        the consensus messages every node ever recorded, the final txs."""
        reachable = [n for n in self.running_nodes() if self.status(n) is not None]
        blocks = fetch_stored_blocks({n: self.nodes[n].api_url for n in reachable})
        messages = [
            RecordedMessage(node.name, entry.kind, entry.message)
            for node in self.nodes.values()
            for entry in read_consensus_record(node.home / RECORD_FILE)
        ]
        validators = frozenset(self.nodes[n].public_key for n in self.validators)
        return Observations(
            self.chain_id, validators, blocks, messages, list(self.final_txs)
        )

    def signed_by(self, name: str) -> list[Proposal | Vote]:
        """Every proposal and vote (certificate precommits included) that the
        node's key signed and any node recorded, each once, unverified."""
        key = self.nodes[name].public_key
        found: dict[tuple[str, bytes], Proposal | Vote] = {}
        for node in self.nodes.values():
            for entry in read_consensus_record(node.home / RECORD_FILE):
                try:
                    if entry.kind == "proposal":
                        messages = [decode_proposal(entry.message)]
                    elif entry.kind == "vote":
                        messages = [decode_vote(entry.message)]
                    else:
                        messages = decode_certificate(entry.message).precommits()
                except MalformedMessage:
                    continue
                for message in messages:
                    if isinstance(message, Vote):
                        signer = message.validator
                    else:
                        signer = message.proposer
                    if signer == key:
                        found[(type(message).__name__, message.encode())] = message
        return list(found.values())

    def check_safety(self) -> SafetyReport:
        """Fail on any safety violation over the whole run (harness.safety)."""
        report = check_safety(self.observations())
        log.info("safety holds %s", report.describe())
        return report

    def assert_no_double_signing(self, names: Iterable[str] | None = None) -> None:
        """No node recorded double-sign evidence on chain or saw a double sign."""
        for name in names or self.running_nodes():
            recorded = self.client(name).evidence()["evidence"]
            assert not recorded, f"{name} holds double-sign evidence: {recorded[:3]}"
            seen = self.log_matches(name, "double signing detected")
            assert not seen, f"{name} saw double signing: {seen[:3]}"

    def wait_until_signing(
        self, name: str, after: int, timeout: float = 30.0
    ) -> list[int]:
        """Until a commit certificate above height `after`, as stored by a node
        other than `name`, carries `name`'s precommit; those heights."""
        key = self.nodes[name].public_key
        others = [n for n in self.running_nodes() if n != name]
        signed: list[int] = []

        def has_signed() -> bool:
            chains = self.fetch_chains(others, from_height=after + 1)
            signed[:] = heights_signed_by(chains, key)
            return bool(signed)

        self.wait_until(
            has_signed, timeout, f"a commit above {after} signed by {name}", [name]
        )
        log.info("validator signs commits name=%s heights=%s", name, signed[:10])
        return signed


@contextlib.contextmanager
def launched_cluster(
    root: Path,
    request,
    validators: int = devnet.DEFAULT_VALIDATORS,
    auditors: int = devnet.DEFAULT_AUDITORS,
    links: bool = False,
    switches: dict[str, dict] | None = None,
    safety: bool = True,
) -> Iterator[Cluster]:
    """A started cluster committing blocks; every process stopped afterwards,
    and the tail of every node's log printed if the test failed.

    `links` routes every dial through a proxy (harness.links); `switches`
    sets test switches per node before the first start ({"v2": {...}}). A
    node that exited on its own during the test fails it here, and so does
    any safety violation (Cluster.check_safety) once the test body passed.
    """
    failed_before = request.session.testsfailed
    cluster = start_cluster(root, validators, auditors, links, switches)
    problem = ""
    try:
        yield cluster
        crashed = cluster.crashed_nodes()
        if crashed:
            problem = f"nodes exited on their own: {crashed}"
        elif safety:
            try:
                cluster.check_safety()
            except AssertionError as exc:
                problem = str(exc)
    finally:
        if problem or request.session.testsfailed > failed_before:
            print_logs(cluster)
        cluster.shutdown()
    assert not problem, problem


def start_cluster(
    root: Path,
    validators: int,
    auditors: int,
    links: bool = False,
    switches: dict[str, dict] | None = None,
) -> Cluster:
    """Create and start a cluster; again in a new folder with new ports when
    another process took one between picking it and the node binding it."""
    for attempt in range(1, START_ATTEMPTS + 1):
        folder = root if attempt == 1 else root.with_name(f"{root.name}-{attempt}")
        cluster = Cluster(folder, validators, auditors, links=links)
        try:
            cluster.create()
            for name, settings in (switches or {}).items():
                cluster.set_switches(name, **settings)
            cluster.start()
            cluster.wait_for_height(cluster.members, 1, READY_TIMEOUT_S)
        except BaseException:
            retry = attempt < START_ATTEMPTS and cluster.port_was_taken()
            if not retry:
                print_logs(cluster)
            cluster.shutdown()
            if not retry:
                raise
            log.warning("a port was taken meanwhile; retrying attempt=%d", attempt + 1)
            continue
        log.info("cluster committing\n%s", cluster.describe())
        return cluster
    raise AssertionError("unreachable")


def print_logs(cluster: Cluster) -> None:
    print(f"cluster in {cluster.root}")
    print(cluster.describe())
    print(cluster.log_excerpt(*cluster.nodes))
