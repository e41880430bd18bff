"""Crash safety: a writer process killed with SIGKILL at random moments leaves a
store that opens at a complete height, whose root is right and whose blocks a
fresh validator replays to the same root."""

from __future__ import annotations

import random
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from state.block import decode_block, decode_receipts, results_root
from state.codec import encode
from state.execute import Executor
from state.store import Store
from state.tx import SignatureCache, decode_tx
from tests.state_helpers import (
    crash_genesis,
    crash_time_ms,
    crash_txs,
    recompute_root,
)

REPO = Path(__file__).resolve().parent.parent
SEED = 4242
KILLS = 15
MAX_HEIGHT = 150  # bounds the work if the machine is very fast


def spawn_writer(path: Path, log: Path) -> subprocess.Popen:
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from tests.state_helpers import crash_writer;"
        "crash_writer(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(REPO), str(path), str(SEED), str(MAX_HEIGHT)],
        stdout=subprocess.PIPE,
        stderr=log.open("ab"),
        cwd=REPO,
    )


def wait_ready(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "writer did not open the store in time"
    line = proc.stdout.readline().decode()
    assert line.startswith("ready "), line
    return int(line.split()[1])


def heights_under(store: Store, prefix: bytes) -> list[int]:
    """Heights of the b/c/r entries: keys are prefix + 8-byte height."""
    return [
        int.from_bytes(k[1:], "big")
        for k, _ in store.db.iterator(prefix=prefix)
        if len(k) == 9
    ]


def check_store(path: Path, expected_blocks: dict[int, bytes]) -> tuple[int, bytes]:
    """Open the crashed store and check it is whole; return (height, root)."""
    store = Store(path, crash_genesis())
    try:
        height = store.height
        for prefix in (b"b", b"c", b"r"):
            assert heights_under(store, prefix) == list(range(1, height + 1)), prefix
        assert store.block_bytes(height + 1) is None
        assert store.commit_bytes(height + 1) is None
        assert store.receipts_bytes(height + 1) is None

        tx_count = 0
        for h in range(1, height + 1):
            data = store.block_bytes(h)
            block = decode_block(data)
            if h in expected_blocks:
                # Blocks written before an earlier kill are never rewritten.
                assert data == expected_blocks[h], h
            else:
                # A resumed writer wrote exactly the block the seed dictates.
                assert block.header.time_ms == crash_time_ms(h)
                assert list(block.txs) == crash_txs(SEED, h)
                expected_blocks[h] = data
            assert store.commit_bytes(h) == b"commit-%d" % h
            receipts = decode_receipts(store.receipts_bytes(h))
            assert len(receipts) == len(block.txs)
            encoded = [encode(r.to_wire()) for r in receipts]
            assert results_root(encoded) == block.header.results_root
            tx_count += len(block.txs)

        if height:
            top = decode_block(store.block_bytes(height))
            assert store.block_hash == top.hash
            assert store.time_ms == top.header.time_ms
            assert store.state_root == top.header.state_root
            last_tx = decode_tx(top.txs[-1])
            assert store.tx_location(last_tx.hash) == (height, len(top.txs) - 1)
        else:
            assert store.block_hash == store.genesis_hash
        # The transaction and history indexes hold nothing above the height.
        locations = [v for _, v in store.db.iterator(prefix=b"t")]
        assert len(locations) == tx_count
        assert all(int.from_bytes(v[:8], "big") <= height for v in locations)
        assert all(
            int.from_bytes(k[33:41], "big") <= height
            for k in store.db.iterator(prefix=b"h", include_value=False)
        )
        # The auditor's root from the state entries.
        assert recompute_root(store) == store.state_root
        return height, store.state_root
    finally:
        store.close()


def replay(
    source: Path, target: Path, height: int, signatures: SignatureCache
) -> bytes:
    """Execute source's blocks 1..height on a fresh store; return its root."""
    src = Store(source, crash_genesis())
    blocks = [src.block_bytes(h) for h in range(1, height + 1)]
    roots = [decode_block(data).header.state_root for data in blocks]
    src.close()
    store = Store(target, crash_genesis())
    try:
        executor = Executor(store, signatures)
        for data, root in zip(blocks, roots, strict=True):
            block = decode_block(data)
            result = executor.execute_block(block)
            store.commit_block(block, b"", result)
            assert store.state_root == root
        return store.state_root
    finally:
        store.close()
        shutil.rmtree(target)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_sigkill_at_random_moments_leaves_a_whole_store(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    path = tmp_path / "db"
    log = tmp_path / "writer.log"
    signatures = SignatureCache(capacity=1 << 20)
    expected_blocks: dict[int, bytes] = {}
    heights = []

    for kill in range(KILLS):
        proc = spawn_writer(path, log)
        try:
            # Most kills land while blocks are being committed; every fifth
            # lands early, possibly while the store is first opened.
            if kill % 5 == 0:
                time.sleep(rng.uniform(0.05, 0.4))
                resumed_at = None
            else:
                resumed_at = wait_ready(proc)
                time.sleep(rng.uniform(0.05, 0.4))
            proc.kill()  # SIGKILL
        finally:
            proc.wait(timeout=30)
            proc.stdout.close()
        # A writer that stopped by itself must have finished, not failed.
        if proc.returncode != -9:
            assert proc.returncode == 0, log.read_text()
        if not path.exists():
            continue  # killed before it created the database

        height, root = check_store(path, expected_blocks)
        if resumed_at is not None:
            assert height >= resumed_at
        if heights:
            assert height >= heights[-1]
        heights.append(height)
        assert replay(path, tmp_path / f"replay-{kill}", height, signatures) == root

    assert heights and heights[-1] > 0, "the writer never committed a block"
    assert len(set(heights)) > 3, f"too little progress between kills: {heights}"
