"""Benchmarks that print figures: `perk bench ledger` (more arrive with the node).

Each benchmark measures the raw single-core Ed25519 verification rate in the
same run and reports its own throughput as a ratio to it, so figures taken on
different machines can be compared.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import nacl.bindings
import nacl.signing

from node.gc_tuning import tune_gc
from state.address import address_of
from state.block import decode_block
from state.execute import Executor
from state.genesis import parse_genesis
from state.store import Store
from state.tx import Kind, SignatureCache, build_signed, decode_tx

BENCH_CHAIN = "perk-bench-1"
BENCH_TIME_S = 1_700_000_000


class VerifySampler:
    """Single-core Ed25519 verification with libsodium (PyNaCl), measured in
    samples taken between the steps of a benchmark.

    A shared machine's speed drifts by tens of percent within seconds. Samples
    spread over the run see the same drift as the work they are compared
    with, where one measurement after the run would see other conditions.
    """

    def __init__(self, messages: int = 200):
        key = nacl.signing.SigningKey.generate()
        self.public = bytes(key.verify_key)
        self.signed = [bytes(key.sign(os.urandom(120))) for _ in range(messages)]
        self.done = 0
        self.seconds = 0.0

    def sample(self, seconds: float) -> None:
        start = time.perf_counter()
        while True:
            for signed in self.signed:
                nacl.bindings.crypto_sign_open(signed, self.public)
            self.done += len(self.signed)
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                self.seconds += elapsed
                return

    @property
    def rate(self) -> float:
        return self.done / self.seconds


def measure_verify_rate(seconds: float = 1.0) -> float:
    """Single-core Ed25519 verifications per second, measured for `seconds`."""
    sampler = VerifySampler()
    sampler.sample(seconds)
    return sampler.rate


def bench_ledger(n: int = 100_000, block_size: int = 1000, customers: int = 20_000):
    """Apply `n` pre-signed purchase awards in blocks of `block_size` to a fresh
    store: decode, admit (signatures pre-verified), execute and commit."""
    admin = nacl.signing.SigningKey.generate()
    merchant = nacl.signing.SigningKey.generate()
    validator = nacl.signing.SigningKey.generate()
    merchant_pk = bytes(merchant.verify_key)
    validator_pk = bytes(validator.verify_key)
    genesis = parse_genesis(
        {
            "chain_id": BENCH_CHAIN,
            "genesis_time_ms": BENCH_TIME_S * 1000,
            "validators": [{"name": "v1", "key": address_of(validator_pk)}],
            "admins": [address_of(bytes(admin.verify_key))],
            "merchants": [
                {"key": address_of(merchant_pk), "name": "Bench", "rate": 10,
                 "daily_cap": 10**12}
            ],
        }
    )  # fmt: skip
    customer_keys = [os.urandom(32) for _ in range(customers)]
    sign = lambda message: merchant.sign(message).signature  # noqa: E731
    raws = [
        build_signed(
            BENCH_CHAIN,
            Kind.AWARD_PURCHASE,
            merchant_pk,
            BENCH_TIME_S + 3000,
            [customer_keys[i % customers], f"order-{i}", 1000 + i % 5000],
            sign,
        )
        for i in range(n)
    ]

    # Build the blocks once, on a proposer's store; the measured run replays them
    # as a validator does, from bytes.
    with tempfile.TemporaryDirectory() as tmp:
        proposer = Store(os.path.join(tmp, "proposer"), genesis)
        builder = Executor(proposer)
        blocks = []
        for start in range(0, n, block_size):
            txs = [decode_tx(r) for r in raws[start : start + block_size]]
            time_ms = (BENCH_TIME_S + 1) * 1000 + len(blocks)
            block, result = builder.build_block(
                time_ms, bytes(validator.verify_key), txs
            )
            proposer.commit_block(block, b"", result)
            blocks.append(block.encode())
        expected_root = proposer.state_root
        proposer.close()

        # The node runs with these collector settings (node.gc_tuning).
        tune_gc()
        signatures = SignatureCache(capacity=n + 1)
        for raw in raws:
            signatures.add(decode_tx(raw))
        store = Store(os.path.join(tmp, "validator"), genesis)
        executor = Executor(store, signatures)
        verify = VerifySampler()
        elapsed = 0.0
        for data in blocks:
            start = time.perf_counter()
            block = decode_block(data)
            result = executor.execute_block(block)
            store.commit_block(block, b"", result)
            elapsed += time.perf_counter() - start
            # As much verification as the block took, outside the timed part.
            verify.sample(time.perf_counter() - start)
        ok = store.state_root == expected_root and store.height == len(blocks)
        store.close()

    verify_rate = verify.rate
    tx_per_s = n / elapsed
    return {
        "benchmark": "ledger",
        "transactions": n,
        "block_size": block_size,
        "seconds": round(elapsed, 3),
        "tx_per_s": round(tx_per_s),
        "verify_per_s": round(verify_rate),
        "ratio": round(tx_per_s / verify_rate, 3),
        "state_root_matches": ok,
    }


def print_report(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
