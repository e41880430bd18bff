"""Shared helpers for the state tests: deterministic keys, genesis, a small chain.

Keys come from fixed seeds so failures reproduce; `Chain` wraps one Store and
its Executor and builds, commits and inspects blocks the way a proposer does.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence

import msgpack

from client import builders
from client.keys import Keypair
from state.block import Block
from state.codes import Code
from state.execute import BlockResult, Executor
from state.genesis import Genesis, parse_genesis
from state.ledger import (
    Account,
    Merchant,
    Order,
    account_key,
    merchant_key,
    order_key,
)
from state.root import Accumulator, element
from state.store import Store
from state.tx import SignatureCache, Transaction, decode_tx

CHAIN = "perk-test-1"
# 2025-12-01T00:00:00Z: a UTC midnight, so day boundaries are easy to place.
GENESIS_MS = 1_764_547_200_000
GENESIS_S = GENESIS_MS // 1000
DAY_S = 86_400
TTL_S = 600  # the expiry the helpers give transactions, well inside MAX_TTL_S

ACC_MASK = (1 << 4096) - 1


@functools.cache
def key(n: int) -> Keypair:
    """The deterministic keypair number `n` (0..255)."""
    return Keypair.from_seed(bytes([n]) * 32)


ADMIN = key(1)
VALIDATOR = key(2)
OUTSIDER = key(3)  # signs admin operations without being an admin
M1, M2, M3 = key(10), key(11), key(12)
C1, C2, C3, C4 = key(20), key(21), key(22), key(23)


def merchant_doc(kp: Keypair, name: str, rate: int, daily_cap: int) -> dict:
    return {"key": kp.address, "name": name, "rate": rate, "daily_cap": daily_cap}


DEFAULT_MERCHANTS = (
    merchant_doc(M1, "Merchant One", 10, 10**12),
    merchant_doc(M2, "Merchant Two", 150, 10**12),
)


def make_genesis(
    *,
    chain_id: str = CHAIN,
    merchants: Sequence[dict] = DEFAULT_MERCHANTS,
    transfers_allowed: bool = True,
    utc_offset_minutes: int = 0,
    genesis_time_ms: int = GENESIS_MS,
    admins: Iterable[Keypair] = (ADMIN,),
) -> Genesis:
    return parse_genesis(
        {
            "chain_id": chain_id,
            "genesis_time_ms": genesis_time_ms,
            "validators": [{"name": "v1", "key": VALIDATOR.address}],
            "admins": [a.address for a in admins],
            "program": {
                "transfers_allowed": transfers_allowed,
                "utc_offset_minutes": utc_offset_minutes,
            },
            "merchants": list(merchants),
        }
    )


def recompute_root(store: Store) -> bytes:
    """The state root as an auditor computes it, from every state entry."""
    total = 0
    for k, v in store.state_items():
        total += element(k, v)
    return Accumulator(total & ACC_MASK).root()


def _record(store: Store, k: bytes, record_type):
    raw = store.get_state(k)
    return None if raw is None else record_type.from_wire(msgpack.unpackb(raw))


class Chain:
    """One store plus its executor; blocks are one second apart by default."""

    def __init__(
        self,
        path: str | os.PathLike,
        genesis: Genesis | None = None,
        signatures: SignatureCache | None = None,
    ):
        self.genesis = genesis or make_genesis()
        self.chain_id = self.genesis.chain_id
        self.store = Store(path, self.genesis)
        self.executor = Executor(self.store, signatures)

    def close(self) -> None:
        self.store.close()

    # --- time ---

    @property
    def next_ms(self) -> int:
        return self.store.time_ms + 1000

    @property
    def exp(self) -> int:
        """An expiry valid for the next default block (and a few after it)."""
        return self.next_ms // 1000 + TTL_S

    # --- blocks ---

    def build(
        self, raws: Iterable[bytes | Transaction], time_ms: int | None = None
    ) -> tuple[Block, BlockResult]:
        txs = [r if isinstance(r, Transaction) else decode_tx(r) for r in raws]
        when = self.next_ms if time_ms is None else time_ms
        return self.executor.build_block(when, VALIDATOR.public_key, txs)

    def block(
        self, raws: Iterable[bytes | Transaction], time_ms: int | None = None
    ) -> BlockResult:
        """Build and commit a block; return its result."""
        block, result = self.build(raws, time_ms)
        self.store.commit_block(block, b"commit-%d" % block.height, result)
        return result

    def run(self, raws: Iterable[bytes], time_ms: int | None = None) -> list[Code]:
        """Commit a block in which every candidate must be admitted; its codes."""
        raws = list(raws)
        result = self.block(raws, time_ms)
        assert result.dropped == [], [(c, d) for _, c, d in result.dropped]
        assert len(result.receipts) == len(raws)
        return [r.code for r in result.receipts]

    # --- state ---

    def account(self, kp: Keypair | bytes) -> Account | None:
        return _record(self.store, account_key(_pk(kp)), Account)

    def balance(self, kp: Keypair | bytes) -> int:
        acc = self.account(kp)
        return 0 if acc is None else acc.balance(self.store.time_ms // 1000)

    def merchant(self, kp: Keypair | bytes) -> Merchant | None:
        return _record(self.store, merchant_key(_pk(kp)), Merchant)

    def order(self, kp: Keypair | bytes, order_id: str) -> Order | None:
        return _record(self.store, order_key(_pk(kp), order_id), Order)

    def state(self) -> dict[bytes, bytes]:
        return dict(self.store.state_items())


def _pk(kp: Keypair | bytes) -> bytes:
    return kp if isinstance(kp, bytes) else kp.public_key


class _Builders:
    """client.builders, also taking a Keypair wherever an account is named."""

    def __getattr__(self, name: str):
        build = getattr(builders, name)

        def wrapped(signer: Keypair, *args, **kwargs) -> bytes:
            return build(
                signer,
                *[_pk(a) if isinstance(a, Keypair) else a for a in args],
                **kwargs,
            )

        wrapped.__name__ = name
        return wrapped


b = _Builders()


def codes(result: BlockResult) -> list[Code]:
    return [r.code for r in result.receipts]


# --- crash test: a deterministic writer -----------------------------------------------
#
# The child process of tests/test_state_crash.py runs crash_writer; the parent
# uses crash_txs to know exactly what each block must hold.

CRASH_CUSTOMERS = tuple(range(100, 140))  # key numbers of 40 customers
CRASH_TXS_PER_BLOCK = 240
CRASH_BLOCK_MS = 1000


def crash_genesis() -> Genesis:
    return make_genesis(
        merchants=[
            merchant_doc(M1, "Crash One", 10, 10**12),
            merchant_doc(M2, "Crash Two", 150, 10**12),
        ]
    )


def crash_time_ms(height: int) -> int:
    return GENESIS_MS + height * CRASH_BLOCK_MS


def crash_txs(seed: int, height: int) -> list[bytes]:
    """Block `height`'s transactions: awards and transfers, all admissible.

    Transfers may be refused by the ledger (insufficient balance); that only
    changes their receipt. Every transaction is unique by order id or memo.
    """
    import random

    rng = random.Random(f"{seed}/{height}")
    exp = crash_time_ms(height) // 1000 + TTL_S
    out = []
    for i in range(CRASH_TXS_PER_BLOCK):
        c = key(rng.choice(CRASH_CUSTOMERS))
        if rng.random() < 0.5:
            m = rng.choice((M1, M2))
            amount = rng.randint(1, 5000)
            out.append(b.award_purchase(m, CHAIN, exp, c, f"{height}-{i}", amount))
        else:
            to = key(rng.choice(CRASH_CUSTOMERS))
            amount = rng.randint(1, 400)
            out.append(b.transfer(c, CHAIN, exp, to, amount, f"{height}-{i}"))
    return out


def crash_writer(path: str, seed: int, max_height: int) -> None:
    """Commit blocks to the store at `path` until `max_height`, resuming from
    whatever height it holds. Prints "ready <height>" once the store is open."""
    import sys

    store = Store(path, crash_genesis())
    executor = Executor(store)
    print("ready", store.height, flush=True)
    while store.height < max_height:
        height = store.height + 1
        txs = [decode_tx(r) for r in crash_txs(seed, height)]
        block, result = executor.build_block(
            crash_time_ms(height), VALIDATOR.public_key, txs
        )
        if result.dropped:
            sys.exit(f"dropped at height {height}: {result.dropped[0][1:]}")
        store.commit_block(block, b"commit-%d" % height, result)
    print("done", store.height, flush=True)
    store.close()
