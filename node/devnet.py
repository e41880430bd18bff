"""A local development network: `perk devnet up | status | down`.

`up` lays out a folder and starts every node in the background:

    DIR/devnet.json        what runs: name, kind, pid, API URL, p2p port, home
    DIR/genesis.json       the chain's genesis (devnet: true, time = now)
    DIR/admin.password     the admin wallet's password (mode 0600)
    DIR/wallets/admin.json the admin wallet (encrypted keystore)
    DIR/<name>/            one node home per node (see node.config), with
                           node.log holding its stdout and stderr

Validators are v1, v2, ...; auditors a1, a2, .... Each node listens on free
127.0.0.1 ports and knows every validator as a peer by key, address and
certificate; validators accept the auditors as observers without dialling
them.

`down` signals exactly the recorded processes, after checking that each pid
still runs a node of this devnet (its command line names the node's home), so
a recycled pid is never signalled.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from client.http import ApiError, Client, NodeUnreachable
from client.keys import Keypair
from client.keystore import save_keystore
from node.clock import write_clock_file
from node.config import (
    GENESIS_FILE,
    NODE_CERT_FILE,
    NODE_KEY_FILE,
    ApiSection,
    Config,
    ConsensusSection,
    NodeSection,
    P2PSection,
    PeerEntry,
    write_node_key,
)
from p2p.identity import NodeIdentity
from p2p.identity import write_certificate as write_certificate_pem
from state.genesis import Genesis, parse_genesis

log = logging.getLogger("node.devnet")

DEVNET_FILE = "devnet.json"
PORT_ATTEMPTS = 3
DEVNET_TIME_ZONES = ("UTC", "Europe/London", "America/New_York", "Asia/Tokyo",
                     "Australia/Adelaide")  # fmt: skip
CLOCK_FILE = "clock.json"
ADMIN_PASSWORD_FILE = "admin.password"
WALLET_DIR = "wallets"
ADMIN_WALLET = "admin"
NODE_LOG = "node.log"
DEFAULT_CHAIN_ID = "perk-devnet-1"
HOST = "127.0.0.1"
DEFAULT_VALIDATORS = 4
DEFAULT_AUDITORS = 1
# Genesis allows at most this many validators; a devnet also keeps auditors few.
MAX_DEVNET_VALIDATORS = 32
MAX_DEVNET_AUDITORS = 8
# Short intervals so a devnet commits (and a test sees it) quickly.
BLOCK_INTERVAL_MS = 500
HEARTBEAT_MS = 2000
LOG_TAIL_LINES = 20
# `up` returns once every node reports at least this height: the network
# commits blocks, and every node (auditors included) follows them.
READY_HEIGHT = 1


class DevnetError(Exception):
    """A devnet that cannot be created, started or stopped; says why."""

    def __init__(self, message: str, usage: bool = False) -> None:
        super().__init__(message)
        # True when the arguments or the folder are the problem (exit 2).
        self.usage = usage


@dataclass
class NodePlan:
    name: str
    kind: str
    seed: bytes
    api_port: int
    p2p_port: int
    home: Path

    @property
    def address(self) -> str:
        return Keypair.from_seed(self.seed).address

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"


# --- up -------------------------------------------------------------------------------


def up(
    root: Path,
    validators: int = DEFAULT_VALIDATORS,
    auditors: int = DEFAULT_AUDITORS,
    chain_id: str = DEFAULT_CHAIN_ID,
    timeout: float = 30.0,
    seed: str | None = None,
    genesis_time_ms: int | None = None,
    block_interval_ms: int = BLOCK_INTERVAL_MS,
) -> dict:
    """Create (or restart) the devnet in `root`; returns its devnet.json document
    once every node's API answers.

    `seed` makes every key (nodes and admin) a function of it, so two devnets
    made with one seed and one genesis time have the same genesis and, fed the
    same transactions at the same block times, reach the same state roots.
    With `genesis_time_ms` the shared devnet clock starts stopped at that time
    (`perk devnet time` moves it on)."""
    root = root.resolve()
    if (root / DEVNET_FILE).exists():
        return restart(root, timeout)
    check_sizes(validators, auditors)
    if root.exists() and any(root.iterdir()):
        raise DevnetError(f"{root} exists and is not an empty folder", usage=True)
    for attempt in range(PORT_ATTEMPTS):
        root.mkdir(parents=True, exist_ok=True)
        try:
            return create(
                root, validators, auditors, chain_id, timeout, seed,
                genesis_time_ms, block_interval_ms,
            )  # fmt: skip
        except DevnetError as exc:
            # Ports are picked free, then released for the nodes to bind; another
            # process can take one in between. Start again with new ports.
            if "cannot listen" not in str(exc) or attempt == PORT_ATTEMPTS - 1:
                raise
            log.warning("devnet port taken meanwhile; retrying attempt=%d", attempt + 2)
            shutil.rmtree(root)
    raise AssertionError("unreachable")


def create(
    root: Path,
    validators: int,
    auditors: int,
    chain_id: str,
    timeout: float,
    seed: str | None,
    genesis_time_ms: int | None,
    block_interval_ms: int,
) -> dict:
    """Keys, genesis and node homes in the empty folder `root`; then start."""
    plans = plan_nodes(root, validators, auditors, seed)
    admin = create_admin_wallet(root, seed)
    genesis = build_genesis(chain_id, plans, admin, genesis_time_ms)
    genesis.write(root / GENESIS_FILE)
    if genesis_time_ms is not None:
        # Stopped just past a heartbeat after genesis, so the first block (which
        # `up` waits for) is made at once.
        write_clock_file(root / CLOCK_FILE, genesis_time_ms + HEARTBEAT_MS + 1000)
    for plan in plans:
        write_node_home(plan, plans, genesis, block_interval_ms)
    doc = {
        "chain_id": genesis.chain_id,
        "genesis_hash": genesis.hash.hex(),
        "admin": {
            "address": admin.address,
            "wallet_dir": str(root / WALLET_DIR),
            "wallet": ADMIN_WALLET,
            "password_file": str(root / ADMIN_PASSWORD_FILE),
        },
        "nodes": [node_record(plan) for plan in plans],
    }
    return start_all(root, doc, timeout)


def restart(root: Path, timeout: float) -> dict:
    """Start the recorded nodes of a stopped devnet again, keeping their chain."""
    doc = read_devnet(root)
    running = [n["name"] for n in doc["nodes"] if is_node_process(n["pid"], n["home"])]
    if running:
        raise DevnetError(
            f"devnet in {root} is already running ({', '.join(running)})", usage=True
        )
    return start_all(root, doc, timeout)


def check_sizes(validators: int, auditors: int) -> None:
    if validators < 1 or auditors < 0:
        raise DevnetError("a devnet needs at least one validator", usage=True)
    if validators > MAX_DEVNET_VALIDATORS or auditors > MAX_DEVNET_AUDITORS:
        raise DevnetError(
            f"a devnet has at most {MAX_DEVNET_VALIDATORS} validators and "
            f"{MAX_DEVNET_AUDITORS} auditors",
            usage=True,
        )


def plan_nodes(
    root: Path, validators: int, auditors: int, seed: str | None = None
) -> list[NodePlan]:
    names = [("validator", f"v{i}") for i in range(1, validators + 1)]
    names += [("auditor", f"a{i}") for i in range(1, auditors + 1)]
    ports = free_ports(2 * len(names))
    return [
        NodePlan(
            name,
            kind,
            key_seed(seed, name),
            ports[2 * i],
            ports[2 * i + 1],
            root / name,
        )
        for i, (kind, name) in enumerate(names)
    ]


def key_seed(seed: str | None, name: str) -> bytes:
    """A fresh random key, or with `seed` one derived from it (devnets only:
    anyone who knows the seed has the key)."""
    if seed is None:
        return os.urandom(32)
    return hashlib.sha256(f"perkchain/devnet-key/{seed}/{name}".encode()).digest()


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free now; all held open until all are picked,
    so no two are the same."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def create_admin_wallet(root: Path, seed: str | None = None) -> Keypair:
    """An admin key in an encrypted keystore, its random password beside it
    (mode 0600) so scripts can sign as the admin without a prompt."""
    admin = Keypair.from_seed(key_seed(seed, ADMIN_WALLET))
    password = secrets.token_urlsafe(24)
    fd = os.open(
        root / ADMIN_PASSWORD_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
    )
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    wallets = root / WALLET_DIR
    wallets.mkdir(mode=0o700)
    save_keystore(wallets / f"{ADMIN_WALLET}.json", admin, password, ADMIN_WALLET)
    return admin


def build_genesis(
    chain_id: str,
    plans: list[NodePlan],
    admin: Keypair,
    genesis_time_ms: int | None = None,
) -> Genesis:
    if genesis_time_ms is None:
        genesis_time_ms = time.time_ns() // 1_000_000
    doc = {
        "chain_id": chain_id,
        "genesis_time_ms": genesis_time_ms,
        "devnet": True,
        "validators": [
            {"name": p.name, "key": p.address} for p in plans if p.kind == "validator"
        ],
        "admins": [admin.address],
    }
    return parse_genesis(doc)


def write_node_home(
    plan: NodePlan,
    plans: list[NodePlan],
    genesis: Genesis,
    block_interval_ms: int = BLOCK_INTERVAL_MS,
) -> None:
    plan.home.mkdir(mode=0o700)
    write_node_key(plan.home / NODE_KEY_FILE, plan.seed)
    write_certificate(plan.home, plan.seed)
    genesis.write(plan.home / GENESIS_FILE)
    config = node_config(plan, plans)
    config.consensus.block_interval_ms = block_interval_ms
    config.save()


def write_certificate(home: Path, seed: bytes) -> None:
    """The node's self-signed TLS certificate, which its peers pin."""
    write_certificate_pem(Path(home) / NODE_CERT_FILE, NodeIdentity(seed))


def node_config(plan: NodePlan, plans: list[NodePlan]) -> Config:
    """Full mesh between validators; auditors dial the validators, which accept
    them as observers but never dial them (an empty host and port 0), as an
    auditor behind a firewall would be set up."""
    others = [p for p in plans if p is not plan]
    peers = [peer_entry(p, dial=True) for p in others if p.kind == "validator"]
    observers = []
    if plan.kind == "validator":
        auditors = [p for p in others if p.kind == "auditor"]
        peers += [peer_entry(p, dial=False) for p in auditors]
        observers = [p.address for p in auditors]
    return Config(
        # Every node reads the devnet's shared clock file (node.clock); while
        # the file does not exist that is the wall clock.
        node=NodeSection(name=plan.name, kind=plan.kind, clock_file=f"../{CLOCK_FILE}"),
        api=ApiSection(host=HOST, port=plan.api_port),
        p2p=P2PSection(host=HOST, port=plan.p2p_port, peers=peers, observers=observers),
        consensus=ConsensusSection(
            block_interval_ms=BLOCK_INTERVAL_MS, heartbeat_ms=HEARTBEAT_MS
        ),
        home=plan.home,
    )


def peer_entry(peer: NodePlan, dial: bool) -> PeerEntry:
    # The certificate is the TLS pin; its path is relative to the home folder,
    # so the devnet folder can be moved as a whole.
    return PeerEntry(
        key=peer.address,
        host=HOST if dial else "",
        port=peer.p2p_port if dial else 0,
        cert=f"../{peer.name}/{NODE_CERT_FILE}",
    )


def node_record(plan: NodePlan) -> dict:
    return {
        "name": plan.name,
        "kind": plan.kind,
        "address": plan.address,
        "pid": None,
        "api": plan.api_url,
        "p2p_port": plan.p2p_port,
        "home": str(plan.home),
        "state": "stopped",
    }


def start_all(root: Path, doc: dict, timeout: float) -> dict:
    processes: dict[str, subprocess.Popen] = {}
    try:
        for record in doc["nodes"]:
            process = start_node_process(Path(record["home"]))
            processes[record["name"]] = process
            record["pid"] = process.pid
            record["state"] = "running"
        # Recorded before waiting, so `down` can clean up even if this is
        # interrupted.
        write_devnet(root, doc)
        wait_until_ready(doc["nodes"], processes, timeout)
    except BaseException:
        stop_processes(processes)
        for record in doc["nodes"]:
            record["state"] = "stopped"
        write_devnet(root, doc)
        raise
    return doc


def start_node_process(home: Path) -> subprocess.Popen:
    """`perk node run --home HOME` in its own session, output to node.log."""
    env = dict(os.environ)
    # The node must import this very code, installed or not.
    source_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (source_root, env.get("PYTHONPATH")) if p
    )
    # Each node of a devnet runs with its own hash seed and time zone, so any
    # dependence of the ledger on either shows up as nodes that disagree.
    variant = zlib.crc32(home.name.encode())
    env["PYTHONHASHSEED"] = str(variant % 4_294_967_295)
    env["TZ"] = DEVNET_TIME_ZONES[variant % len(DEVNET_TIME_ZONES)]
    with open(home / NODE_LOG, "ab") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node", "run", "--home", str(home)],
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=home,
            env=env,
            # A Ctrl-C in the terminal that ran `devnet up` must not reach
            # the nodes: they stop with `devnet down`.
            start_new_session=True,
        )


def wait_until_ready(
    records: list[dict],
    processes: dict[str, subprocess.Popen],
    timeout: float,
    min_height: int = READY_HEIGHT,
) -> None:
    """Return once every node's API answers at `min_height` or above; fail with
    the log of a node that exits, or when `timeout` passes."""
    deadline = time.monotonic() + timeout
    waiting = {r["name"]: r for r in records}
    while waiting:
        for name, record in list(waiting.items()):
            code = processes[name].poll()
            if code is not None:
                raise DevnetError(
                    f"node {name} exited with code {code} during start-up; "
                    f"last lines of its log:\n{log_tail(Path(record['home']))}"
                )
            reply = node_status(record["api"], timeout=1.0)
            if reply is not None and reply.get("height", 0) >= min_height:
                log.info("devnet node ready name=%s api=%s", name, record["api"])
                del waiting[name]
        if not waiting:
            return
        if time.monotonic() > deadline:
            first = min(waiting)
            raise DevnetError(
                f"{', '.join(sorted(waiting))} not ready within {timeout:g}s; "
                f"last lines of {first}'s log:\n"
                f"{log_tail(Path(waiting[first]['home']))}"
            )
        time.sleep(0.2)


def node_status(url: str, timeout: float) -> dict | None:
    try:
        with Client(url, timeout=timeout) as api:
            return api.status()
    except (NodeUnreachable, ApiError):
        return None


def log_tail(home: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = (home / NODE_LOG).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


# --- status ---------------------------------------------------------------------------


def status(root: Path) -> dict:
    """The recorded nodes with whether each runs and the height it reports."""
    root = root.resolve()
    doc = read_devnet(root)
    nodes = []
    for record in doc["nodes"]:
        alive = is_node_process(record["pid"], record["home"])
        reply = node_status(record["api"], timeout=1.0) if alive else None
        nodes.append(
            {
                "name": record["name"],
                "kind": record["kind"],
                "pid": record["pid"],
                "alive": alive,
                "api": record["api"],
                "height": reply.get("height") if reply else None,
                "home": record["home"],
            }
        )
    return {"chain_id": doc.get("chain_id"), "nodes": nodes}


# --- down -----------------------------------------------------------------------------


def down(root: Path, timeout: float = 10.0) -> dict:
    """SIGTERM each recorded node, SIGKILL any still running after `timeout`."""
    root = root.resolve()
    doc = read_devnet(root)
    signalled = []
    for record in doc["nodes"]:
        if is_node_process(record["pid"], record["home"]):
            os.kill(record["pid"], signal.SIGTERM)
            signalled.append(record)
            record["stop"] = "terminated"
        else:
            record["stop"] = "not running"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(
        is_node_process(r["pid"], r["home"]) for r in signalled
    ):
        time.sleep(0.1)
    for record in signalled:
        if is_node_process(record["pid"], record["home"]):
            log.warning(
                "devnet node killed name=%s pid=%d", record["name"], record["pid"]
            )
            os.kill(record["pid"], signal.SIGKILL)
            record["stop"] = "killed"
    for record in doc["nodes"]:
        record["state"] = "stopped"
    write_devnet(root, doc)
    return doc


def stop_processes(processes: dict[str, subprocess.Popen], timeout: float = 10.0):
    """Stop nodes this process started (and so can wait for)."""
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    for process in processes.values():
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def is_node_process(pid: int | None, home: str) -> bool:
    """True when `pid` is alive and runs a node whose command line names
    `home`; a zombie or a pid reused by another program does not count."""
    if not pid:
        return False
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():
        # No procfs: existence is all that can be checked.
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        args = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return os.fsencode(home) in args


# --- devnet.json ----------------------------------------------------------------------


def read_devnet(root: Path) -> dict:
    path = root / DEVNET_FILE
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise DevnetError(
            f"no devnet in {root} (no {DEVNET_FILE})", usage=True
        ) from None
    except (OSError, ValueError) as exc:
        raise DevnetError(f"cannot read {path}: {exc}", usage=True) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("nodes"), list):
        raise DevnetError(f"{path} is not a devnet record", usage=True)
    return doc


def write_devnet(root: Path, doc: dict) -> None:
    # Written beside and renamed, so a reader never sees half a file.
    path = root / DEVNET_FILE
    temp = path.with_name(f".{DEVNET_FILE}.tmp")
    temp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(temp, path)
