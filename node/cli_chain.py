"""`perk` commands that talk to a node's API: queries and transactions.

Transactions are built and signed here, never on the node: the wallet's key
stays on this machine. Each one expires a short while after the node's latest
block time (`--ttl`, 600 s by default, at most MAX_TTL_S), so a copy that
never made it cannot be replayed later. By default the command waits until
the transaction is final and exits 1 if the ledger refused it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
from collections.abc import Awaitable, Callable
from typing import Any

from client import builders
from client.http import ApiError, AsyncClient, Conflict, NotFound, Rejected
from client.keys import Keypair
from node.cli_common import (
    EXIT_OK,
    EXIT_REFUSED,
    CliError,
    Output,
    api_parent,
    json_parent,
    positive_float,
    positive_int,
    print_fields,
    print_table,
)
from node.cli_wallet import add_password_file_option, add_wallet_dir_option, load_signer
from state.address import AddressError, parse_address
from state.codec import sha256
from state.codes import Code
from state.tx import MAX_TTL_S

DEFAULT_TTL_S = 600
_TX_HASH = re.compile(r"[0-9a-fA-F]{64}")

# A transaction builder given the API (for reads it needs), the signer, the
# chain id and the expiry.
Build = Callable[[AsyncClient, Keypair, str, int], Awaitable[bytes]]


def run_with_client(
    args: argparse.Namespace, work: Callable[[AsyncClient], Awaitable[Any]]
) -> Any:
    """Run `work(api)` on a fresh event loop with a client for --api."""
    try:
        client = AsyncClient(args.api, timeout=args.timeout)
    except ValueError as exc:
        raise CliError(str(exc)) from None

    async def session() -> Any:
        async with client as api:
            # Signing commands compare the chain id themselves, by signing
            # with it; queries check it here when one is given.
            if getattr(args, "chain_id", None) and not getattr(args, "signs", False):
                await check_chain(api, args.chain_id)
            return await work(api)

    return asyncio.run(session())


async def check_chain(api: AsyncClient, chain_id: str) -> dict:
    status = await api.status()
    if status.get("chain_id") != chain_id:
        raise CliError(
            f"the node at {api.base_url} serves chain {status.get('chain_id')!r}, "
            f"not {chain_id!r}"
        )
    return status


def address_arg(text: str, what: str) -> str:
    """Refuse a malformed address before asking the node (exit 2)."""
    try:
        parse_address(text)
    except AddressError as exc:
        raise CliError(f"{what}: {exc}") from None
    return text


# --- queries --------------------------------------------------------------------------


def show_status(args: argparse.Namespace, out: Output) -> int:
    out.emit(run_with_client(args, lambda api: api.status()))
    return EXIT_OK


def show_block(args: argparse.Namespace, out: Output) -> int:
    height: int | str = "latest" if args.height is None else args.height
    doc = run_with_client(args, lambda api: api.block(height))
    out.emit(doc, lambda: print_block(doc))
    return EXIT_OK


def print_block(doc: dict) -> None:
    """The header's main facts, then one line per transaction."""
    header = doc.get("header") or {}
    txs = doc.get("txs") or []
    print_fields(
        {
            "height": doc.get("height"),
            "hash": doc.get("hash"),
            "time_ms": header.get("time_ms"),
            "proposer": header.get("proposer"),
            "state_root": header.get("state_root"),
            "txs": doc.get("tx_count", len(txs)),
        }
    )
    rows = [
        {
            "index": tx.get("index"),
            "hash": tx.get("hash"),
            "kind": tx.get("kind"),
            "code": (tx.get("receipt") or {}).get("code"),
        }
        for tx in txs
    ]
    if rows:
        print()
        print_table(rows, ["index", "hash", "kind", "code"])


def show_tx(args: argparse.Namespace, out: Output) -> int:
    if not _TX_HASH.fullmatch(args.hash):
        raise CliError("a transaction hash is 64 hexadecimal characters")
    doc = run_with_client(args, lambda api: api.tx(args.hash.lower()))
    # The raw bytes and signature are for programs; people get the meaning.
    hidden = ("raw", "hash", "signature")
    tx = {k: v for k, v in (doc.get("tx") or {}).items() if k not in hidden}
    brief = {k: v for k, v in doc.items() if k != "tx"}
    out.emit(doc, lambda: print_fields({**brief, **({"tx": tx} if tx else {})}))
    return EXIT_REFUSED if doc.get("status") == "rejected" else EXIT_OK


def show_balance(args: argparse.Namespace, out: Output) -> int:
    address = address_arg(args.address, "address")
    doc = run_with_client(args, lambda api: api.account(address))

    def human() -> None:
        summary = {"address": address}
        for key in ("balance", "frozen", "debt"):
            if key in doc:
                summary[key] = doc[key]
        if isinstance(doc.get("lots"), list):
            summary["lots"] = len(doc["lots"])
        print_fields(summary)

    out.emit(doc, human)
    return EXIT_OK


def show_history(args: argparse.Namespace, out: Output) -> int:
    address = address_arg(args.address, "address")
    doc = run_with_client(
        args, lambda api: api.account(address, args.limit, args.cursor)
    )
    history = doc.get("history") or []
    next_cursor = doc.get("next_cursor", doc.get("cursor"))
    result = {"address": address, "history": history, "next_cursor": next_cursor}

    def human() -> None:
        if not history:
            print("no history")
        else:
            columns = list(history[0]) if isinstance(history[0], dict) else []
            print_table(
                [h if isinstance(h, dict) else {"value": h} for h in history],
                columns or ["value"],
            )
        if next_cursor:
            print(f"more: --cursor {next_cursor}")

    out.emit(result, human)
    return EXIT_OK


def show_merchant(args: argparse.Namespace, out: Output) -> int:
    address = address_arg(args.address, "merchant")
    out.emit(run_with_client(args, lambda api: api.merchant(address)))
    return EXIT_OK


def show_validators(args: argparse.Namespace, out: Output) -> int:
    out.emit(run_with_client(args, lambda api: api.validators()))
    return EXIT_OK


# --- transactions ---------------------------------------------------------------------


def expiry_from(status: dict, ttl: int) -> int:
    """expires_at: the node's latest block time plus `ttl`, capped at
    MAX_TTL_S, since the block that includes it is at least that late."""
    block_time_ms = status.get("latest_block_time_ms")
    if type(block_time_ms) is not int:
        raise CliError("the node's status has no latest_block_time_ms", EXIT_REFUSED)
    return block_time_ms // 1000 + min(ttl, MAX_TTL_S)


def submit_signed(args: argparse.Namespace, out: Output, build: Build) -> int:
    # The password is asked before any network traffic, so a prompt is never
    # left waiting while a connection times out.
    signer = load_signer(args)

    async def work(api: AsyncClient) -> tuple[bytes, dict]:
        status = await api.status()
        chain_id = args.chain_id or status.get("chain_id")
        if not chain_id:
            raise CliError("the node's status has no chain_id; give --chain-id")
        raw = await build(api, signer, chain_id, expiry_from(status, args.ttl))
        result = await api.submit(raw, wait=args.wait, timeout=args.wait_timeout)
        return raw, result

    try:
        raw, result = run_with_client(args, work)
    except (builders.BuildError, AddressError) as exc:
        raise CliError(str(exc)) from None
    except (Rejected, Conflict) as exc:
        report = refusal_report(exc)
        if report is None:
            raise
        out.emit(report, lambda: print_fields(report))
        return EXIT_REFUSED
    report = tx_report(raw, result)
    out.emit(report, lambda: print_fields(report))
    refused = report["status"] == "rejected" or report["code"] not in (None, "ok")
    return EXIT_REFUSED if refused else EXIT_OK


def tx_report(raw: bytes, result: dict) -> dict:
    """hash, status, height and receipt code of a submission's answer."""
    receipt = result.get("receipt") if isinstance(result.get("receipt"), dict) else {}
    code = receipt.get("code", result.get("code"))
    report = {
        "hash": result.get("hash") or sha256(raw).hex(),
        "status": result.get("status", "pending"),
        "height": result.get("height"),
        "code": code_slug(code),
    }
    detail = receipt.get("detail", result.get("detail"))
    if detail:
        report["detail"] = detail
    return report


def refusal_report(exc: ApiError) -> dict | None:
    """The report for a transaction the node refused or the ledger recorded as
    refused (a problem naming the transaction's hash); None for other errors."""
    body = exc.body if isinstance(exc.body, dict) else {}
    if not body.get("hash"):
        return None
    committed = body.get("height") is not None
    return {
        "hash": body["hash"],
        "status": "committed" if committed else "rejected",
        "height": body.get("height"),
        "code": exc.code,
        "detail": exc.detail,
    }


def code_slug(code: Any) -> str | None:
    """A receipt code as its stable lower-case name, whichever form it came in."""
    if code is None:
        return None
    if type(code) is int:
        try:
            return Code(code).slug
        except ValueError:
            return str(code)
    return str(code).lower()


def award(args: argparse.Namespace, out: Output) -> int:
    customer = address_arg(args.customer, "customer")

    async def build(api: AsyncClient, key: Keypair, chain: str, expires: int) -> bytes:
        return builders.award_purchase(
            key, chain, expires, customer, args.order_id, args.amount,
            args.paid_with_coins, args.category,
        )  # fmt: skip

    return submit_signed(args, out, build)


def refund(args: argparse.Namespace, out: Output) -> int:
    async def build(api: AsyncClient, key: Keypair, chain: str, expires: int) -> bytes:
        return builders.refund_purchase(key, chain, expires, args.order_id, args.amount)

    return submit_signed(args, out, build)


def redeem(args: argparse.Namespace, out: Output) -> int:
    merchant = address_arg(args.merchant, "merchant")

    async def build(api: AsyncClient, key: Keypair, chain: str, expires: int) -> bytes:
        return builders.redeem(
            key, chain, expires, merchant, args.amount, args.reference
        )

    return submit_signed(args, out, build)


def transfer(args: argparse.Namespace, out: Output) -> int:
    to = address_arg(args.to, "to")

    async def build(api: AsyncClient, key: Keypair, chain: str, expires: int) -> bytes:
        return builders.transfer(key, chain, expires, to, args.amount, args.memo)

    return submit_signed(args, out, build)


def register_merchant(args: argparse.Namespace, out: Output) -> int:
    merchant = address_arg(args.merchant, "merchant")

    async def build(api: AsyncClient, key: Keypair, chain: str, expires: int) -> bytes:
        return builders.register_merchant(
            key, chain, expires, merchant, args.name, args.rate, args.cap
        )

    return submit_signed(args, out, build)


def update_merchant(args: argparse.Namespace, out: Output) -> int:
    merchant = address_arg(args.merchant, "merchant")

    async def build(api: AsyncClient, key: Keypair, chain: str, expires: int) -> bytes:
        # An update restates every term; the ones not given keep their
        # current values as the node reports them.
        try:
            current = await api.merchant(merchant)
        except NotFound:
            raise CliError(f"no merchant {merchant} on chain", EXIT_REFUSED) from None
        name = args.name if args.name is not None else current.get("name")
        rate = args.rate if args.rate is not None else current.get("rate")
        cap = args.cap if args.cap is not None else current.get("daily_cap")
        active = args.active if args.active is not None else current.get("active")
        if name is None or rate is None or cap is None or active is None:
            raise CliError("cannot read the merchant's current terms; give them all")
        return builders.update_merchant(
            key, chain, expires, merchant, name, rate, cap, active
        )

    return submit_signed(args, out, build)


def set_frozen(frozen: bool) -> Callable[[argparse.Namespace, Output], int]:
    def command(args: argparse.Namespace, out: Output) -> int:
        account = address_arg(args.account, "account")

        async def build(
            api: AsyncClient, key: Keypair, chain: str, expires: int
        ) -> bytes:
            return builders.set_account_frozen(
                key, chain, expires, account, frozen, args.reason
            )

        return submit_signed(args, out, build)

    return command


# --- parsers --------------------------------------------------------------------------


def ttl_seconds(text: str) -> int:
    value = positive_int(text)
    if value > MAX_TTL_S:
        raise argparse.ArgumentTypeError(f"at most {MAX_TTL_S} seconds")
    return value


def chain_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False, parents=[api_parent()])
    parent.add_argument(
        "--chain-id", metavar="ID", help="expected chain id (default: the node's)"
    )
    return parent


def signer_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False, parents=[chain_parent()])
    parent.add_argument(
        "--wallet", required=True, metavar="W", help="signing wallet (name or path)"
    )
    add_wallet_dir_option(parent, "--wallet-dir")
    add_password_file_option(parent)
    parent.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait until the transaction is final (default: wait)",
    )
    parent.add_argument(
        "--wait-timeout",
        type=positive_float,
        metavar="S",
        help="longest wait for finality (default: the node's)",
    )
    parent.add_argument(
        "--ttl",
        type=ttl_seconds,
        default=DEFAULT_TTL_S,
        metavar="S",
        help=f"valid for S seconds after the latest block (max {MAX_TTL_S})",
    )
    parent.set_defaults(signs=True)
    return parent


def add_chain_parsers(commands: argparse._SubParsersAction) -> None:
    add_query_parsers(commands)
    add_tx_parsers(commands)


def add_query_parsers(commands: argparse._SubParsersAction) -> None:
    common = [json_parent(), chain_parent()]
    p = commands.add_parser("status", help="the node's status", parents=common)
    p.set_defaults(handler=show_status)

    p = commands.add_parser("block", help="a block (default: latest)", parents=common)
    p.add_argument("height", nargs="?", type=positive_int)
    p.set_defaults(handler=show_block)

    p = commands.add_parser("tx", help="a transaction by hash", parents=common)
    p.add_argument("hash")
    p.set_defaults(handler=show_tx)

    p = commands.add_parser("balance", help="an account's balance", parents=common)
    p.add_argument("address")
    p.set_defaults(handler=show_balance)

    p = commands.add_parser("history", help="an account's history", parents=common)
    p.add_argument("address")
    p.add_argument("--limit", type=positive_int, help="entries per page")
    p.add_argument("--cursor", help="continue from a previous page")
    p.set_defaults(handler=show_history)

    p = commands.add_parser("validators", help="the validator set", parents=common)
    p.set_defaults(handler=show_validators)


def add_tx_parsers(commands: argparse._SubParsersAction) -> None:
    signed = [json_parent(), signer_parent()]
    p = commands.add_parser(
        "award", help="award coins for a purchase (merchant)", parents=signed
    )
    p.add_argument("customer")
    p.add_argument("order_id")
    p.add_argument("amount", type=int, help="purchase amount in minor units")
    p.add_argument(
        "--paid-with-coins", type=int, default=0, metavar="UNITS",
        help="the part of the amount paid with coins (it earns nothing)",
    )  # fmt: skip
    p.add_argument(
        "--category", default="", help="the merchant's earning category, if any"
    )
    p.set_defaults(handler=award)

    p = commands.add_parser(
        "refund",
        help="refund part or all of an order; its coins are clawed back (merchant)",
        parents=signed,
    )
    p.add_argument("order_id")
    p.add_argument("amount", type=int, help="refunded amount in minor units")
    p.set_defaults(handler=refund)

    p = commands.add_parser("redeem", help="spend coins at a merchant", parents=signed)
    p.add_argument("merchant")
    p.add_argument("amount", type=int)
    p.add_argument("--reference", default="", help="the merchant's reference")
    p.set_defaults(handler=redeem)

    p = commands.add_parser("transfer", help="send coins", parents=signed)
    p.add_argument("to")
    p.add_argument("amount", type=int)
    p.add_argument("--memo", default="")
    p.set_defaults(handler=transfer)

    for name, frozen in (("freeze", True), ("unfreeze", False)):
        p = commands.add_parser(name, help=f"{name} an account (admin)", parents=signed)
        p.add_argument("account")
        p.add_argument("--reason", default="", help="recorded on chain")
        p.set_defaults(handler=set_frozen(frozen))

    merchant = commands.add_parser(
        "merchant", help="register, update or show merchants", parents=[json_parent()]
    )
    sub = merchant.add_subparsers(dest="merchant_command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("register", help="admit a merchant (admin)", parents=signed)
    p.add_argument("merchant")
    p.add_argument("name")
    p.add_argument("rate", type=int, help="coins per 100 minor units of spend")
    p.add_argument("cap", type=int, help="daily award cap in coins")
    p.set_defaults(handler=register_merchant)

    p = sub.add_parser(
        "update", help="change a merchant's terms (admin)", parents=signed
    )
    p.add_argument("merchant")
    p.add_argument("--name")
    p.add_argument("--rate", type=int)
    p.add_argument("--cap", type=int)
    state = p.add_mutually_exclusive_group()
    state.add_argument("--suspend", dest="active", action="store_false", default=None)
    state.add_argument("--activate", dest="active", action="store_true", default=None)
    p.set_defaults(handler=update_merchant)

    p = sub.add_parser(
        "show", help="a merchant's terms", parents=[json_parent(), chain_parent()]
    )
    p.add_argument("address")
    p.set_defaults(handler=show_merchant)
