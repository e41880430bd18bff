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


# --- a validator that lost its signer record ----------------------------------------


def node_asking(tips: dict[bytes, int], age_ms: int, heartbeat_ms: int = 2000):
    """Just enough of a Node for chain_is_new: peers' tips, clock, genesis."""
    from node.service import Node

    fake = SimpleNamespace(
        peering=SimpleNamespace(sync=SimpleNamespace(peer_tips=tips)),
        clock=lambda: 1_000_000 + age_ms,
        genesis=SimpleNamespace(genesis_time_ms=1_000_000),
        config=SimpleNamespace(consensus=SimpleNamespace(heartbeat_ms=heartbeat_ms)),
    )
    return lambda others: Node.chain_is_new(fake, others)


def test_zeros_from_f_plus_one_wiped_validators_do_not_make_an_old_chain_new():
    v2, v3, v4 = b"\x02" * 32, b"\x03" * 32, b"\x04" * 32
    # v2 and v3 lost their data too and say 0; v4, the only one with the
    # chain, has not spoken yet. Signing from height 1 would fork.
    is_new = node_asking({v2: 0, v3: 0}, age_ms=3_600_000)
    assert not is_new([v2, v3, v4])
    # Once every other validator says 0, the chain is new.
    is_new = node_asking({v2: 0, v3: 0, v4: 0}, age_ms=3_600_000)
    assert is_new([v2, v3, v4])


def test_a_young_chain_may_start_before_every_validator_spoke():
    v2, v3, v4 = b"\x02" * 32, b"\x03" * 32, b"\x04" * 32
    assert node_asking({v2: 0, v3: 0}, age_ms=1_000)([v2, v3, v4])


async def test_signed_by_is_not_answered_before_consensus_runs():
    peering, _ = bare_peering(None)
    answer = await peering.on_signed_by(HONEST, encode([b"\x05" * 32]))
    assert answer == encode([])  # "unknown", never "heard nothing"
