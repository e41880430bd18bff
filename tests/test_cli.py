"""`perk` commands that need no node: init, genesis, wallet, bench.

Each runs as a real process (`python -m node.cli`), so exit codes, stdout and
stderr are exactly what a script sees.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from client.keys import Keypair
from client.keystore import load_keystore
from node.config import NODE_KEY_FILE, load_config, read_node_key
from state.genesis import load_genesis


def perk(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def perk_json(*args: str, env: dict[str, str] | None = None) -> dict:
    result = perk("--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """Expected failures print one line, never a traceback."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


# --- init -----------------------------------------------------------------------------


def test_init_writes_a_home_and_refuses_to_overwrite(tmp_path):
    home = tmp_path / "node-a"
    doc = perk_json(
        "init", "--home", str(home), "--kind", "auditor", "--api-port", "9100"
    )
    assert doc["name"] == "node-a" and doc["kind"] == "auditor"

    seed = read_node_key(home / NODE_KEY_FILE)
    assert Keypair.from_seed(seed).address == doc["address"]
    assert stat.S_IMODE((home / NODE_KEY_FILE).stat().st_mode) == 0o600
    assert (home / "node_cert.pem").read_text().startswith("-----BEGIN CERTIFICATE")
    config = load_config(home)
    assert (config.node.kind, config.api.port, config.p2p.port) == (
        "auditor",
        9100,
        26600,
    )
    # Every setting is written out, defaults included.
    text = (home / "config.toml").read_text()
    for section in ("[node]", "[api]", "[p2p]", "[mempool]", "[consensus]"):
        assert section in text
    assert "heartbeat_ms" in text

    again = perk("init", "--home", str(home))
    assert again.returncode == 2
    assert "refusing to overwrite" in one_line_error(again)
    assert read_node_key(home / NODE_KEY_FILE) == seed


def test_init_human_output_names_the_address(tmp_path):
    result = perk("init", "--home", str(tmp_path / "h"), "--name", "alpha")
    assert result.returncode == 0, result.stderr
    assert "address  perk1" in result.stdout
    assert "alpha" in result.stdout


# --- genesis --------------------------------------------------------------------------


def test_genesis_writes_a_valid_file(tmp_path):
    validator, admin, merchant = (Keypair.generate().address for _ in range(3))
    out = tmp_path / "genesis.json"
    doc = perk_json(
        "genesis",
        "--out", str(out),
        "--chain-id", "perk-test-7",
        "--validator", f"v1={validator}",
        "--admin", admin,
        "--merchant", f"{merchant}:Café: Corner:12:50000",
        "--no-transfers",
        "--utc-offset-minutes", "60",
        "--time-ms", "1700000000000",
        "--devnet",
    )  # fmt: skip
    genesis = load_genesis(out)
    assert doc["genesis_hash"] == genesis.hash.hex()
    assert genesis.chain_id == "perk-test-7"
    assert genesis.genesis_time_ms == 1_700_000_000_000
    assert genesis.devnet is True
    assert genesis.program.transfers_allowed is False
    assert genesis.program.utc_offset_minutes == 60
    assert [v.name for v in genesis.validators] == ["v1"]
    (shop,) = genesis.merchants
    assert (shop.name, shop.rate, shop.daily_cap) == ("Café: Corner", 12, 50000)

    again = perk(
        "genesis", "--out", str(out), "--chain-id", "x",
        "--validator", f"v1={validator}", "--admin", admin,
    )  # fmt: skip
    assert again.returncode == 2
    assert "exists" in one_line_error(again)


@pytest.mark.parametrize(
    "bad",
    [
        ["--validator", "v1=perk1notanaddress", "--admin", "{good}"],
        ["--validator", "v1={good}", "--admin", "cosmos1qqqqqq"],
        ["--validator", "{good}", "--admin", "{good}"],
        ["--validator", "v1={good}", "--admin", "{good}", "--merchant", "{good}:x"],
    ],
)
def test_genesis_refuses_bad_input_with_exit_2(tmp_path, bad):
    good = Keypair.generate().address
    args = [a.format(good=good) for a in bad]
    out = tmp_path / "genesis.json"
    result = perk("genesis", "--out", str(out), "--chain-id", "c", *args)
    assert result.returncode == 2
    one_line_error(result)
    assert not out.exists()


def test_missing_arguments_are_usage_errors(tmp_path):
    result = perk("genesis", "--out", str(tmp_path / "g.json"))
    assert result.returncode == 2
    assert "required" in result.stderr

    key = Keypair.generate().address
    unwritable = tmp_path / "missing-folder" / "g.json"
    result = perk(
        "genesis", "--out", str(unwritable), "--chain-id", "c",
        "--validator", f"v1={key}", "--admin", key,
    )  # fmt: skip
    assert result.returncode == 2
    assert "No such file or directory" in one_line_error(result)


# --- wallet ---------------------------------------------------------------------------


def test_wallet_create_show_list(tmp_path):
    env = {"PERK_PASSWORD": "hunter22", "PERK_WALLET_DIR": str(tmp_path / "w")}
    created = perk_json("wallet", "create", "--name", "alice", env=env)
    path = Path(created["path"])
    assert path == tmp_path / "w" / "alice.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keystore(path, "hunter22").address == created["address"]

    shown = perk_json("wallet", "show", "alice", env=env)
    assert shown["address"] == created["address"]
    perk_json("wallet", "create", "--name", "bob", env=env)
    listed = perk_json("wallet", "list", env=env)
    assert [w["name"] for w in listed["wallets"]] == ["alice", "bob"]

    text = perk("wallet", "list", env=env)
    assert created["address"] in text.stdout

    duplicate = perk("wallet", "create", "--name", "alice", env=env)
    assert duplicate.returncode == 2
    assert "already exists" in one_line_error(duplicate)


def test_wallet_dir_option_and_password_file(tmp_path):
    password_file = tmp_path / "pw"
    password_file.write_text("from a file\n")
    folder = tmp_path / "elsewhere"
    created = perk_json(
        "wallet", "create", "--name", "till-3", "--dir", str(folder),
        "--password-file", str(password_file),
    )  # fmt: skip
    # The trailing newline of the file is not part of the password.
    keypair = load_keystore(folder / "till-3.json", "from a file")
    assert keypair.address == created["address"]


def test_wallet_errors(tmp_path):
    env = {"PERK_WALLET_DIR": str(tmp_path)}
    # No password source and no terminal: refuse rather than hang.
    result = perk("wallet", "create", "--name", "x", env={**env, "PERK_PASSWORD": ""})
    assert result.returncode == 2
    assert "PERK_PASSWORD" in one_line_error(result)
    result = perk("wallet", "show", "nobody", env=env)
    assert result.returncode == 2
    one_line_error(result)
    result = perk("wallet", "create", "--name", "../escape", env=env)
    assert result.returncode == 2
    assert not (tmp_path.parent / "escape.json").exists()


# --- bench ----------------------------------------------------------------------------


def test_bench_ledger_json(tmp_path):
    report = perk_json("bench", "ledger", "--txs", "200", "--block-size", "50")
    assert report["benchmark"] == "ledger"
    assert report["transactions"] == 200
    assert report["state_root_matches"] is True


def test_a_frame_limit_too_small_for_a_full_block_is_refused(tmp_path):
    from node.config import MIN_FRAME_BYTES, ConfigError, validate

    home = tmp_path / "home"
    perk_json("init", "--home", str(home))
    config = load_config(home)
    config.p2p.max_frame_bytes = MIN_FRAME_BYTES - 1
    with pytest.raises(ConfigError, match="max_frame_bytes"):
        validate(config)
