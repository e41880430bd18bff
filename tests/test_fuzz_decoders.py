"""Every decoder that reads bytes from outside, under hypothesis.

Peers, clients and remote nodes send bytes; each decoder must turn any of them
into either a value or its module's documented refusal, and nothing else:

    state.codec.decode                DecodeError
    state.tx.decode_tx, admission     TxRejected (MempoolFull when full)
    state.block decoders              DecodeError
    state.votes.check_double_sign     EvidenceError
    consensus.messages decoders       MalformedMessage
    consensus.sync                    DecodeError; a batch: SyncError
    p2p.framing                       ProtocolError
    node.peering handlers             nothing escapes; the peer is penalised
    node.views request bodies         ApiError with a documented code

What a decoder accepts must be canonical (it re-encodes to the same bytes), and
nothing refused may reach the ledger or the mempool: height, state root and
mempool are compared before and after.

The inputs are random bytes, and mutations of valid encodings so the fuzzer
gets past the first check: bytes flipped, cut, inserted or appended, and
msgpack trees with one value swapped for an edge case (an over-long integer, a
short key, a map, a float...) and re-encoded canonically, which reaches the
schema checks behind the canonical-encoding check. Examples are bounded and
derandomized for `make test`; PERK_FUZZ_EXAMPLES=N runs N per test, randomly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from client import builders
from client.keys import Keypair
from consensus.messages import (
    CommitCertificate,
    DoubleSignEvidence,
    MalformedMessage,
    Proposal,
    Vote,
    decode_certificate,
    decode_commit_message,
    decode_evidence,
    decode_proposal,
    decode_proposal_message,
    decode_vote,
    encode_commit_message,
    encode_proposal_message,
    proposal_sign_bytes,
)
from consensus.sync import SyncError, decode_status, encode_status, serve_blocks
from node import views, views_loyalty
from node.mempool import Admission, MempoolFull
from node.openapi import API_CODES, TX_CODES
from node.peering import Peering, is_local_failure
from node.views import ApiError
from p2p.framing import (
    MAX_MSG_TYPE,
    MIN_MSG_TYPE,
    FrameReader,
    ProtocolError,
    decode_frame,
    encode_frame,
)
from p2p.identity import NodeIdentity
from state.block import (
    Block,
    Header,
    Receipt,
    decode_block,
    decode_header,
    decode_receipts,
    encode_receipts,
)
from state.changes import ChangeAction
from state.codec import DecodeError, decode, encode, sha256
from state.codes import Code
from state.tx import (
    EngagementKind,
    Transaction,
    TxRejected,
    ValidatorAction,
    decode_tx,
)
from state.votes import PRECOMMIT, PREVOTE, EvidenceError, check_double_sign
from tests.node_helpers import (
    ADMIN,
    C1,
    C2,
    CHAIN,
    MERCHANT,
    VALIDATOR,
    Harness,
    running_node,
)
from tests.test_consensus_harness import CHAIN as ENGINE_CHAIN
from tests.test_consensus_harness import FAST, VALIDATOR_KEYS, Cluster

SOAK_EXAMPLES = os.environ.get("PERK_FUZZ_EXAMPLES")
EXAMPLES = int(SOAK_EXAMPLES or 600)
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=not SOAK_EXAMPLES,
    database=None if not SOAK_EXAMPLES else settings.default.database,
    deadline=None,
    # The node fixture is shared by the examples of a test on purpose: each
    # one checks the ledger is as it was.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
# Node-backed tests cost more per example (admission verifies signatures).
NODE_FUZZ = settings(FUZZ, max_examples=max(EXAMPLES // 2, 1))

# A key that is not the validator's, for votes that must not verify.
STRANGER = Keypair.from_seed(bytes([99]) * 32)
EXP = 2_000_000_000
H32 = bytes(range(32))
H32B = bytes(range(1, 33))


# --- valid encodings ------------------------------------------------------------------


def sample_txs() -> list[bytes]:
    """One signed transaction of every kind and payload form, for CHAIN."""
    sign = builders
    return [
        sign.register_merchant(ADMIN, CHAIN, EXP, C2.public_key, "Shop", 10, 10**6),
        sign.update_merchant(
            ADMIN, CHAIN, EXP, MERCHANT.public_key, "Café", 5, 9, False
        ),
        sign.set_account_frozen(ADMIN, CHAIN, EXP, C1.public_key, True, "fraud"),
        sign.award_purchase(MERCHANT, CHAIN, EXP, C1.public_key, "o-1", 5000),
        sign.award_purchase(
            MERCHANT, CHAIN, EXP, C1.public_key, "o-2", 900, 100, "food"
        ),
        sign.refund_purchase(MERCHANT, CHAIN, EXP, "o-1", 100),
        sign.engagement_reward(
            MERCHANT, CHAIN, EXP, C1.public_key, EngagementKind.SURVEY, "s-1"
        ),
        sign.reverse_redemption(MERCHANT, CHAIN, EXP, H32),
        sign.propose_change(
            ADMIN, CHAIN, EXP, ChangeAction.TIERS, [30, [[100, 10_000], [500, 12_000]]],
            EXP,
        ),
        sign.propose_change(
            ADMIN, CHAIN, EXP, ChangeAction.CAMPAIGN,
            ["spring", 10, 20, 20_000, 5, 100, [MERCHANT.public_key]], EXP,
        ),
        sign.propose_change(
            ADMIN, CHAIN, EXP, ChangeAction.MERCHANT_TERMS,
            [MERCHANT.public_key, 1, 2, [["food", 20], ["toys", 5]]], EXP,
        ),
        sign.approve_change(ADMIN, CHAIN, EXP, H32),
        sign.redeem(C1, CHAIN, EXP, MERCHANT.public_key, 10, "r-1"),
        sign.transfer(C1, CHAIN, EXP, C2.public_key, 7, "thanks"),
        sign.validator_vote(
            VALIDATOR, CHAIN, EXP, ValidatorAction.ADD, C2.public_key, "v2", 10
        ),
        sign.report_evidence(VALIDATOR, CHAIN, EXP, sample_evidence().encode()),
    ]  # fmt: skip


def signed_vote(
    key: Keypair, vote_type: int, height: int, block_hash: bytes, chain: str = CHAIN
) -> Vote:
    unsigned = Vote(vote_type, height, 0, block_hash, key.public_key, bytes(64))
    return Vote(*unsigned.to_wire()[:5], key.sign(unsigned.sign_bytes(chain)))


def sample_evidence() -> DoubleSignEvidence:
    return DoubleSignEvidence.from_votes(
        signed_vote(VALIDATOR, PREVOTE, 5, H32), signed_vote(VALIDATOR, PREVOTE, 5, b"")
    )


def sample_block(
    height: int = 1,
    txs: tuple[bytes, ...] = (),
    chain: str = CHAIN,
    proposer: Keypair = VALIDATOR,
) -> Block:
    header = Header(
        chain, height, 1_700_000_000_000, H32, H32B, H32, H32B, H32, proposer.public_key
    )
    return Block(header, txs)


def sample_proposal(
    block: Block, key: Keypair = VALIDATOR, round: int = 1, chain: str = CHAIN
) -> Proposal:
    fields = (block.height, round, round - 1, block.hash, key.public_key)
    return Proposal(*fields, key.sign(proposal_sign_bytes(chain, *fields)))


def sample_certificate(
    block: Block, keys: tuple[Keypair, ...] = (VALIDATOR, STRANGER), chain: str = CHAIN
) -> CommitCertificate:
    votes = [signed_vote(k, PRECOMMIT, block.height, block.hash, chain) for k in keys]
    return CommitCertificate.from_votes(votes)


TXS = sample_txs()
BLOCK = sample_block(3, tuple(TXS[:3]))
BLOCK_BYTES = BLOCK.encode()
VOTES = [
    signed_vote(VALIDATOR, PREVOTE, 5, H32).encode(),
    signed_vote(VALIDATOR, PRECOMMIT, 1, b"").encode(),
]
PROPOSAL = sample_proposal(BLOCK)
CERTIFICATE = sample_certificate(BLOCK)
EVIDENCE = sample_evidence().encode()
PROPOSAL_MESSAGE = encode_proposal_message(PROPOSAL, BLOCK_BYTES)
COMMIT_MESSAGE = encode_commit_message(CERTIFICATE, BLOCK_BYTES)
RECEIPTS = encode_receipts(
    [Receipt(Code.OK, (("award", C1.public_key, 50),)), Receipt(Code.EXPIRED)]
)
STATUS = encode_status(7, H32)
BLOCK_REQUEST = encode([1, 64])
BLOCK_RESPONSE = encode([[BLOCK_BYTES, CERTIFICATE.encode()]])
TX_GOSSIP = encode(TXS[:4])
MESSAGES = [
    BLOCK_BYTES,
    BLOCK.header.encode(),
    *VOTES,
    PROPOSAL.encode(),
    CERTIFICATE.encode(),
    EVIDENCE,
    PROPOSAL_MESSAGE,
    COMMIT_MESSAGE,
    RECEIPTS,
    STATUS,
    BLOCK_REQUEST,
    BLOCK_RESPONSE,
    TX_GOSSIP,
]
EVERYTHING = TXS + MESSAGES


# --- hostile input --------------------------------------------------------------------

EDGE_INTS = [0, 1, -1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, -(2**63)]


# Wire values a schema must refuse where it expects something else.
EDGE_VALUES = st.recursive(
    st.one_of(
        st.sampled_from(EDGE_INTS),
        st.integers(-(2**63), 2**64 - 1),
        st.sampled_from([True, False, None, 1.5, float("nan")]),
        st.binary(max_size=70),
        st.sampled_from([b"", bytes(31), bytes(32), bytes(33), bytes(64)]),
        st.text(max_size=70),
        st.sampled_from(["", "\x00", "a\nb", "é" * 40, "\u202e", "x" * 200]),
    ),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4), inner, max_size=2)
    ),
    max_leaves=6,
)


def _slots(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths to every value inside a decoded tree, the root first."""
    out = [path]
    if isinstance(value, list | dict):
        keys = range(len(value)) if isinstance(value, list) else value.keys()
        for key in keys:
            out += _slots(value[key], (*path, key))
    return out


def _replace(value: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    copy = list(value) if isinstance(value, list) else dict(value)
    copy[path[0]] = _replace(copy[path[0]], path[1:], new)
    return copy


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False)


def dump_json(value: Any) -> bytes:
    return json.dumps(value, default=lambda b: b.hex()).encode()


@st.composite
def reshaped(
    draw,
    valid: st.SearchStrategy[bytes],
    loads: Callable[[bytes], Any] = unpack,
    dumps: Callable[[Any], bytes] = pack,
) -> bytes:
    """A valid encoding with one value swapped, dropped or doubled, re-encoded
    canonically: it passes the canonical check and meets the schema."""
    tree = loads(draw(valid))
    path = draw(st.sampled_from(_slots(tree)))
    action = draw(st.sampled_from(["swap", "drop", "double", "wrap"]))
    if action == "swap" or not path:
        tree = _replace(tree, path, draw(EDGE_VALUES))
    else:
        parent = _resolve(tree, path[:-1])
        items = list(parent) if isinstance(parent, list) else dict(parent)
        if action == "drop":
            del items[path[-1]]
        elif action == "double" and isinstance(items, list):
            items.insert(path[-1], items[path[-1]])
        else:
            items[path[-1]] = [items[path[-1]]]
        tree = _replace(tree, path[:-1], items)
    return dumps(tree)


def _resolve(value: Any, path: tuple[int, ...]) -> Any:
    for i in path:
        value = value[i]
    return value


@st.composite
def mutated(draw, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid encoding with a few bytes flipped, cut, inserted or appended."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "append"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xC0, 0xC1, 0xFF]))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        else:
            data += draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def hostile(*valid: bytes, json_bodies: bool = False) -> st.SearchStrategy[bytes]:
    """Random bytes, and byte-level and structural mutations of `valid`
    (msgpack encodings, or JSON documents with `json_bodies`)."""
    originals = st.sampled_from(valid)
    codec = (json.loads, dump_json) if json_bodies else (unpack, pack)
    return st.one_of(
        st.binary(max_size=512),
        mutated(originals),
        reshaped(originals, *codec),
        reshaped(originals, *codec).flatmap(lambda d: mutated(st.just(d))),
    )


def refuses_only(
    decoder: Callable[[bytes], Any], refusal: type[Exception], data: bytes
) -> Any:
    """decoder(data), or None when it raised `refusal`; anything else fails."""
    try:
        return decoder(data)
    except refusal:
        return None


# --- state: codec, transactions, blocks, evidence -------------------------------------


@FUZZ
@given(data=hostile(*EVERYTHING))
def test_codec_decode_refuses_with_decode_error(data: bytes):
    value = refuses_only(lambda d: decode(d, 1 << 20), DecodeError, data)

    if value is not None:
        assert encode(value) == data  # one value, one encoding


@FUZZ
@given(data=hostile(*TXS))
def test_transaction_decode_refuses_with_tx_rejected(data: bytes):
    try:
        tx = decode_tx(data)
    except TxRejected as exc:
        assert exc.code in (Code.MALFORMED, Code.UNSUPPORTED_VERSION, Code.UNKNOWN_KIND)
        return

    assert tx.raw == data and tx.hash == sha256(data)
    assert encode(msgpack.unpackb(data, raw=False)) == data


@FUZZ
@given(data=hostile(BLOCK_BYTES, BLOCK.header.encode(), RECEIPTS))
def test_block_decoders_refuse_with_decode_error(data: bytes):
    block = refuses_only(decode_block, DecodeError, data)
    header = refuses_only(decode_header, DecodeError, data)
    receipts = refuses_only(decode_receipts, DecodeError, data)

    if block is not None:
        assert block.encode() == data
    if header is not None:
        assert header.encode() == data
    if receipts is not None:
        assert encode_receipts(receipts) == data


@FUZZ
@given(data=hostile(EVIDENCE))
def test_double_sign_evidence_check_refuses_with_evidence_error(data: bytes):
    assume(data != EVIDENCE)
    # A changed byte of signed evidence never proves anything.
    assert refuses_only(lambda d: check_double_sign(CHAIN, d), EvidenceError, data) in (
        None,
        # Only a second spelling of the very same votes could pass.
        check_double_sign(CHAIN, EVIDENCE),
    )


# --- consensus and block sync messages ------------------------------------------------

CONSENSUS_DECODERS: list[tuple[Callable[[bytes], Any], bytes]] = [
    (decode_vote, VOTES[0]),
    (decode_vote, VOTES[1]),
    (decode_proposal, PROPOSAL.encode()),
    (decode_certificate, CERTIFICATE.encode()),
    (decode_evidence, EVIDENCE),
    (decode_proposal_message, PROPOSAL_MESSAGE),
    (decode_commit_message, COMMIT_MESSAGE),
]


def reencode(message: Any) -> bytes:
    if isinstance(message, tuple):  # (proposal or certificate, block)
        head, block = message
        encoder = (
            encode_proposal_message
            if isinstance(head, Proposal)
            else encode_commit_message
        )
        return encoder(head, block.encode())
    return message.encode()


@pytest.mark.parametrize(
    ("decoder", "valid"),
    CONSENSUS_DECODERS,
    ids=[f"{d.__name__}-{i}" for i, (d, _) in enumerate(CONSENSUS_DECODERS)],
)
@FUZZ
@given(data=st.data())
def test_consensus_decoders_refuse_with_malformed_message(decoder, valid, data):
    raw = data.draw(hostile(valid, *MESSAGES[:8]))

    message = refuses_only(decoder, MalformedMessage, raw)

    if message is not None:
        assert reencode(message) == raw


@FUZZ
@given(data=hostile(STATUS, BLOCK_REQUEST, encode([2**63 - 1, 64])))
def test_status_and_block_request_refuse_with_decode_error(data: bytes):
    status = refuses_only(decode_status, DecodeError, data)
    served = refuses_only(
        lambda d: serve_blocks(d, {1: BLOCK_BYTES}.get, {1: b"c"}.get),
        DecodeError,
        data,
    )

    if status is not None:
        assert encode_status(*status) == data
    if served is not None:
        assert type(decode(served, 1 << 22)) is list


# --- peer frames ----------------------------------------------------------------------

MAX_FRAME = 4096


def frame_stream() -> st.SearchStrategy[bytes]:
    """Several frames back to back, as a connection carries them."""
    frame = st.builds(
        lambda t, r, body: encode_frame(t, r, body, 1 << 20),
        st.integers(MIN_MSG_TYPE, MAX_MSG_TYPE),
        st.sampled_from([0, 1, 2**63 - 1]),
        st.sampled_from([b"", STATUS, VOTES[0], TX_GOSSIP, b"x" * MAX_FRAME]),
    )
    return st.lists(frame, min_size=1, max_size=4).map(b"".join)


async def read_frames(data: bytes) -> list:
    stream = asyncio.StreamReader()
    stream.feed_data(data)
    stream.feed_eof()
    admitted: list[int] = []
    reader = FrameReader(
        stream,
        max_frame=MAX_FRAME,
        idle_timeout=5,
        frame_timeout=5,
        admit=admitted.append,
    )
    frames = []
    try:
        while (frame := await reader.read()) is not None:
            frames.append(frame)
    except ProtocolError as exc:
        assert exc.reason in {
            "malformed_frame",
            "bad_frame_shape",
            "frame_too_large",
            "truncated_frame",
        }, exc
    assert all(size <= 4 + MAX_FRAME for size in admitted)
    return frames


@FUZZ
@given(data=st.one_of(st.binary(max_size=600), mutated(frame_stream())))
async def test_frame_reader_refuses_with_protocol_error(data: bytes):
    frames = await read_frames(data)

    # Frames are neither signed nor hashed, so any msgpack spelling of
    # [type, id, body] is taken; what is taken must be within range.
    for frame in frames:
        assert MIN_MSG_TYPE <= frame.msg_type <= MAX_MSG_TYPE
        assert 0 <= frame.request_id < 2**63 and type(frame.body) is bytes


@FUZZ
@given(
    data=hostile(*(encode([t, 0, m]) for t, m in ((2, PROPOSAL_MESSAGE), (-1, b""))))
)
def test_frame_payload_decode_refuses_with_protocol_error(data: bytes):
    frame = refuses_only(decode_frame, ProtocolError, data)

    if frame is not None:
        assert MIN_MSG_TYPE <= frame.msg_type <= MAX_MSG_TYPE
        assert type(frame.body) is bytes


# --- through a node: mempool admission, peering handlers, block sync ------------------


@pytest.fixture
async def node(tmp_path):
    async with running_node(tmp_path) as harness:
        yield harness


def ledger(h: Harness) -> tuple[int, bytes, int]:
    store = h.node.store
    return store.height, store.state_root, len(h.node.mempool)


@NODE_FUZZ
@given(data=st.lists(hostile(*TXS), min_size=1, max_size=4))
async def test_admission_refuses_garbage_and_admits_nothing(node: Harness, data):
    assume(not set(data) & set(TXS))
    before = ledger(node)

    results = await node.node.submit_batch(data, gossip=False)

    for result in results:
        assert isinstance(result, TxRejected | MempoolFull), result
        assert not isinstance(result, Admission)
    assert ledger(node) == before


class PenaltyLog:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, peer: bytes, reason: str) -> None:
        self.reasons.append(reason)


@pytest.fixture
def peering(node: Harness) -> tuple[Peering, PenaltyLog]:
    """The node's peer-message handlers, without the network running."""
    handlers = Peering(node.node, NodeIdentity(VALIDATOR.seed))
    penalties = PenaltyLog()
    handlers.penalize = penalties
    handlers.sync.penalize = penalties
    return handlers, penalties


PEER = bytes(32)


@NODE_FUZZ
@given(
    kind=st.sampled_from(["txs", "status", "blocks"]),
    data=hostile(TX_GOSSIP, STATUS, BLOCK_REQUEST),
)
async def test_peer_messages_never_raise_and_apply_nothing(
    node: Harness, peering, kind: str, data: bytes
):
    handlers, penalties = peering
    assume(data not in (TX_GOSSIP, STATUS, BLOCK_REQUEST))
    before = ledger(node)

    if kind == "txs":
        await handlers.on_txs(PEER, data)
    elif kind == "status":
        await handlers.on_status(PEER, data)
    else:
        reply = await handlers.on_blocks_request(PEER, data)
        assert type(decode(reply, 1 << 23)) is list

    assert ledger(node) == before
    if kind == "status" and not penalties.reasons:
        assert handlers.sync.peer_tips[PEER] == decode_status(data)[0]


def next_entry(h: Harness) -> tuple[bytes, Block]:
    """A block response with the real next block and a valid certificate: what
    an honest peer serves, so mutations of it reach every check of a batch."""
    node = h.node
    block = node.app.propose_block(
        node.store.height + 1, node.clock(), VALIDATOR.public_key
    )
    vote = signed_vote(VALIDATOR, PRECOMMIT, block.height, block.hash)
    certificate = CommitCertificate.from_votes([vote])
    return encode([[block.encode(), certificate.encode()]]), block


@NODE_FUZZ
@given(data=st.data())
async def test_block_sync_batch_refuses_with_sync_error(node: Harness, peering, data):
    handlers, _ = peering
    valid, honest = next_entry(node)
    raw = data.draw(hostile(valid, BLOCK_RESPONSE))
    before = ledger(node)

    try:
        applied = await handlers.sync.apply_batch(PEER, raw, honest.height)
    except SyncError:
        applied = None

    # A mutation may keep the honest entry whole (the batch doubled, garbage
    # after it): that block, and only that one, may be applied.
    store = node.node.store
    if store.height == before[0]:
        assert ledger(node) == before and not applied
    else:
        assert (store.height, store.block_hash) == (honest.height, honest.hash)


async def test_block_sync_applies_the_valid_batch_it_was_fuzzed_from(
    node: Harness, peering
):
    handlers, _ = peering

    valid, _ = next_entry(node)

    applied = await handlers.sync.apply_batch(PEER, valid, 1)

    assert applied == 1 and node.node.store.height == 1


# --- a running consensus engine -------------------------------------------------------

# Validator 0 of four runs; the messages come from validators 1 and 2, for
# height 1 (where validator 1 proposes round 0), so they reach every check.
ENGINE_BLOCK = sample_block(1, chain=ENGINE_CHAIN, proposer=VALIDATOR_KEYS[1])
ENGINE_MESSAGES = {
    "vote": [
        signed_vote(
            VALIDATOR_KEYS[1], PREVOTE, 1, ENGINE_BLOCK.hash, ENGINE_CHAIN
        ).encode(),
        signed_vote(VALIDATOR_KEYS[2], PRECOMMIT, 1, b"", ENGINE_CHAIN).encode(),
    ],
    "proposal": [
        encode_proposal_message(
            sample_proposal(ENGINE_BLOCK, VALIDATOR_KEYS[1], 0, ENGINE_CHAIN),
            ENGINE_BLOCK.encode(),
        )
    ],
    # Two of four precommits: a certificate short of a quorum.
    "commit": [
        encode_commit_message(
            sample_certificate(ENGINE_BLOCK, tuple(VALIDATOR_KEYS[1:3]), ENGINE_CHAIN),
            ENGINE_BLOCK.encode(),
        )
    ],
}


@pytest.fixture
async def engine_cluster(tmp_path):
    timeouts = dataclasses.replace(FAST, heartbeat_ms=60_000)
    cluster = Cluster(tmp_path, n=4, timeouts=timeouts)
    await cluster.start([0])
    yield cluster
    await cluster.close()


@NODE_FUZZ
@given(kind=st.sampled_from(sorted(ENGINE_MESSAGES)), data=st.data())
async def test_engine_blames_the_peer_for_every_hostile_message(
    engine_cluster, kind: str, data
):
    valid = ENGINE_MESSAGES[kind]
    raw = data.draw(hostile(*valid, *ENGINE_MESSAGES["vote"]))
    assume(raw not in valid)
    node = engine_cluster.nodes[0]

    reason = await node.engine.on_message(kind, raw, peer="fuzz")

    # An exception escaping a decoder would come back as "internal error", a
    # failure of our own that lets the sender go unpenalised.
    assert reason is None or not is_local_failure(reason), reason
    assert node.height == 0
    engine_cluster.assert_no_errors()


# --- API request bodies and parameters ------------------------------------------------

DOCUMENTED_CODES = set(API_CODES) | {code.slug for code in TX_CODES}
JSON_BODIES = [
    b'{"tx": "' + TXS[3].hex().encode() + b'"}',
    b'{"txs": ["' + TXS[3].hex().encode() + b'", "00"]}',
    b'{"tx": "00", "tx": "01"}',
    b'{"txs": [[[[[]]]]]}',
]
MSGPACK_BODIES = [msgpack.packb(TXS[:3]), TXS[3]]


def documented_refusal(parse: Callable[[], Any]) -> Any:
    try:
        return parse()
    except ApiError as exc:
        assert exc.doc["code"] in DOCUMENTED_CODES, exc.doc
        assert 400 <= exc.status < 500, exc.doc
        return None


@FUZZ
@given(body=hostile(*JSON_BODIES, json_bodies=True) | hostile(*MSGPACK_BODIES))
def test_request_body_parsers_refuse_with_documented_problems(body: bytes):
    single = documented_refusal(lambda: views.json_tx(views.parse_json(body)))
    batch = documented_refusal(lambda: views.json_batch(views.parse_json(body), 8))
    packed = documented_refusal(lambda: views.msgpack_batch(body, 8))

    if single is not None:
        assert type(single) is bytes
    for items in (batch, packed):
        for item in items or []:
            assert type(item) is bytes or isinstance(item, ApiError)


TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["0", "1", "-1", "+1", "01", "9" * 19, "9" * 40, "1e3", "nan"]),
    st.sampled_from(["2026-02-30", "1969-12-31", "9999-12-31", "0000-01-01"]),
    st.sampled_from(["perk1", C1.address, C1.address.upper(), "00" * 32]),
)


@FUZZ
@given(text=TEXT, other=TEXT)
def test_parameter_parsers_refuse_with_documented_problems(text: str, other: str):
    documented_refusal(lambda: views.parse_height(text))
    documented_refusal(lambda: views.parse_hash(text))
    documented_refusal(lambda: views.parse_address_text(text))
    documented_refusal(lambda: views.parse_limit({"limit": text}))
    documented_refusal(lambda: views.parse_wait({"wait": text, "timeout": other}, 5))
    documented_refusal(lambda: views.parse_wait({"wait": "true", "timeout": text}, 5))
    documented_refusal(lambda: views.parse_cursor({"cursor": text}, C1.public_key))
    documented_refusal(lambda: views.check_query([(text, other)], ("limit",)))
    first = documented_refusal(lambda: views_loyalty.parse_day({"from": text}, "from"))
    end = documented_refusal(lambda: views_loyalty.parse_day({"to": other}, "to"))
    if first is not None and end is not None:
        documented_refusal(lambda: views_loyalty.check_range(first, end, 3660))

    assert views.prefers_msgpack(text) in (True, False)


def test_fuzzed_samples_are_valid():
    """The mutations start from encodings every decoder accepts."""
    assert all(isinstance(decode_tx(raw), Transaction) for raw in TXS)
    assert decode_block(BLOCK_BYTES) == BLOCK
    for decoder, valid in CONSENSUS_DECODERS:
        assert reencode(decoder(valid)) == valid
    assert check_double_sign(CHAIN, EVIDENCE)[0] == VALIDATOR.public_key
    assert decode_status(STATUS) == (7, H32)
    assert decode_receipts(RECEIPTS)[1].code == Code.EXPIRED
