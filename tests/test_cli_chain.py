"""`perk` commands that talk to a node, against a scripted node API.

The fake node records the signed bytes each command submits; decoding them as
a node would checks the chain id, expiry, signer and payload the CLI chose.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import nacl.pwhash.argon2id as argon2id
import pytest

from client.keys import Keypair
from client.keystore import save_keystore
from state.codec import sha256
from state.tx import Kind, decode_tx
from tests.test_cli import one_line_error, perk
from tests.test_client_http import (
    BLOCK_TIME_MS,
    CHAIN_ID,
    FakeNode,
    ThreadedServer,
    closed_port,
    problem,
)

PASSWORD = "open sesame"


@pytest.fixture
def fake() -> FakeNode:
    return FakeNode()


@pytest.fixture
def server(fake: FakeNode) -> Iterator[ThreadedServer]:
    with ThreadedServer(fake.app()) as running:
        yield running


@pytest.fixture
def wallet(tmp_path) -> Keypair:
    key = Keypair.generate()
    (tmp_path / "wallets").mkdir()
    # The cheapest KDF settings: the file format is the same, the suite faster.
    save_keystore(
        tmp_path / "wallets" / "shop.json",
        key,
        PASSWORD,
        "shop",
        opslimit=argon2id.OPSLIMIT_MIN,
        memlimit=argon2id.MEMLIMIT_MIN,
    )
    return key


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    return {"PERK_WALLET_DIR": str(tmp_path / "wallets"), "PERK_PASSWORD": PASSWORD}


def submitted(fake: FakeNode):
    raws = [r["raw"] for r in fake.requests if r["route"] == "submit"]
    assert len(raws) == 1
    return decode_tx(raws[0])


def run_json(*args: str, env: dict[str, str]) -> tuple[int, dict]:
    result = perk("--json", *args, env=env)
    return result.returncode, json.loads(result.stdout) if result.stdout else {}


OTHER = Keypair.from_seed(bytes(range(32))).address


# --- transactions ---------------------------------------------------------------------


def test_transfer_signs_waits_and_reports(fake, server, wallet, env):
    code, report = run_json(
        "transfer", "--api", server.url, "--wallet", "shop", OTHER, "25",
        "--memo", "lunch", env=env,
    )  # fmt: skip
    assert code == 0
    tx = submitted(fake)
    assert report == {
        "hash": tx.hash.hex(),
        "status": "committed",
        "height": 8,
        "code": "ok",
    }
    assert tx.kind == Kind.TRANSFER
    assert tx.chain_id == CHAIN_ID
    assert tx.signer == wallet.public_key
    assert tx.verify_signature()
    assert tx.expires_at == BLOCK_TIME_MS // 1000 + 600
    assert (tx.payload.amount, tx.payload.memo) == (25, "lunch")
    assert fake.requests[-1]["query"] == {"wait": "true"}


def test_transfer_human_output(fake, server, wallet, env):
    result = perk(
        "transfer", "--api", server.url, "--wallet", "shop", OTHER, "1", env=env
    )
    assert result.returncode == 0, result.stderr
    assert "status  committed" in result.stdout
    assert "code    ok" in result.stdout


def test_options_no_wait_ttl_and_chain_id(fake, server, wallet, env):
    code, report = run_json(
        "redeem", "--api", server.url, "--wallet", "shop", OTHER, "5",
        "--no-wait", "--ttl", "3600", "--chain-id", "other-chain",
        "--reference", "r-1", env=env,
    )  # fmt: skip
    assert code == 0
    tx = submitted(fake)
    assert tx.expires_at == BLOCK_TIME_MS // 1000 + 3600
    assert tx.chain_id == "other-chain"
    assert tx.payload.reference == "r-1"
    assert fake.requests[-1]["query"] == {}

    too_long = perk(
        "redeem", "--api", server.url, "--wallet", "shop", OTHER, "5", "--ttl", "3601",
        env=env,
    )  # fmt: skip
    assert too_long.returncode == 2


@pytest.mark.parametrize(
    ("args", "kind", "fields"),
    [
        (["award", OTHER, "order-9", "1250"], Kind.AWARD_PURCHASE,
         {"order_id": "order-9", "amount": 1250}),
        (["award", OTHER, "order-10", "1250", "--paid-with-coins", "250",
          "--category", "books"], Kind.AWARD_PURCHASE,
         {"order_id": "order-10", "amount": 1250, "paid_with_coins": 250,
          "category": "books"}),
        (["refund", "order-9", "400"], Kind.REFUND_PURCHASE,
         {"order_id": "order-9", "amount": 400}),
        (["freeze", OTHER, "--reason", "fraud"], Kind.SET_ACCOUNT_FROZEN,
         {"frozen": True, "reason": "fraud"}),
        (["unfreeze", OTHER], Kind.SET_ACCOUNT_FROZEN, {"frozen": False}),
        (["merchant", "register", OTHER, "Bakery", "7", "900"],
         Kind.REGISTER_MERCHANT, {"name": "Bakery", "rate": 7, "daily_cap": 900}),
    ],
)  # fmt: skip
def test_each_kind_is_built_from_its_arguments(
    fake, server, wallet, env, args, kind, fields
):
    command, rest = args[:1], args[1:]
    if command == ["merchant"]:
        command, rest = args[:2], args[2:]
    code, _ = run_json(
        *command, "--api", server.url, "--wallet", "shop", *rest, env=env
    )
    assert code == 0
    tx = submitted(fake)
    assert tx.kind == kind
    for name, value in fields.items():
        assert getattr(tx.payload, name) == value


def test_merchant_update_keeps_terms_not_given(fake, server, wallet, env):
    code, _ = run_json(
        "merchant", "update", "--api", server.url, "--wallet", "shop", OTHER,
        "--rate", "15", "--suspend", env=env,
    )  # fmt: skip
    assert code == 0
    payload = submitted(fake).payload
    assert (payload.name, payload.rate, payload.daily_cap, payload.active) == (
        "Corner Shop",
        15,
        5000,
        False,
    )


def test_ledger_refusal_reports_and_exits_1(fake, server, wallet, env):
    # A committed transaction the ledger refused comes back as a problem that
    # names the block; the CLI reports it like any other outcome.
    fake.answers["submit"] = lambda seen: problem(
        422,
        "insufficient_balance",
        "committed at height 9, refused by the ledger: insufficient_balance",
        hash=sha256(seen["raw"]).hex(),
        height=9,
        index=0,
    )
    code, report = run_json(
        "transfer", "--api", server.url, "--wallet", "shop", OTHER, "9", env=env
    )
    assert code == 1
    assert report["hash"] == submitted(fake).hash.hex()
    assert (report["status"], report["height"], report["code"]) == (
        "committed",
        9,
        "insufficient_balance",
    )


def test_admission_rejection_reports_and_exits_1(fake, server, wallet, env):
    fake.answers["submit"] = lambda seen: problem(
        422, "expired", "expired at 5", hash=sha256(seen["raw"]).hex()
    )
    result = perk(
        "transfer", "--api", server.url, "--wallet", "shop", OTHER, "9", env=env
    )
    assert result.returncode == 1
    assert "status  rejected" in result.stdout
    assert "code    expired" in result.stdout


def test_other_refusals_are_one_line_errors(fake, server, wallet, env):
    fake.answers["submit"] = lambda seen: problem(415, "unsupported_media_type", "no")
    result = perk(
        "transfer", "--api", server.url, "--wallet", "shop", OTHER, "9", env=env
    )
    assert result.returncode == 1
    assert "unsupported_media_type" in one_line_error(result)
    result = perk(
        "--json", "transfer", "--api", server.url, "--wallet", "shop", OTHER, "9",
        env=env,
    )  # fmt: skip
    error = json.loads(one_line_error(result))
    assert (error["code"], error["status"]) == ("unsupported_media_type", 415)


def test_unavailable_without_retry_after_exits_3(fake, server, wallet, env):
    fake.answers["submit"] = lambda seen: problem(503, "stopping", "")
    result = perk(
        "transfer", "--api", server.url, "--wallet", "shop", OTHER, "9", env=env
    )
    assert result.returncode == 3
    one_line_error(result)


def test_unreachable_node_exits_3(wallet, env):
    api = f"http://127.0.0.1:{closed_port()}"
    result = perk("transfer", "--api", api, "--wallet", "shop", OTHER, "9", env=env)
    assert result.returncode == 3
    assert "unreachable" in one_line_error(result)
    result = perk("status", env={"PERK_API": api})
    assert result.returncode == 3


def test_bad_input_exits_2_before_any_request(fake, server, wallet, env):
    for args in (
        ["transfer", "--wallet", "shop", "perk1bad", "9"],
        ["transfer", "--wallet", "nobody", OTHER, "9"],
        ["transfer", "--wallet", "shop", OTHER, "nine"],
        ["balance", OTHER.upper()[:-1] + "Q"],
        ["tx", "abc"],
    ):
        result = perk(*args, "--api", server.url, env=env)
        assert result.returncode == 2, args
    wrong = perk(
        "transfer", "--api", server.url, "--wallet", "shop", OTHER, "9",
        env={**env, "PERK_PASSWORD": "wrong"},
    )  # fmt: skip
    assert wrong.returncode == 2
    assert "wrong password" in one_line_error(wrong)
    assert fake.requests == []


# --- queries --------------------------------------------------------------------------


def test_queries(fake, server, env):
    assert run_json("status", "--api", server.url, env=env)[1]["height"] == 7
    code, account = run_json("balance", OTHER, "--api", server.url, env=env)
    assert (code, account["balance"]) == (0, 42)
    code, history = run_json(
        "history", OTHER, "--limit", "1", "--cursor", "00aa", "--api", server.url,
        env=env,
    )  # fmt: skip
    assert history["next_cursor"] == "00ff"
    assert fake.requests[-1]["query"] == {"limit": "1", "cursor": "00aa"}
    assert run_json("block", "3", "--api", server.url, env=env)[1]["height"] == 7
    code, merchant = run_json("merchant", "show", OTHER, "--api", server.url, env=env)
    assert merchant["rate"] == 10

    text = perk("balance", OTHER, "--api", server.url, env=env).stdout
    assert "balance  42" in text
    text = perk("history", OTHER, "--api", server.url, env=env).stdout
    assert "--cursor 00ff" in text


def test_query_errors(fake, server, env):
    missing = perk("tx", "ab" * 32, "--api", server.url, env=env)
    assert missing.returncode == 1
    assert "not_found" in one_line_error(missing)
    wrong_chain = perk("status", "--api", server.url, "--chain-id", "nope", env=env)
    assert wrong_chain.returncode == 2
    assert "serves chain" in one_line_error(wrong_chain)
