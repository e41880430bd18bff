"""Signature checks of submitted transactions, in worker processes.

Verifying an Ed25519 signature is the largest single cost of a transaction
(about 40 µs of libsodium on this class of machine). libsodium releases the
GIL, so threads could verify while the event loop runs Python, but each check
is one call: between two of them a verifying thread must take the GIL back,
and while the event loop executes a block (hundreds of milliseconds of Python)
it gets it only at the interpreter's switch interval, about one signature per
thread every 5 ms. Submissions that arrive during a block then wait for the
block, and verification and execution take turns instead of overlapping.

Worker processes have no GIL to share: they verify while the loop executes.
A chunk goes to a worker as (signed message, public key) pairs and comes back
as one boolean per pair; the node then puts the transactions that verified in
its signature cache, so nothing verifies a transaction twice.

The pool is one per process, started on first use and shut down when the
process exits. It uses the "spawn" method: a worker is a fresh interpreter,
never a copy of a node with open sockets and a database. A worker whose node
dies (kill -9 included) notices that its parent is gone and exits; it cannot
count on end-of-file on its task pipe, whose write end the workers share.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import nacl.bindings
import nacl.exceptions

from state.tx import SignatureCache, Transaction

log = logging.getLogger("node.verify")

# Pairs per task: large enough that the pipe and pickling cost little per
# signature, small enough that a batch spreads over the workers.
VERIFY_CHUNK = 256
# How often a worker looks whether its node is still there.
PARENT_POLL_S = 0.5
# A pool that has work and finishes none of it for this long is stuck (a
# worker stopped by SIGSTOP or a debugger, or wedged): its workers are killed,
# which breaks the pool, and the work is verified on the loop. A healthy
# worker finishes a chunk in milliseconds, so only a stuck one gets here.
STALL_S = 10.0

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()
# When a worker last finished a chunk (time.monotonic()); set by the pool's
# own thread as each result arrives, so a busy event loop cannot delay it.
_last_progress = 0.0


def verify_workers() -> int:
    """One worker per core the process may run on, less one for the event
    loop. The loop executes blocks and admits transactions in Python, one
    core's worth at most, and it is what bounds a node: a worker sharing its
    core slows it down more than the extra verification helps. On two cores
    one worker verifies faster (about 17,000 a second) than the loop commits;
    with two, the committed rate measured 15-20 % lower (docs/performance.md).
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def verify_pairs(pairs: list[tuple[bytes, bytes]]) -> list[bool]:
    """For each (signature + message, public key): whether it verifies. Runs
    in a worker process."""
    results = []
    for signed, key in pairs:
        try:
            nacl.bindings.crypto_sign_open(signed, key)
        except nacl.exceptions.BadSignatureError:
            results.append(False)
        else:
            results.append(True)
    return results


def pairs(txs: list[Transaction]) -> list[tuple[bytes, bytes]]:
    return [(tx.signature + tx.signing_bytes, tx.signer) for tx in txs]


def _shared_pool() -> ProcessPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(
                verify_workers(),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_watch_parent,
                initargs=(os.getpid(),),
            )
        return _pool


def _watch_parent(parent: int) -> None:
    """In a worker: exit as soon as the node that started it is gone. A killed
    node leaves its workers waiting on a pipe that no one will ever write.

    Ctrl-C on a node in the foreground reaches its whole process group; the
    workers ignore it and stop when the node's process exits."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _note_progress(_work: Future) -> None:
    global _last_progress
    _last_progress = time.monotonic()


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Kill the pool's workers; the pool then fails every chunk it holds with
    BrokenProcessPool, and verify_into_cache replaces it."""
    # Before Python 3.14 (ProcessPoolExecutor.kill_workers) the executor's
    # process table is the only handle on its workers.
    processes = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        process.kill()


def _replace_pool(broken: ProcessPoolExecutor) -> None:
    global _pool
    with _pool_lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


async def verify_into_cache(
    txs: list[Transaction], cache: SignatureCache
) -> set[bytes]:
    """Verify `txs` in the worker processes; those that verify go into `cache`.
    Returns the hashes of those that do not verify.

    A chunk the workers could not check (a worker died and broke the pool, or
    the pool is shutting down) is verified on the event loop instead, and a
    broken pool is replaced for the next batch: a submission is never refused
    for a failure of ours. A pool that finishes nothing for STALL_S while this
    waits is broken on purpose, so a stopped worker delays a submission by
    STALL_S at most instead of for ever.
    """
    if not txs:
        return set()
    chunks = [txs[i : i + VERIFY_CHUNK] for i in range(0, len(txs), VERIFY_CHUNK)]
    pool = _shared_pool()
    outcomes = await _in_workers(pool, chunks)
    failed: set[bytes] = set()
    for chunk, outcome in zip(chunks, outcomes, strict=True):
        if isinstance(outcome, Exception):
            log.warning(
                "verify workers failed; chunk verified on the loop txs=%d error=%r",
                len(chunk),
                outcome,
            )
            if isinstance(outcome, BrokenProcessPool):
                _replace_pool(pool)
            outcome = [tx.verify_signature() for tx in chunk]
        for tx, ok in zip(chunk, outcome, strict=True):
            if ok:
                cache.add(tx)
            else:
                failed.add(tx.hash)
    return failed


async def _in_workers(
    pool: ProcessPoolExecutor, chunks: list[list[Transaction]]
) -> list[list[bool] | Exception]:
    """Each chunk's results, or the exception that kept the workers from it."""
    futures: list[asyncio.Future | Exception] = []
    submitted = time.monotonic()
    for chunk in chunks:
        try:
            work = pool.submit(verify_pairs, pairs(chunk))
        except Exception as exc:  # a broken or shut pool refuses new work
            futures.append(exc)
            continue
        work.add_done_callback(_note_progress)
        futures.append(asyncio.wrap_future(work))
    pending = [f for f in futures if isinstance(f, asyncio.Future)]
    await _wait_watching(pool, pending, submitted)
    # Every future is awaited, so none is left with an unread exception.
    results = iter(await asyncio.gather(*pending, return_exceptions=True))
    outcomes = [f if isinstance(f, Exception) else next(results) for f in futures]
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
            raise outcome  # cancellation: the submission was abandoned
    return outcomes


async def _wait_watching(
    pool: ProcessPoolExecutor, futures: list[asyncio.Future], since: float
) -> None:
    """Return once every future is done; kill the pool's workers when it
    finishes no chunk at all (this call's or another's) for STALL_S."""
    waiting = set(futures)
    try:
        while waiting:
            _, waiting = await asyncio.wait(waiting, timeout=STALL_S)
            idle = time.monotonic() - max(_last_progress, since)
            if waiting and idle >= STALL_S:
                log.warning(
                    "verify workers finished nothing; killing them "
                    "idle_s=%.1f chunks_waiting=%d",
                    idle,
                    len(waiting),
                )
                _kill_workers(pool)
                since = time.monotonic()
    except asyncio.CancelledError:
        for future in futures:
            future.cancel()  # the submission was abandoned: drop its queued work
        raise
