"""Real node processes: `perk node run` and `perk devnet up | status | down`.

Every test that starts a process stops it in a `finally`, and every wait is
bounded, so a failure never leaves a node running or the suite hanging.
Blocks are not required: only that nodes start, answer and stop cleanly.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from client.http import BadRequest, Client, NodeUnreachable, NotFound
from node.config import load_config
from node.devnet import DEVNET_FILE, is_node_process
from state.genesis import load_genesis
from state.store import Store
from tests.test_cli import one_line_error, perk, perk_json
from tests.test_client_http import closed_port

START_TIMEOUT_S = 20


def process_gone(pid: int) -> bool:
    """True once `pid` has exited (a zombie awaiting its reaper counts)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def api_status(url: str) -> dict | None:
    try:
        with Client(url, timeout=1) as api:
            return api.status()
    except NodeUnreachable:
        return None


# --- perk node run --------------------------------------------------------------------


@pytest.fixture
def node_home(tmp_path) -> Path:
    home = tmp_path / "node"
    port = closed_port()
    doc = perk_json("init", "--home", str(home), "--api-port", str(port))
    perk_json(
        "genesis", "--out", str(home / "genesis.json"), "--chain-id", "perk-run-1",
        "--validator", f"n1={doc['address']}", "--admin", doc["address"], "--devnet",
    )  # fmt: skip
    return home


def start_node(home: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "node.cli", "node", "run", "--home", str(home)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_node_run_stops_cleanly_on_signal(node_home, signum):
    url = f"http://127.0.0.1:{load_config(node_home).api.port}"
    process = start_node(node_home)
    try:
        wait_for(lambda: api_status(url) is not None, START_TIMEOUT_S, "the API")
        answer = api_status(url)
        assert answer["chain_id"] == "perk-run-1"
        process.send_signal(signum)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, output
    assert "node stopped" in output
    assert "Traceback" not in output

    # The database was closed properly: it opens again at once, on the same
    # chain, with every block the node reported.
    genesis = load_genesis(node_home / "genesis.json")
    store = Store(load_config(node_home).data_dir, genesis)
    try:
        assert store.height >= answer["height"]
        assert store.genesis_hash == genesis.hash
    finally:
        store.close()


def test_node_run_config_errors_exit_2(node_home, tmp_path):
    result = perk("node", "run", "--home", str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "perk init" in one_line_error(result)

    (node_home / "genesis.json").rename(tmp_path / "genesis.json")
    result = perk("node", "run", "--home", str(node_home))
    assert result.returncode == 2
    assert "no genesis" in one_line_error(result)

    (tmp_path / "genesis.json").rename(node_home / "genesis.json")
    config = node_home / "config.toml"
    config.write_text(config.read_text().replace("[api]", "[api]\nprot = 1"))
    result = perk("node", "run", "--home", str(node_home))
    assert result.returncode == 2
    assert "prot" in one_line_error(result)


def test_node_run_port_in_use_exits_2(node_home):
    port = load_config(node_home).api.port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = perk("node", "run", "--home", str(node_home), timeout=30)
    assert result.returncode == 2
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr


# --- perk devnet ----------------------------------------------------------------------


def devnet_down(root: Path) -> None:
    """Teardown: stop whatever the devnet recorded, whatever happened."""
    if (root / DEVNET_FILE).exists():
        perk("devnet", "down", "--home", str(root), "--timeout", "5")


def test_devnet_up_status_down(tmp_path):
    root = tmp_path / "devnet"
    try:
        up = perk(
            "--json", "devnet", "up", "--home", str(root),
            "--validators", "1", "--auditors", "0", timeout=60,
        )  # fmt: skip
        assert up.returncode == 0, up.stderr
        created = json.loads(up.stdout)
        (node,) = created["nodes"]
        assert (node["name"], node["kind"]) == ("v1", "validator")

        # The layout: genesis for a devnet, an admin wallet usable by scripts.
        genesis = load_genesis(root / "genesis.json")
        assert genesis.devnet is True
        assert abs(genesis.genesis_time_ms / 1000 - time.time()) < 120
        assert (root / "admin.password").stat().st_mode & 0o077 == 0
        shown = perk_json("wallet", "show", "admin", "--dir", str(root / "wallets"))
        assert shown["address"] == created["admin"]["address"]
        config = load_config(root / "v1")
        assert config.consensus.block_interval_ms == 500
        assert config.consensus.heartbeat_ms == 2000
        assert node["api"] == f"http://127.0.0.1:{config.api.port}"
        assert (root / "v1" / "node_cert.pem").exists()

        listed = perk_json("devnet", "status", "--home", str(root))
        (status,) = listed["nodes"]
        assert status["alive"] is True
        assert status["pid"] == node["pid"]
        assert isinstance(status["height"], int)
        answer = api_status(node["api"])
        assert answer["chain_id"] == "perk-devnet-1"
        assert answer["genesis_hash"] == genesis.hash.hex()
        check_typed_errors_of_a_real_node(node["api"])

        again = perk("devnet", "up", "--home", str(root))
        assert again.returncode == 2
        assert "already running" in one_line_error(again)

        down = perk_json("devnet", "down", "--home", str(root))
        assert down["nodes"] == [{"name": "v1", "stop": "terminated"}]
        wait_for(lambda: process_gone(node["pid"]), 10, "the node to exit")
        assert not is_node_process(node["pid"], node["home"])
        assert (
            perk_json("devnet", "status", "--home", str(root))["nodes"][0]["alive"]
            is False
        )
        assert "node stopped" in (root / "v1" / "node.log").read_text()
    finally:
        devnet_down(root)


def check_typed_errors_of_a_real_node(url: str) -> None:
    with Client(url) as api:
        with pytest.raises(NotFound) as missing:
            api.block(10**15)
        assert (missing.value.status, missing.value.code) == (404, "unknown_block")
        with pytest.raises(BadRequest) as bad_address:
            api.account("perk1notanaddress")
        assert bad_address.value.code == "invalid_address"
        with pytest.raises(BadRequest) as malformed:
            api.submit(b"\x00")
        assert malformed.value.code == "malformed"


def test_devnet_restart_and_early_exit(tmp_path):
    root = tmp_path / "devnet"
    try:
        perk_json(
            "devnet", "up", "--home", str(root), "--chain-id", "perk-dev-9",
            "--validators", "1", "--auditors", "0",
        )  # fmt: skip
        perk_json("devnet", "down", "--home", str(root))

        # Up again restarts the same chain...
        restarted = perk_json("devnet", "up", "--home", str(root))
        assert restarted["chain_id"] == "perk-dev-9"
        assert api_status(restarted["nodes"][0]["api"])["chain_id"] == "perk-dev-9"
        perk_json("devnet", "down", "--home", str(root))

        # ...and a node that cannot start fails `up` with the tail of its log.
        port = int(restarted["nodes"][0]["api"].rpartition(":")[2])
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", port))
            taken.listen()
            failed = perk("devnet", "up", "--home", str(root), timeout=60)
        assert failed.returncode == 1
        assert "exited with code 2" in failed.stderr
        assert "cannot listen" in failed.stderr
        status = perk_json("devnet", "status", "--home", str(root))
        assert status["nodes"][0]["alive"] is False
    finally:
        devnet_down(root)


def test_devnet_refusals(tmp_path):
    root = tmp_path / "devnet"
    for args in (["--validators", "33"], ["--auditors", "9"]):
        result = perk("devnet", "up", "--home", str(root), *args)
        assert result.returncode == 2, args
        assert "a devnet has at most" in one_line_error(result)
    # argparse's own refusals print the usage too, and exit 2 as well.
    result = perk("devnet", "up", "--home", str(root), "--validators", "0")
    assert result.returncode == 2
    assert "must be at least 1" in result.stderr
    assert not (root / DEVNET_FILE).exists()

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    result = perk("devnet", "up", "--home", str(tmp_path / "busy"))
    assert result.returncode == 2
    assert "not an empty folder" in one_line_error(result)

    for command in ("status", "down"):
        result = perk("devnet", command, "--home", str(tmp_path / "none"))
        assert result.returncode == 2
        assert "no devnet" in one_line_error(result)


def test_down_never_signals_a_foreign_process(tmp_path):
    # A recorded pid now used by another program (here: a sleeping child of
    # this test) must be left alone.
    root = tmp_path / "devnet"
    root.mkdir()
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        record = {
            "chain_id": "x",
            "nodes": [
                {
                    "name": "v1",
                    "kind": "validator",
                    "pid": stranger.pid,
                    "api": "http://127.0.0.1:1",
                    "p2p_port": 1,
                    "home": str(root / "v1"),
                    "state": "running",
                }
            ],
        }
        (root / DEVNET_FILE).write_text(json.dumps(record))
        down = perk_json("devnet", "down", "--home", str(root))
        assert down["nodes"] == [{"name": "v1", "stop": "not running"}]
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()
