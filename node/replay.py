"""`perk replay`: real retail purchases through a live local network.

The replay sets up a coalition program as a company would, then feeds the
invoices of the UCI Online Retail data (node.retail_data) through the HTTP
API of a devnet, in the data's own time:

- one merchant per country (the data's only notion of a store), earning
  10 coins per 100 pence spent, registered by the program admin, with
  settlement terms (it pays PRICE_PER_COIN pence per coin it issues and is
  reimbursed REIMBURSEMENT_PER_COIN pence per coin redeemed at it);
- program rules: tiers on coins earned over 365 days (TIERS), coins expiring
  365 days after they are earned, and a double-points campaign over the
  2011 Black Friday to December shopping weeks (CAMPAIGN);
- each sale invoice with a customer is a purchase award signed by its
  merchant, with the invoice number as order id;
- each cancellation (`C` invoice) refunds the customer's latest earlier
  purchases at that merchant, newest first, up to the cancelled amount (the
  data does not say which order a return belongs to; this rule does);
- customers redeem at a partner: at the end of each data day, a customer whose
  balance (as the node reports it, so expired coins are gone) holds twice
  VOUCHER_COINS redeems one voucher of VOUCHER_COINS at the merchant that
  follows their own in alphabetical order (so coalition settlement has
  something to settle);
- block time follows the data: before each data day the devnet clock (a
  devnet-only control, node.clock) is set to that day's last invoice time, the
  day's transactions go to one validator as one batch, and the replay waits
  until they are final before moving the clock on. Rules that read block time
  therefore see the data's days, and two runs over the same rows reach the
  same state root.

Accounts are derived from the data's opaque customer numbers with a hash, as a
program's CRM would derive them from its own ids (docs/loyalty.md).
"""

from __future__ import annotations

import asyncio
import fcntl
import functools
import hashlib
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from client import builders
from client.keys import Keypair
from client.keystore import load_keystore
from node.audit import audit_api
from node.devnet import ADMIN_PASSWORD_FILE, DEVNET_FILE, WALLET_DIR, down, up
from node.follow import committed_outcomes
from node.retail_data import Invoice, ReadStats, data_files, read_invoices
from state.address import address_of
from state.changes import ChangeAction
from state.codec import encode, sha256
from state.codes import Code
from state.genesis import load_genesis

EARN_RATE = 10  # coins per 100 pence
PRICE_PER_COIN = 1  # pence the issuing merchant pays per coin
REIMBURSEMENT_PER_COIN = 1  # pence paid to the merchant per coin redeemed there
# [window_days, [[coins earned in the window, multiplier in basis points]]]:
# silver from 1,000,000 coins (£100,000 spent in a year), gold from 2,500,000.
TIERS = [365, [[1_000_000, 12_500], [2_500_000, 15_000]]]
EXPIRY = [1, 365]  # policy "days": coins expire 365 days after the day earned
# Double points from Black Friday 2011 to the end of the data (UTC seconds).
CAMPAIGN = ["holiday-2011", 1_322_179_200, 1_323_648_000, 20_000, 0, 0, []]
MERCHANT_DAILY_CAP = 10**12
VOUCHER_COINS = 5_000  # what £500 of purchases earns at 10 coins per £1
TTL_S = 3_000
BLOCK_INTERVAL_MS = 100
SEED = "replay"
CHAIN_ID = "perk-replay-1"
MSGPACK = "application/msgpack"
BATCH = 2_000
SECONDS_PER_DAY = 86_400
# Receipt events whose delta is a change of the account's spendable balance.
BALANCE_EVENTS = frozenset(
    {"earn", "redeem", "transfer_in", "transfer_out", "clawback", "reverse"}
)


# Keys are derived (SHA-256, then Ed25519 key generation) once per name.
@functools.cache
def customer_key(customer: str) -> Keypair:
    seed = hashlib.sha256(f"perk-replay/customer/{customer}".encode()).digest()
    return Keypair.from_seed(seed)


@functools.cache
def merchant_key(country: str) -> Keypair:
    seed = hashlib.sha256(f"perk-replay/merchant/{country}".encode()).digest()
    return Keypair.from_seed(seed)


@dataclass
class Tracking:
    """What the replay learns from receipts as it goes."""

    submitted_at: dict[bytes, float] = field(default_factory=dict)
    final_at: dict[bytes, float] = field(default_factory=dict)
    codes: Counter = field(default_factory=Counter)
    kinds: Counter = field(default_factory=Counter)
    balances: Counter = field(default_factory=Counter)
    height: int = 0


class Replay:
    def __init__(self, session: aiohttp.ClientSession, doc: dict, root: Path):
        self.session = session
        self.doc = doc
        self.root = root
        self.validators = [n["api"] for n in doc["nodes"] if n["kind"] == "validator"]
        self.auditors = [n["api"] for n in doc["nodes"] if n["kind"] == "auditor"]
        self.chain_id = doc["chain_id"]
        password = (root / ADMIN_PASSWORD_FILE).read_text().strip()
        self.admin = load_keystore(root / WALLET_DIR / "admin.json", password)
        self.track = Tracking()
        self.kind_of: dict[bytes, str] = {}
        # Per customer and merchant: [order id, amount not yet refunded], oldest
        # first; what a cancellation can refund.
        self.orders: dict[tuple[str, str], list[list]] = defaultdict(list)
        self.unmatched_refunds = 0
        # Each customer's first merchant, where their purchases are refunded
        # and after which they redeem; and their keys by account.
        self.home: dict[bytes, str] = {}
        self.customers: dict[bytes, Keypair] = {}
        self.merchants: list[str] = []

    # --- the clock and the chain ---

    def set_clock(self, time_s: int) -> None:
        from node.clock import write_clock_file
        from node.devnet import CLOCK_FILE

        write_clock_file(self.root / CLOCK_FILE, time_s * 1000)

    async def status(self, url: str) -> dict:
        async with self.session.get(f"{url}/v1/status") as response:
            return await response.json()

    async def submit(self, txs: list[tuple[str, bytes]]) -> None:
        """Send one day's transactions to one validator, as ordered batches."""
        url = self.validators[0]
        for i in range(0, len(txs), BATCH):
            chunk = txs[i : i + BATCH]
            now = time.monotonic()
            for kind, raw in chunk:
                tx_hash = sha256(raw)
                self.track.submitted_at[tx_hash] = now
                self.kind_of[tx_hash] = kind
            async with self.session.post(
                f"{url}/v1/transactions/batch",
                data=encode([raw for _, raw in chunk]),
                headers={"Content-Type": MSGPACK},
            ) as response:
                doc = await response.json(content_type=None)
            if response.status != 200:
                raise RuntimeError(f"batch refused: {response.status} {doc}")
            for (_, raw), result in zip(chunk, doc["results"], strict=True):
                if result.get("status") != "pending":
                    self.track.codes[f"refused:{result.get('code')}"] += 1
                    self.track.submitted_at.pop(sha256(raw), None)

    async def wait_final(self, timeout: float = 120.0) -> None:
        """Follow blocks until everything submitted is final."""
        url = self.validators[0]
        deadline = time.monotonic() + timeout
        while any(h not in self.track.final_at for h in self.track.submitted_at):
            if time.monotonic() > deadline:
                raise RuntimeError("transactions not final in time")
            tip = (await self.status(url))["height"]
            while self.track.height < tip:
                await self.read_block(url, self.track.height + 1)
                self.track.height += 1
            await asyncio.sleep(0.02)

    async def read_block(self, url: str, height: int) -> None:
        outcomes = await committed_outcomes(self.session, url, height)
        now = time.monotonic()
        for tx_hash, receipt in outcomes:
            if tx_hash not in self.track.submitted_at:
                continue
            self.track.final_at[tx_hash] = now
            self.track.codes[receipt.code.slug] += 1
            self.track.kinds[(self.kind_of[tx_hash], receipt.code.slug)] += 1
            for event, account, delta in receipt.events:
                if event in BALANCE_EVENTS:
                    self.track.balances[account] += delta

    async def balance(self, account: bytes) -> int:
        url = f"{self.validators[0]}/v1/accounts/{address_of(account)}?limit=1"
        async with self.session.get(url) as response:
            return (await response.json())["balance"]

    # --- the program ---

    async def set_up_program(self, invoices: list[Invoice], start_s: int) -> None:
        self.merchants = sorted({i.country for i in invoices})
        self.set_clock(start_s)
        txs = [
            (
                "register_merchant",
                builders.register_merchant(
                    self.admin, self.chain_id, start_s + TTL_S,
                    merchant_key(country).public_key, country[:64], EARN_RATE,
                    MERCHANT_DAILY_CAP,
                ),
            )
            for country in self.merchants
        ]  # fmt: skip
        deadline = start_s + 86_400
        expires = start_s + TTL_S
        for action, args in [
            *(
                (
                    ChangeAction.MERCHANT_TERMS,
                    [
                        merchant_key(c).public_key,
                        PRICE_PER_COIN,
                        REIMBURSEMENT_PER_COIN,
                        [],
                    ],
                )
                for c in self.merchants
            ),
            (ChangeAction.TIERS, TIERS),
            (ChangeAction.EXPIRY, EXPIRY),
            (ChangeAction.CAMPAIGN, CAMPAIGN),
        ]:
            raw = builders.propose_change(
                self.admin, self.chain_id, expires, action, args, deadline
            )
            txs.append((f"program:{action.name.lower()}", raw))
        await self.submit(txs)
        await self.wait_final()  # fmt: skip

    # --- one data day ---

    def day_transactions(self, day: list[Invoice], now_s: int) -> list[tuple]:
        expires = now_s + TTL_S
        txs = []
        for invoice in day:
            merchant = merchant_key(invoice.country)
            customer = customer_key(invoice.customer)
            self.customers[customer.public_key] = customer
            key = (invoice.customer, invoice.country)
            if not invoice.is_cancellation:
                raw = builders.award_purchase(
                    merchant, self.chain_id, expires, customer.public_key,
                    invoice.number, invoice.pence,
                )  # fmt: skip
                txs.append(("award", raw))
                self.orders[key].append([invoice.number, invoice.pence])
                self.home.setdefault(customer.public_key, invoice.country)
                continue
            txs.extend(self.refunds_for(invoice, merchant, expires))
        return txs

    def refunds_for(self, invoice: Invoice, merchant: Keypair, expires: int) -> list:
        remaining = -invoice.pence
        out = []
        for order in reversed(self.orders[(invoice.customer, invoice.country)]):
            if remaining <= 0:
                break
            part = min(remaining, order[1])
            if part <= 0:
                continue
            order[1] -= part
            remaining -= part
            raw = builders.refund_purchase(
                merchant, self.chain_id, expires, order[0], part
            )
            out.append(("refund", raw))
        if remaining > 0:
            self.unmatched_refunds += 1
        return out

    async def redemptions(self, now_s: int) -> list[tuple]:
        """Customers with at least two vouchers' worth redeem one voucher at the
        next merchant after their own (alphabetical, wrapping).

        Balances followed from receipts only ever overstate (coins that expire
        leave no receipt), so a customer who passes there is checked against
        the balance the node reports."""
        out = []
        for account in sorted(self.home):
            if self.track.balances[account] < 2 * VOUCHER_COINS:
                continue
            balance = await self.balance(account)
            self.track.balances[account] = balance
            if balance < 2 * VOUCHER_COINS:
                continue
            i = self.merchants.index(self.home[account])
            partner = self.merchants[(i + 1) % len(self.merchants)]
            raw = builders.redeem(
                self.customers[account], self.chain_id, now_s + TTL_S,
                merchant_key(partner).public_key, VOUCHER_COINS, "replay",
            )  # fmt: skip
            out.append(("redeem", raw))
        return out

    async def run(self, invoices: list[Invoice], progress=None) -> None:
        self.started = time.monotonic()
        days: dict[int, list[Invoice]] = defaultdict(list)
        for invoice in invoices:
            days[invoice.time_s // SECONDS_PER_DAY].append(invoice)
        for day in sorted(days):
            batch = days[day]
            now_s = max(i.time_s for i in batch)
            self.set_clock(now_s)
            # Redemptions were decided on the balances at the end of the day
            # before; they go first, ahead of this day's refunds.
            txs = await self.redemptions(now_s) + self.day_transactions(batch, now_s)
            await self.submit(txs)
            await self.wait_final()
            if progress is not None:
                elapsed = time.monotonic() - self.started
                rate = len(self.track.final_at) / elapsed if elapsed else 0.0
                progress(sum(i.lines for i in batch), self.track.height, rate)


class ReplayError(Exception):
    """A replay that cannot start; the message says what to do."""


def claim_folder(root: Path):
    """Take the devnet folder for this replay: refuse while another replay
    holds it, stop a devnet still running there, then start from empty."""
    root = root.resolve()
    lock_path = root.parent / f".{root.name}.lock"
    lock = open(lock_path, "w")  # noqa: SIM115 (held for the whole replay)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise ReplayError(
            f"another replay is using {root}; wait for it or use --home"
        ) from None
    if (root / DEVNET_FILE).exists():
        down(root)  # a devnet left running there (by hand, or --keep)
    if root.exists():
        shutil.rmtree(root)
    return lock


async def replay(
    root: Path,
    limit: int | None,
    keep: bool,
    progress_factory=None,
) -> dict:
    invoices, stats = read_invoices(data_files(), limit)
    if not invoices:
        raise RuntimeError("no usable invoices in the rows read")
    start_s = invoices[0].time_s // SECONDS_PER_DAY * SECONDS_PER_DAY - 3_600
    lock = await asyncio.to_thread(claim_folder, root)
    try:
        return await replay_in(root, invoices, stats, start_s, keep, progress_factory)
    finally:
        lock.close()


async def replay_in(root, invoices, stats, start_s, keep, progress_factory) -> dict:
    doc = await asyncio.to_thread(
        up, root, 4, 1, CHAIN_ID, 60.0, SEED, (start_s - 60) * 1000, BLOCK_INTERVAL_MS
    )
    started = time.monotonic()
    try:
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            r = Replay(session, doc, root)
            await r.set_up_program(invoices, start_s)
            progress = progress_factory(stats.rows_used) if progress_factory else None
            await r.run(invoices, progress)
            elapsed = time.monotonic() - started
            report = await build_report(r, invoices, stats, elapsed, root)
    finally:
        if not keep:
            await asyncio.to_thread(down, root)
    return report


async def build_report(
    r: Replay, invoices: list[Invoice], stats: ReadStats, elapsed: float, root: Path
) -> dict:
    track = r.track
    latencies = sorted(
        (track.final_at[h] - track.submitted_at[h]) * 1000 for h in track.final_at
    )
    committed = len(track.final_at)
    roots = await state_roots_at(r, track.height)
    merchants = []
    for country in r.merchants:
        address = address_of(merchant_key(country).public_key)
        async with r.session.get(f"{r.validators[0]}/v1/merchants/{address}") as resp:
            m = await resp.json()
        clawed_back = m.get("clawed_back", 0)
        fee = (m["issued"] - clawed_back) * PRICE_PER_COIN
        reimbursement = m["redeemed"] * REIMBURSEMENT_PER_COIN
        merchants.append(
            {
                "merchant": country,
                "issued": m["issued"],
                "redeemed_at": m["redeemed"],
                "expired": m.get("expired", 0),
                "clawed_back": clawed_back,
                "fee_pence": fee,
                "reimbursement_pence": reimbursement,
                "net_pence": reimbursement - fee,
            }
        )
    merchants.sort(key=lambda m: -m["issued"])
    issued = sum(m["issued"] for m in merchants)
    redeemed = sum(m["redeemed_at"] for m in merchants)
    expired = sum(m["expired"] for m in merchants)
    clawed = sum(m["clawed_back"] for m in merchants)

    genesis = load_genesis(root / "genesis.json")
    from client.http import AsyncClient

    async with AsyncClient(r.auditors[0]) as api:
        audit = await audit_api(genesis, api)

    failed = {c: n for c, n in track.codes.items() if c != Code.OK.slug}
    return {
        "rows_read": stats.rows,
        "rows_used": stats.rows_used,
        "rows_skipped": dict(sorted(stats.skipped.items())),
        "invoices": len(invoices),
        "sales": sum(1 for i in invoices if not i.is_cancellation),
        "cancellations": sum(1 for i in invoices if i.is_cancellation),
        "unmatched_refunds": r.unmatched_refunds,
        "committed": committed,
        "committed_ok": track.codes.get(Code.OK.slug, 0),
        "failed_by_code": failed,
        "by_kind": {f"{k}:{c}": n for (k, c), n in sorted(track.kinds.items())},
        "coins_issued": issued,
        "coins_redeemed": redeemed,
        "coins_clawed_back": clawed,
        "coins_expired": expired,
        # Held by customers, less what they owe from refunds of spent coins.
        "coins_outstanding": issued - redeemed - expired - clawed,
        "top_merchants": merchants[:5],
        "height": track.height,
        "seconds": round(elapsed, 1),
        "tx_per_s": round(committed / elapsed) if elapsed else 0,
        "p50_ms": round(latencies[len(latencies) // 2], 1) if latencies else 0,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)], 1) if latencies else 0,
        "state_root": next(iter(roots)),
        "state_roots_agree": len(roots) == 1,
        "nodes": len(r.validators) + len(r.auditors),
        "audit_ok": audit.ok and len(roots) == 1,
        "audit": audit.to_json(),
    }


async def state_roots_at(r: Replay, height: int, timeout: float = 30.0) -> set[str]:
    """The state root every node reports for block `height` (waiting for
    nodes that have not reached it yet)."""
    roots = set()
    deadline = time.monotonic() + timeout
    for url in r.validators + r.auditors:
        while (await r.status(url))["height"] < height:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not reach height {height}")
            await asyncio.sleep(0.05)
        async with r.session.get(f"{url}/v1/blocks/{height}") as response:
            roots.add((await response.json())["header"]["state_root"])
    return roots
