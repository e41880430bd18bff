"""`perk audit --home` against a tampered copy of a node's database.

The audit replays every block from genesis into a fresh ledger and checks
hash links, certificates, signatures and header roots. It also checks the
node's own derived data: the state entries the API reads balances from must
sum to the replayed root, and the stored receipts it shows must equal the
replayed ones. A copy whose blocks, balances or receipts were edited fails.
"""

from __future__ import annotations

import msgpack
import pytest

from consensus.messages import CommitCertificate, Vote
from node.audit import audit_store
from state.block import encode_array_of_encoded
from state.codec import encode
from state.votes import PRECOMMIT, vote_sign_bytes
from tests.state_helpers import C1, CHAIN, M1, VALIDATOR, Chain, b


def certificate(block) -> bytes:
    sign_bytes = vote_sign_bytes(
        CHAIN, PRECOMMIT, block.height, 0, block.hash, VALIDATOR.public_key
    )
    vote = Vote(
        PRECOMMIT,
        block.height,
        0,
        block.hash,
        VALIDATOR.public_key,
        VALIDATOR.sign(sign_bytes),
    )
    return CommitCertificate.from_votes([vote]).encode()


@pytest.fixture
def chain(tmp_path):
    """Two certified blocks: an award to C1, then an empty block."""
    chain = Chain(tmp_path / "node")
    for raws in ([b.award_purchase(M1, CHAIN, chain.exp, C1, "order-1", 10_000)], []):
        block, result = chain.build(raws)
        chain.store.commit_block(block, certificate(block), result)
    yield chain
    chain.close()


def test_untampered_database_audits_ok(chain):
    report = audit_store(chain.genesis, chain.store)
    assert report.ok, report.failures
    assert report.blocks == 2


def test_edited_block_fails_the_audit(chain):
    key = b"b" + (1).to_bytes(8, "big")
    value = bytearray(chain.store.db.get(key))
    value[len(value) // 2] ^= 1
    chain.store.db.put(key, bytes(value))
    report = audit_store(chain.genesis, chain.store)
    assert not report.ok


def test_inflated_balance_fails_the_audit(chain):
    store = chain.store
    inflated = False
    for key, value in store.db.iterator(prefix=b"sa" + C1.public_key):
        record = msgpack.unpackb(value)
        record[2][0][0] = 10**12  # the first lot's amount
        store.db.put(key, encode(record))
        inflated = True
    assert inflated
    report = audit_store(chain.genesis, store)
    assert not report.ok


def test_edited_receipt_fails_the_audit(chain):
    store = chain.store
    key = b"r" + (1).to_bytes(8, "big")
    receipts = msgpack.unpackb(store.db.get(key))
    receipts[0][0] = 25  # ok -> insufficient_balance
    store.db.put(key, encode_array_of_encoded([encode(r) for r in receipts]))
    report = audit_store(chain.genesis, store)
    assert not report.ok
