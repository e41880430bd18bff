"""Adversarial findings against block sync and peer handling, as regression tests.

A status claim never outlives the peer that made it, a node's own failures
never cost its peers, and forged gossip does.
"""

from __future__ import annotations

from types import SimpleNamespace

from consensus.sync import BlockSync, encode_status
from node.config import TestingSection
from node.peering import Peering
from state.codec import encode
from state.tx import Kind

HONEST = b"\x01" * 32
LIAR = b"\x02" * 32
MAX_HEIGHT = 2**63 - 1


class FakeApp:
    def __init__(self, height: int):
        self.height = height

    def last_height(self) -> int:
        return self.height


def make_sync(height: int, connected: list[bytes]) -> BlockSync:
    async def request(peer, body, timeout):  # never called here
        raise AssertionError("no request expected")

    async def apply_commit(certificate, block, block_bytes):
        raise AssertionError("no commit expected")

    return BlockSync(
        "perk-test-1",
        FakeApp(height),
        request,
        lambda: list(connected),
        apply_commit,
        lambda peer, reason: None,
    )


def test_honest_status_sets_the_tip():
    sync = make_sync(10, [HONEST])
    sync.on_status(HONEST, encode_status(12, b"\x00" * 32))
    assert sync.best_tip() == 12
    assert sync.syncing


def test_a_lying_status_is_forgotten_when_the_liar_leaves():
    connected = [HONEST, LIAR]
    sync = make_sync(10, connected)
    sync.on_status(HONEST, encode_status(10, b"\x00" * 32))
    sync.on_status(LIAR, encode_status(MAX_HEIGHT, b"\x00" * 32))
    connected.remove(LIAR)
    sync.forget_peer(LIAR)
    sync.on_status(HONEST, encode_status(10, b"\x00" * 32))
    assert sync.best_tip() == 10
    assert not sync.syncing


# --- penalties -----------------------------------------------------------------------


def bare_peering(engine) -> tuple[Peering, list]:
    """A Peering with only what its handlers touch: node.engine and penalize."""
    penalties: list = []
    peering = object.__new__(Peering)
    peering.node = SimpleNamespace(
        engine=engine,
        config=SimpleNamespace(p2p=SimpleNamespace(max_frame_bytes=16 << 20)),
    )
    peering.network = SimpleNamespace(
        penalize=lambda peer, points, reason: penalties.append((peer, reason))
    )
    # Test switches (node.testing) all off, as on any real chain.
    peering.switches = TestingSection()
    peering.recorder = None
    return peering, penalties


async def test_an_invalid_vote_penalises_the_sender():
    class Engine:
        async def on_message(self, name, body, peer):
            return "prevote h=5 r=0 by 01020304: signature does not verify"

    peering, penalties = bare_peering(Engine())
    await peering.consensus_handler("vote")(HONEST, b"vote")
    assert len(penalties) == 1


async def test_a_local_failure_does_not_penalise_the_peer():
    class Engine:
        async def on_message(self, name, body, peer):
            return "internal error: OSError"  # what _guarded returns

    peering, penalties = bare_peering(Engine())
    await peering.consensus_handler("proposal")(HONEST, b"proposal")
    assert penalties == []


async def test_gossip_of_forged_transactions_penalises_the_sender():
    submitted: list = []

    async def submit_batch(raws, gossip=True):
        from state.codes import Code
        from state.tx import TxRejected

        submitted.extend(raws)
        return [TxRejected(Code.BAD_SIGNATURE, "signature does not verify")] * len(raws)

    peering, penalties = bare_peering(None)
    peering.node.submit_batch = submit_batch
    raw = encode(
        [1, "perk-test-1", int(Kind.TRANSFER), b"\x03" * 32, 10**9,
         [b"\x04" * 32, 1, ""], b"\x00" * 64]
    )  # fmt: skip
    await peering.on_txs(LIAR, encode([raw]))
    assert submitted == [raw]
    assert penalties, "a peer relaying forged transactions should be penalised"
