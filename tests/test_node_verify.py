"""Signature checks in worker processes (node.verify): what verifies is
cached, what does not is not, a dead worker costs nothing but time, and the
workers of a killed node do not outlive it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import node.verify as verify
from client import builders
from client.keys import Keypair
from state.tx import SignatureCache, decode_tx

CHAIN = "perk-verify-test-1"


def awards(n: int, merchant: Keypair | None = None) -> list:
    merchant = merchant or Keypair.from_seed(b"\x07" * 32)
    customer = Keypair.from_seed(b"\x08" * 32)
    return [
        decode_tx(
            builders.award_purchase(
                merchant, CHAIN, 2_000_000_000, customer.address, f"o-{i}", 100 + i
            )
        )
        for i in range(n)
    ]


def forged(tx):
    """The same transaction with one bit of its signature flipped."""
    raw = bytearray(tx.raw)
    raw[-1] ^= 1
    return decode_tx(bytes(raw))


async def test_only_transactions_that_verify_enter_the_cache() -> None:
    good = awards(600)  # more than two chunks
    bad = [forged(tx) for tx in good[:5]]
    cache = SignatureCache()

    failed = await verify.verify_into_cache(good[:300] + bad + good[300:], cache)

    assert failed == {tx.hash for tx in bad}
    assert all(tx in cache for tx in good)
    assert not any(tx in cache for tx in bad)


async def test_a_pool_that_refuses_work_leaves_the_checks_to_the_loop(
    monkeypatch,
) -> None:
    class Shut:
        def submit(self, *args, **kwargs):
            raise RuntimeError("cannot schedule new futures after shutdown")

    monkeypatch.setattr(verify, "_shared_pool", lambda: Shut())
    txs = awards(5, Keypair.from_seed(b"\x0b" * 32))
    cache = SignatureCache()

    failed = await verify.verify_into_cache(txs + [forged(txs[0])], cache)

    assert failed == {forged(txs[0]).hash}
    assert all(tx in cache for tx in txs)


async def test_a_dead_worker_is_replaced_and_the_batch_still_verifies() -> None:
    cache = SignatureCache()
    await verify.verify_into_cache(awards(10), cache)  # the pool is running
    pool = verify._shared_pool()
    for pid in list(pool._processes):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)

    txs = awards(300, Keypair.from_seed(b"\x09" * 32))
    await verify.verify_into_cache(txs, cache)
    assert all(tx in cache for tx in txs)

    # A fresh pool serves the next batch.
    more = awards(20, Keypair.from_seed(b"\x0a" * 32))
    await verify.verify_into_cache(more, cache)
    assert all(tx in cache for tx in more) and verify._shared_pool() is not pool


async def test_a_stopped_worker_delays_a_batch_by_the_stall_limit_only(
    monkeypatch,
) -> None:
    cache = SignatureCache()
    await verify.verify_into_cache(awards(10), cache)  # the pool is running
    pool = verify._shared_pool()
    stopped = list(pool._processes)
    monkeypatch.setattr(verify, "STALL_S", 1.0)
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        txs = awards(300, Keypair.from_seed(b"\x0c" * 32))
        bad = forged(txs[7])
        started = time.monotonic()
        failed = await verify.verify_into_cache(txs + [bad], cache)
        took = time.monotonic() - started
    finally:
        for pid in stopped:
            if alive(pid):
                os.kill(pid, signal.SIGCONT)

    assert failed == {bad.hash}
    assert all(tx in cache for tx in txs)
    assert took < 5, f"the batch waited {took:.1f} s on a stopped worker"
    # The stopped workers were killed, and a fresh pool serves the next batch.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(alive(pid) for pid in stopped):
        time.sleep(0.05)
    assert not any(alive(pid) for pid in stopped)
    more = awards(20, Keypair.from_seed(b"\x0d" * 32))
    assert await verify.verify_into_cache(more, cache) == set()
    assert all(tx in cache for tx in more) and verify._shared_pool() is not pool


def test_workers_exit_when_their_node_is_killed() -> None:
    script = textwrap.dedent(
        """
        import asyncio, sys, time
        import node.verify as verify
        from state.tx import SignatureCache
        from tests.test_node_verify import awards

        asyncio.run(verify.verify_into_cache(awards(50), SignatureCache()))
        print(" ".join(map(str, verify._shared_pool()._processes)), flush=True)
        time.sleep(60)
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    node = subprocess.Popen(
        [sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True
    )
    try:
        workers = [int(pid) for pid in node.stdout.readline().split()]
        assert workers, "the pool started no worker"
    finally:
        node.kill()
        node.wait()

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not any(alive(pid) for pid in workers), "a worker outlived its node"


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False
