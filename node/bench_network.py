"""Benchmarks against real node processes: `perk bench node` and `perk bench devnet`.

Both start a local devnet in a temporary folder (one validator for `node`;
four validators and an auditor for `devnet`), register a merchant, pre-sign
purchase awards and submit them over HTTP in msgpack batches with bounded
concurrency, round-robin over the validators. They follow the committed
blocks, check every receipt, and report:

- committed throughput: transactions committed per second, from the first
  submission to the last commit (saturating load);
- submit-to-final latency p50 and p99 at half that load (a paced run);
- the nodes' peak memory (VmHWM), and what their verify workers hold;
- the raw Ed25519 verification rate measured in the same run (one thread for
  `node`, two for `devnet`) and the ratio of throughput to it;
- for `devnet`, how fast a wiped auditor syncs the chain again.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import aiohttp
import msgpack

from client import builders
from client.keys import Keypair
from client.keystore import load_keystore
from node.bench import measure_verify_rate
from node.devnet import (
    ADMIN_PASSWORD_FILE,
    DEFAULT_CHAIN_ID,
    WALLET_DIR,
    down,
    start_node_process,
    up,
    write_devnet,
)
from node.follow import committed_outcomes
from state.codec import encode, sha256
from state.codes import Code

# Many apps and tills submit at once: 32 batches of 500 in flight keep a node
# that verifies in worker processes busy while it executes a block (with 4 in
# flight it idles between blocks, and the figure measures the client).
BATCH = 500
CONCURRENCY = 32
TTL_S = 3000
MSGPACK = "application/msgpack"


class BenchError(Exception):
    """The benchmark could not produce an honest figure; says why."""


def measure_verify_rate_threads(threads: int, seconds: float = 1.0) -> float:
    with ThreadPoolExecutor(threads) as pool:
        rates = list(pool.map(lambda _: measure_verify_rate(seconds), range(threads)))
    return sum(rates)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def peak_rss_mb(pid: int, field: str = "VmHWM") -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def children_rss_mb(pid: int) -> float:
    """Resident memory of a node's child processes now (its verify workers)."""
    total = 0.0
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = task.read_text().split()
        except OSError:
            continue
        total += sum(peak_rss_mb(int(child), "VmRSS") for child in children)
    return total


class Load:
    """Signed awards, submitted in batches, followed to finality."""

    def __init__(self, session: aiohttp.ClientSession, urls: list[str], chain: str):
        self.session = session
        self.urls = urls
        self.chain_id = chain
        self.submitted_at: dict[bytes, float] = {}
        self.final_at: dict[bytes, float] = {}
        self.failed: dict[str, int] = {}
        self.height = 0

    async def status(self, url: str) -> dict:
        async with self.session.get(f"{url}/v1/status") as response:
            return await response.json()

    async def submit_one(self, url: str, raw: bytes) -> dict:
        async with self.session.post(
            f"{url}/v1/transactions?wait=true&timeout=30",
            data=raw,
            headers={"Content-Type": MSGPACK},
        ) as response:
            doc = await response.json(content_type=None)
        if response.status != 200 or doc.get("receipt", {}).get("code") != "ok":
            raise BenchError(f"setup transaction failed: {doc}")
        return doc

    async def submit_batch(self, url: str, raws: list[bytes]) -> None:
        started = time.monotonic()
        for raw in raws:
            self.submitted_at[sha256(raw)] = started
        async with self.session.post(
            f"{url}/v1/transactions/batch",
            data=encode(raws),
            headers={"Content-Type": MSGPACK, "Accept": MSGPACK},
        ) as response:
            body = await response.read()
        doc = (
            msgpack.unpackb(body)
            if response.content_type == MSGPACK
            else json.loads(body)
        )
        if response.status != 200:
            raise BenchError(f"batch refused: {response.status} {doc}")
        refused = [r for r in doc["results"] if r.get("status") != "pending"]
        if refused:
            raise BenchError(f"{len(refused)} transactions refused: {refused[0]}")

    async def follow(self, url: str, stop: asyncio.Event) -> None:
        """Record when each transaction is seen committed, checking receipts."""
        while not stop.is_set():
            tip = (await self.status(url))["height"]
            while self.height < tip:
                self.height += 1
                outcomes = await committed_outcomes(self.session, url, self.height)
                now = time.monotonic()
                for tx_hash, receipt in outcomes:
                    if tx_hash in self.submitted_at:
                        self.final_at[tx_hash] = now
                        if receipt.code != Code.OK:
                            slug = receipt.code.slug
                            self.failed[slug] = self.failed.get(slug, 0) + 1
            await asyncio.sleep(0.05)

    async def run(self, raws: list[bytes], rate: float | None) -> tuple[float, float]:
        """Submit all of `raws` (paced at `rate` per second if given) and wait
        until every one is final; returns (first submission, last commit)."""
        batches = [raws[i : i + BATCH] for i in range(0, len(raws), BATCH)]
        stop = asyncio.Event()
        follower = asyncio.ensure_future(self.follow(self.urls[0], stop))
        gate = asyncio.Semaphore(CONCURRENCY)
        start = time.monotonic()

        async def send(index: int, batch: list[bytes]) -> None:
            if rate is not None:
                await asyncio.sleep(
                    max(0.0, start + index * BATCH / rate - time.monotonic())
                )
            async with gate:
                await self.submit_batch(self.urls[index % len(self.urls)], batch)

        try:
            await asyncio.gather(*(send(i, b) for i, b in enumerate(batches)))
            hashes = [sha256(raw) for raw in raws]
            deadline = time.monotonic() + 120
            while any(h not in self.final_at for h in hashes):
                if time.monotonic() > deadline:
                    missing = sum(1 for h in hashes if h not in self.final_at)
                    raise BenchError(f"{missing} transactions not final after 120 s")
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await follower
        return start, max(self.final_at[sha256(raw)] for raw in raws)

    def latencies_ms(self, raws: list[bytes]) -> list[float]:
        out = []
        for raw in raws:
            h = sha256(raw)
            out.append((self.final_at[h] - self.submitted_at[h]) * 1000)
        return out


def sign_awards(merchant: Keypair, chain_id: str, expires_at: int, n: int, tag: str):
    customers = [os.urandom(32) for _ in range(min(n, 20_000))]
    return [
        builders.award_purchase(
            merchant, chain_id, expires_at, customers[i % len(customers)],
            f"{tag}-{i}", 1_000 + i % 9_000,
        )
        for i in range(n)
    ]  # fmt: skip


async def bench_network(
    validators: int, auditors: int, n: int, half_load_s: float = 10.0
) -> dict:
    root = Path(tempfile.mkdtemp(prefix="perk-bench-"))
    try:
        # The devnet helpers are blocking (they poll with a synchronous client).
        doc = await asyncio.to_thread(
            up, root / "devnet", validators, auditors, DEFAULT_CHAIN_ID, 60
        )
        try:
            return await measure(root / "devnet", doc, validators, n, half_load_s)
        finally:
            await asyncio.to_thread(down, root / "devnet")
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def measure(
    root: Path, doc: dict, validators: int, n: int, half_load_s: float
) -> dict:
    nodes = doc["nodes"]
    urls = [r["api"] for r in nodes if r["kind"] == "validator"]
    password = (root / ADMIN_PASSWORD_FILE).read_text().strip()
    admin = load_keystore(root / WALLET_DIR / "admin.json", password)
    merchant = Keypair.generate()
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        load = Load(session, urls, doc["chain_id"])
        status = await load.status(urls[0])
        now_s = status["latest_block_time_ms"] // 1000
        await load.submit_one(
            urls[0],
            builders.register_merchant(
                admin, doc["chain_id"], now_s + 600, merchant.public_key,
                "Bench Store", 10, 10**12,
            ),
        )  # fmt: skip
        load.height = (await load.status(urls[0]))["height"]

        # Saturating run: all transactions offered at once (bounded concurrency).
        # The verification rate is sampled right before and right after it
        # (a shared machine's speed drifts), with the nodes idle.
        threads = 2 if validators > 1 else 1
        raws = sign_awards(merchant, doc["chain_id"], now_s + TTL_S, n, "full")
        verify_rates = [measure_verify_rate_threads(threads)]
        first, last = await load.run(raws, rate=None)
        tx_per_s = n / (last - first)
        verify_rates.append(measure_verify_rate_threads(threads))
        saturated_latency = load.latencies_ms(raws)

        # Paced run at half the committed rate: the latency an app sees.
        paced = sign_awards(
            merchant, doc["chain_id"], now_s + TTL_S,
            max(BATCH, int(tx_per_s / 2 * half_load_s)), "half",
        )  # fmt: skip
        await load.run(paced, rate=tx_per_s / 2)
        latency = load.latencies_ms(paced)
        failed = dict(load.failed)
        height = load.height
        auditors = [r for r in nodes if r["kind"] == "auditor"]
        sync_rate = None
        if auditors:
            total = n + len(paced) + 1
            sync_rate = await measure_auditor_sync(root, doc, auditors[0], load, total)

    verify_rate = sum(verify_rates) / len(verify_rates)
    report = {
        "benchmark": "devnet" if validators > 1 else "node",
        "validators": validators,
        "auditors": len(nodes) - len(urls),
        "transactions": n,
        "height": height,
        "tx_per_s": round(tx_per_s),
        "offered_half_load_per_s": round(tx_per_s / 2),
        "p50_ms": round(percentile(latency, 50), 1),
        "p99_ms": round(percentile(latency, 99), 1),
        "saturated_p50_ms": round(percentile(saturated_latency, 50), 1),
        "failed_receipts": failed,
        "peak_rss_mb": round(max(peak_rss_mb(r["pid"]) for r in nodes), 1),
        "workers_rss_mb": round(max(children_rss_mb(r["pid"]) for r in nodes), 1),
        "verify_threads": threads,
        "verify_per_s": round(verify_rate),
        "ratio": round(tx_per_s / verify_rate, 3),
    }
    if sync_rate is not None:
        report["auditor_sync_tx_per_s"] = round(sync_rate)
    if failed:
        raise BenchError(f"receipts that are not ok: {failed}")
    return report


async def measure_auditor_sync(
    root: Path, doc: dict, record: dict, load: Load, transactions: int
) -> float:
    """Stop the auditor, wipe its database, start it again and time how long it
    takes to sync and verify the chain: transactions per second."""
    tip = (await load.status(load.urls[0]))["height"]
    os.kill(record["pid"], signal.SIGTERM)
    await asyncio.to_thread(wait_for_exit, record["pid"])
    home = Path(record["home"])
    shutil.rmtree(home / "data", ignore_errors=True)
    shutil.rmtree(home / "consensus", ignore_errors=True)

    started = time.monotonic()
    process = start_node_process(home)
    record["pid"] = process.pid
    write_devnet(root, doc)  # so that `down` stops the new process
    deadline = started + 300
    while True:
        try:
            if (await load.status(record["api"]))["height"] >= tip:
                break
        except aiohttp.ClientError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise BenchError("the wiped auditor did not sync within 300 s")
        await asyncio.sleep(0.05)
    return transactions / (time.monotonic() - started)


def wait_for_exit(pid: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # Our own child (started by `up` in this process) must be reaped,
            # or it lingers as a zombie that still answers kill(pid, 0).
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
