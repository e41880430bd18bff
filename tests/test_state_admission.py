"""Admission: which transactions may enter a block, what build_block drops and
why, and the blocks execute_block refuses."""

from __future__ import annotations

import dataclasses
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client.builders import BuildError
from state.block import MAX_BLOCK_TXS, Block, decode_block
from state.codec import encode, sha256
from state.codes import ADMISSION_CODES, Code
from state.execute import Executor, InvalidBlock
from state.store import Store, StoreError
from state.tx import (
    MAX_AMOUNT,
    MAX_RATE,
    MAX_TTL_S,
    Kind,
    SignatureCache,
    TxRejected,
    build_signed,
    check_stateless,
    decode_tx,
)
from tests.state_helpers import (
    ADMIN,
    C1,
    C2,
    CHAIN,
    M1,
    M3,
    VALIDATOR,
    Chain,
    b,
    codes,
    make_genesis,
)

# Ed25519 group order: S + L is the textbook second spelling of a signature.
L = 2**252 + 27742317777372353535851777372039573189


@pytest.fixture
def chain(tmp_path) -> Chain:
    c = Chain(tmp_path / "proposer")
    yield c
    c.close()


@pytest.fixture
def validator(tmp_path) -> Chain:
    c = Chain(tmp_path / "validator")
    yield c
    c.close()


def funded(chain: Chain) -> None:
    """Give C1 1000 coins in block 1."""
    award = b.award_purchase(M1, chain.chain_id, chain.exp, C1, "fund", 10_000)
    assert chain.run([award]) == [Code.OK]


def dropped_codes(result) -> list[Code]:
    return [code for _, code, _ in result.dropped]


def admit_code(chain: Chain, raw: bytes, time_ms: int | None = None) -> Code:
    """The code build_block gives `raw` alone: OK if admitted, else the drop."""
    _, result = chain.build([raw], time_ms)
    if result.dropped:
        assert result.txs == []
        return result.dropped[0][1]
    return Code.OK


# --- chain id -----------------------------------------------------------------

LOOK_ALIKES = {
    "upper-case": CHAIN.upper(),
    "one-letter-case": "Perk-test-1",
    "trailing-space": CHAIN + " ",
    "leading-space": " " + CHAIN,
    "suffix-digit": CHAIN + "0",
    "other-number": "perk-test-2",
    "prefix": CHAIN[:-1],
    "cyrillic-e": CHAIN.replace("e", "\u0435", 1),  # е
    "cyrillic-p": "\u0440" + CHAIN[1:],  # р
    "unicode-hyphen": CHAIN.replace("-", "\u2010", 1),
    "fullwidth-1": CHAIN[:-1] + "\uff11",
    "nfd-accent": unicodedata.normalize("NFD", "perk-tést-1"),
}


@pytest.mark.parametrize("chain_id", LOOK_ALIKES.values(), ids=LOOK_ALIKES.keys())
def test_look_alike_chain_ids_are_wrong_chain(chain: Chain, chain_id: str) -> None:
    funded(chain)
    raw = b.transfer(C1, chain_id, chain.exp, C2, 1)
    tx = decode_tx(raw)
    assert tx.chain_id == chain_id != CHAIN
    with pytest.raises(TxRejected) as info:
        check_stateless(tx, CHAIN, SignatureCache())
    assert info.value.code == Code.WRONG_CHAIN
    assert admit_code(chain, raw) == Code.WRONG_CHAIN


def test_chain_id_with_invisible_character_is_malformed() -> None:
    sign = C1.sign
    for chain_id in (CHAIN + "\u200b", CHAIN + "\n", "\x00" + CHAIN, ""):
        raw = build_signed(
            chain_id, Kind.TRANSFER, C1.public_key, 1, [b"\1" * 32, 1, ""], sign
        )
        with pytest.raises(TxRejected) as info:
            decode_tx(raw)
        assert info.value.code == Code.MALFORMED
        with pytest.raises(BuildError):
            b.transfer(C1, chain_id, 1, C2, 1)


def test_transaction_of_another_chain_cannot_be_replayed_here(tmp_path) -> None:
    # Same keys, same genesis but for the chain id: a signed tx is not portable.
    other = Chain(tmp_path / "other", make_genesis(chain_id="perk-test-2"))
    here = Chain(tmp_path / "here")
    raw = b.award_purchase(M1, "perk-test-2", other.exp, C1, "o", 1000)
    assert other.run([raw]) == [Code.OK]
    assert admit_code(here, raw) == Code.WRONG_CHAIN
    other.close()
    here.close()


# --- signature ----------------------------------------------------------------


def test_every_flipped_signature_byte_is_bad_signature(chain: Chain) -> None:
    funded(chain)
    raw = b.transfer(C1, chain.chain_id, chain.exp, C2, 1)
    assert admit_code(chain, raw) == Code.OK
    for position in range(len(raw) - 64, len(raw)):
        for mask in (0x01, 0x80):
            bad = bytearray(raw)
            bad[position] ^= mask
            assert admit_code(chain, bytes(bad)) == Code.BAD_SIGNATURE, position


def test_changed_payload_with_old_signature_is_bad_signature(chain: Chain) -> None:
    funded(chain)
    raw = b.transfer(C1, chain.chain_id, chain.exp, C2, 5, "memo")
    forged = raw.replace(b"memo", b"mema")
    tx = decode_tx(forged)
    assert tx.payload.memo == "mema" and tx.signature == decode_tx(raw).signature
    assert admit_code(chain, forged) == Code.BAD_SIGNATURE
    # A larger amount in the same-size integer encoding.
    more = raw.replace(b"\x05\xa4memo", b"\x06\xa4memo")
    assert decode_tx(more).payload.amount == 6
    assert admit_code(chain, more) == Code.BAD_SIGNATURE


def test_signature_by_another_key_is_bad_signature(chain: Chain) -> None:
    funded(chain)
    # C2 signs a transfer out of C1's account.
    raw = build_signed(
        chain.chain_id,
        Kind.TRANSFER,
        C1.public_key,
        chain.exp,
        [C2.public_key, 1, ""],
        C2.sign,
    )
    assert admit_code(chain, raw) == Code.BAD_SIGNATURE


def test_malleated_signature_s_plus_l_is_refused(chain: Chain) -> None:
    """S + L verifies with a lax verifier and would give the same transaction a
    second hash, dodging the duplicate check."""
    funded(chain)
    raw = b.transfer(C1, chain.chain_id, chain.exp, C2, 1)
    s = int.from_bytes(raw[-32:], "little")
    malleated = raw[:-32] + (s + L).to_bytes(32, "little")
    assert decode_tx(malleated).hash != decode_tx(raw).hash
    assert admit_code(chain, malleated) == Code.BAD_SIGNATURE
    assert chain.run([raw]) == [Code.OK]
    assert admit_code(chain, malleated) == Code.BAD_SIGNATURE


# --- expiry -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offset_s", "code"),
    [
        (-3600, Code.EXPIRED),
        (-1, Code.EXPIRED),
        (0, Code.EXPIRED),  # expires_at == block time: already void
        (1, Code.OK),
        (MAX_TTL_S, Code.OK),
        (MAX_TTL_S + 1, Code.EXPIRY_TOO_FAR),
        (10**9, Code.EXPIRY_TOO_FAR),
    ],
)
@pytest.mark.parametrize("ms", [0, 999])
def test_expiry_window(chain: Chain, offset_s: int, code: Code, ms: int) -> None:
    now_s = chain.store.time_ms // 1000 + 100
    raw = b.award_purchase(M1, chain.chain_id, now_s + offset_s, C1, "o", 1000)
    # Milliseconds are dropped: 999 ms past now_s is still second now_s.
    assert admit_code(chain, raw, now_s * 1000 + ms) == code


def test_expiry_beyond_int64_is_malformed(chain: Chain) -> None:
    raw = build_signed(
        chain.chain_id,
        Kind.AWARD_PURCHASE,
        M1.public_key,
        2**63,
        [C1.public_key, "o", 1000],
        M1.sign,
    )
    with pytest.raises(TxRejected) as info:
        decode_tx(raw)
    assert info.value.code == Code.MALFORMED


def test_transaction_admitted_later_expires(chain: Chain) -> None:
    now_s = chain.store.time_ms // 1000 + 10
    raw = b.award_purchase(M1, chain.chain_id, now_s + 30, C1, "o", 1000)
    assert admit_code(chain, raw, now_s * 1000) == Code.OK
    assert admit_code(chain, raw, (now_s + 29) * 1000 + 999) == Code.OK
    assert admit_code(chain, raw, (now_s + 30) * 1000) == Code.EXPIRED


# --- duplicates ---------------------------------------------------------------


def test_duplicate_in_the_same_block_is_dropped(chain: Chain) -> None:
    raw = b.award_purchase(M1, chain.chain_id, chain.exp, C1, "o", 1000)
    other = b.award_purchase(M1, chain.chain_id, chain.exp, C1, "p", 1000)
    block, result = chain.build([raw, other, raw, raw])
    assert block.txs == (raw, other)
    assert dropped_codes(result) == [Code.DUPLICATE_TX] * 2
    assert codes(result) == [Code.OK, Code.OK]


def test_duplicate_of_committed_transaction_survives_reopen(tmp_path) -> None:
    path = tmp_path / "db"
    chain = Chain(path)
    raw = b.award_purchase(M1, chain.chain_id, chain.exp, C1, "o", 1000)
    assert chain.run([raw]) == [Code.OK]
    assert admit_code(chain, raw) == Code.DUPLICATE_TX
    root, height = chain.store.state_root, chain.store.height
    chain.close()

    reopened = Chain(path)
    assert (reopened.store.state_root, reopened.store.height) == (root, height)
    assert reopened.store.is_committed(decode_tx(raw).hash)
    assert reopened.store.tx_location(decode_tx(raw).hash) == (1, 0)
    assert admit_code(reopened, raw) == Code.DUPLICATE_TX
    # A fresh signature cache changes nothing: the index is on disk.
    fresh = Executor(reopened.store, SignatureCache())
    _, result = fresh.build_block(
        reopened.next_ms, VALIDATOR.public_key, [decode_tx(raw)]
    )
    assert dropped_codes(result) == [Code.DUPLICATE_TX]
    reopened.close()


def test_store_refuses_another_genesis(tmp_path) -> None:
    path = tmp_path / "db"
    Chain(path).close()
    with pytest.raises(StoreError):
        Store(path, make_genesis(chain_id="perk-test-2"))


def test_store_refuses_a_database_of_an_older_chain_format(tmp_path) -> None:
    path = tmp_path / "db"
    chain = Chain(path)
    chain.store.db.delete(b"mformat")  # as written before the marker existed
    chain.close()
    with pytest.raises(StoreError, match="chain format 1"):
        Chain(path)


# --- amounts ------------------------------------------------------------------

OUT_OF_RANGE = [0, MAX_AMOUNT + 1, -1, -(2**63), 2**63 - 1, 2**63, 2**64 - 1]


def amount_tx(kind: str, exp: int, amount: int) -> bytes:
    if kind == "award":
        return b.award_purchase(M1, CHAIN, exp, C2, f"x{amount}", amount)
    if kind == "redeem":
        return b.redeem(C1, CHAIN, exp, M1, amount)
    return b.transfer(C1, CHAIN, exp, C2, amount)


@pytest.mark.parametrize("amount", OUT_OF_RANGE)
@pytest.mark.parametrize("kind", ["award", "redeem", "transfer"])
def test_amount_out_of_range(chain: Chain, kind: str, amount: int) -> None:
    funded(chain)
    raw = amount_tx(kind, chain.exp, amount)
    assert decode_tx(raw).payload.amount == amount  # well-formed
    assert admit_code(chain, raw) == Code.AMOUNT_OUT_OF_RANGE


@pytest.mark.parametrize("kind", ["award", "redeem", "transfer"])
def test_amount_at_the_bounds_is_admitted(chain: Chain, kind: str) -> None:
    funded(chain)
    for amount in (1, MAX_AMOUNT):
        assert admit_code(chain, amount_tx(kind, chain.exp, amount)) == Code.OK


@pytest.mark.parametrize(
    ("rate", "cap", "code"),
    [
        (0, 0, Code.OK),
        (MAX_RATE, MAX_AMOUNT, Code.OK),
        (-1, 10, Code.AMOUNT_OUT_OF_RANGE),
        (MAX_RATE + 1, 10, Code.AMOUNT_OUT_OF_RANGE),
        (10, -1, Code.AMOUNT_OUT_OF_RANGE),
        (10, MAX_AMOUNT + 1, Code.AMOUNT_OUT_OF_RANGE),
        (2**64 - 1, 10, Code.AMOUNT_OUT_OF_RANGE),
        (10, 2**64 - 1, Code.AMOUNT_OUT_OF_RANGE),
    ],
)
def test_rate_and_cap_ranges(chain: Chain, rate: int, cap: int, code: Code) -> None:
    exp = chain.exp
    reg = b.register_merchant(ADMIN, CHAIN, exp, M3, "M", rate, cap)
    upd = b.update_merchant(ADMIN, CHAIN, exp, M1, "M", rate, cap, True)
    assert admit_code(chain, reg) == code
    assert admit_code(chain, upd) == code


@pytest.mark.parametrize("amount", [2**64, -(2**63) - 1, 10**30])
def test_amounts_msgpack_cannot_carry_are_refused_by_the_builder(amount: int) -> None:
    with pytest.raises(BuildError):
        b.transfer(C1, CHAIN, 10, C2, amount)


@pytest.mark.parametrize("amount", [True, False, 1.0, "1", b"\x01", None, [1]])
def test_amount_of_the_wrong_type_is_malformed(amount) -> None:
    raw = build_signed(
        CHAIN, Kind.TRANSFER, C1.public_key, 10, [C2.public_key, amount, ""], C1.sign
    )
    with pytest.raises(TxRejected) as info:
        decode_tx(raw)
    assert info.value.code == Code.MALFORMED
    with pytest.raises(BuildError):
        b.transfer(C1, CHAIN, 10, C2, amount)


def test_unsupported_version_and_unknown_kind() -> None:
    def raw_with(version: int, kind: int) -> bytes:
        body = [version, CHAIN, kind, C1.public_key, 10, [C2.public_key, 1, ""]]
        return encode(body + [C1.sign(b"perkchain/tx/v1\x00" + encode(body))])

    assert decode_tx(raw_with(1, 21)).kind == Kind.TRANSFER
    for version, kind, code in [
        (2, 21, Code.UNSUPPORTED_VERSION),
        (0, 21, Code.UNSUPPORTED_VERSION),
        (1, 200, Code.UNKNOWN_KIND),
        (1, 0, Code.UNKNOWN_KIND),
        (1, -1, Code.MALFORMED),
        (-1, 21, Code.MALFORMED),
    ]:
        with pytest.raises(TxRejected) as info:
            decode_tx(raw_with(version, kind))
        assert info.value.code == code, (version, kind)


# --- build_block --------------------------------------------------------------


def test_build_block_drops_each_inadmissible_tx_with_its_reason(chain: Chain) -> None:
    funded(chain)
    now_s = chain.next_ms // 1000
    good1 = b.transfer(C1, CHAIN, now_s + 60, C2, 1, "1")
    good2 = b.transfer(C1, CHAIN, now_s + 60, C2, 2, "2")
    committed = decode_tx(decode_block(chain.store.block_bytes(1)).txs[0])
    sig = bytearray(b.transfer(C1, CHAIN, now_s + 60, C2, 3))
    sig[-1] ^= 1
    candidates = [
        (good1, Code.OK),
        (b.transfer(C1, "perk-test-1 ", now_s + 60, C2, 4), Code.WRONG_CHAIN),
        (bytes(sig), Code.BAD_SIGNATURE),
        (b.transfer(C1, CHAIN, now_s, C2, 5), Code.EXPIRED),
        (b.transfer(C1, CHAIN, now_s + MAX_TTL_S + 1, C2, 6), Code.EXPIRY_TOO_FAR),
        (good1, Code.DUPLICATE_TX),
        (committed.raw, Code.DUPLICATE_TX),
        (b.transfer(C1, CHAIN, now_s + 60, C2, 0), Code.AMOUNT_OUT_OF_RANGE),
        (good2, Code.OK),
        # Admissible but refused by the ledger: enters the block with its code.
        (b.transfer(C1, CHAIN, now_s + 60, C2, 10**6), Code.INSUFFICIENT_BALANCE),
    ]
    block, result = chain.build([raw for raw, _ in candidates])
    assert [c for _, c in candidates if c not in ADMISSION_CODES] == codes(result)
    assert block.txs == (good1, good2, candidates[-1][0])
    assert codes(result) == [Code.OK, Code.OK, Code.INSUFFICIENT_BALANCE]
    expected_drops = [(decode_tx(raw).hash, code) for raw, code in candidates[1:8]]
    assert [(tx.hash, code) for tx, code, _ in result.dropped] == expected_drops
    assert all(isinstance(detail, str) and detail for _, _, detail in result.dropped)
    chain.store.commit_block(block, b"", result)
    assert chain.balance(C2) == 3
    assert chain.balance(C1) == 997


def test_build_block_refuses_non_increasing_time(chain: Chain) -> None:
    funded(chain)
    t = chain.store.time_ms
    for when in (t, t - 1):
        with pytest.raises(ValueError):
            chain.build([], when)


def test_empty_block_changes_nothing(chain: Chain, validator: Chain) -> None:
    funded(chain)
    before = chain.state()
    block, result = chain.build([])
    assert block.txs == () and result.receipts == [] and result.state_writes == {}
    chain.store.commit_block(block, b"", result)
    assert chain.state() == before
    for data in (chain.store.block_bytes(1), chain.store.block_bytes(2)):
        blk = decode_block(data)
        validator.store.commit_block(blk, b"", validator.executor.execute_block(blk))
    assert validator.store.state_root == chain.store.state_root


# --- execute_block ------------------------------------------------------------


def sync(src: Chain, dst: Chain) -> None:
    """Bring `dst` to `src`'s height by executing src's stored blocks."""
    for h in range(dst.store.height + 1, src.store.height + 1):
        block = decode_block(src.store.block_bytes(h))
        dst.store.commit_block(block, b"", dst.executor.execute_block(block))
    assert dst.store.state_root == src.store.state_root


def proposal(chain: Chain) -> Block:
    """A valid block 2 with a few transactions (not committed)."""
    exp = chain.exp
    block, result = chain.build(
        [
            b.transfer(C1, CHAIN, exp, C2, 10),
            b.redeem(C1, CHAIN, exp, M1, 5),
            b.award_purchase(M1, CHAIN, exp, C2, "o2", 100),
            b.transfer(C2, CHAIN, exp, C1, 10**6),  # refused by the ledger
        ]
    )
    assert codes(result)[-1] == Code.INSUFFICIENT_BALANCE
    return block


def test_valid_block_is_accepted_by_a_validator(chain: Chain, validator: Chain) -> None:
    funded(chain)
    sync(chain, validator)
    block = proposal(chain)
    result = validator.executor.execute_block(decode_block(block.encode()))
    assert result.state_root == block.header.state_root
    assert result.results_root == block.header.results_root


def forged_block(chain: Chain, raws: list[bytes], time_ms: int | None = None) -> Block:
    """A block whose header matches its contents, built without admission: the
    only rule it breaks is the admission of its transactions."""
    ex = chain.executor
    when = chain.next_ms if time_ms is None else time_ms
    txs = [decode_tx(r) for r in raws]
    result = ex.run(when, txs)
    header = ex.make_header(when, VALIDATOR.public_key, txs, result)
    return Block(header, tuple(raws))


def flip_last(raw: bytes) -> bytes:
    return raw[:-1] + bytes([raw[-1] ^ 1])


INADMISSIBLE = {
    "wrong-chain": lambda c, e: b.transfer(C1, CHAIN.upper(), e, C2, 1),
    "bad-signature": lambda c, e: flip_last(b.transfer(C1, CHAIN, e, C2, 1)),
    "expired": lambda c, e: b.transfer(C1, CHAIN, c.next_ms // 1000, C2, 1),
    "expiry-too-far": lambda c, e: b.transfer(
        C1, CHAIN, c.next_ms // 1000 + MAX_TTL_S + 1, C2, 1
    ),
    "amount-zero": lambda c, e: b.transfer(C1, CHAIN, e, C2, 0),
    "amount-huge": lambda c, e: b.transfer(C1, CHAIN, e, C2, 2**64 - 1),
    "committed": lambda c, e: decode_block(c.store.block_bytes(1)).txs[0],
}


@pytest.mark.parametrize("name", INADMISSIBLE)
def test_execute_block_refuses_an_inadmissible_tx(
    chain: Chain, validator: Chain, name: str
) -> None:
    funded(chain)
    sync(chain, validator)
    good = b.transfer(C1, CHAIN, chain.exp, C2, 7)
    bad = INADMISSIBLE[name](chain, chain.exp)
    block = forged_block(chain, [good, bad])
    root = validator.store.state_root
    with pytest.raises(InvalidBlock) as info:
        validator.executor.execute_block(block)
    assert info.value.height == 2
    assert "tx 1 is not admissible" in info.value.reason
    assert validator.store.state_root == root and validator.store.height == 1


def test_execute_block_refuses_a_duplicate_within_the_block(
    chain: Chain, validator: Chain
) -> None:
    funded(chain)
    sync(chain, validator)
    raw = b.transfer(C1, CHAIN, chain.exp, C2, 7)
    block = forged_block(chain, [raw, raw])
    with pytest.raises(InvalidBlock, match="tx 1 is not admissible: duplicate_tx"):
        validator.executor.execute_block(block)


def test_execute_block_refuses_undecodable_tx_bytes(
    chain: Chain, validator: Chain
) -> None:
    funded(chain)
    sync(chain, validator)
    block = proposal(chain)
    for junk in (b"", b"\x00", b"\xc1", block.txs[0][:-1], block.txs[0] + b"\x00"):
        bad = Block(block.header, block.txs[:1] + (junk,))
        with pytest.raises(InvalidBlock, match="tx 1 is not admissible: malformed"):
            validator.executor.execute_block(bad)


def test_execute_block_refuses_committed_tx_after_reopen(
    tmp_path, chain: Chain
) -> None:
    funded(chain)
    path = tmp_path / "v2"
    v = Chain(path)
    sync(chain, v)
    v.close()
    v = Chain(path)
    block = forged_block(chain, [decode_block(chain.store.block_bytes(1)).txs[0]])
    with pytest.raises(InvalidBlock, match="duplicate_tx"):
        v.executor.execute_block(block)
    v.close()


def _replace(block: Block, **fields) -> Block:
    return Block(dataclasses.replace(block.header, **fields), block.txs)


HEADER_FORGERIES = {
    "parent-hash": (lambda blk, st: _replace(blk, parent_hash=sha256(b"x")), "parent"),
    "parent-is-genesis": (
        lambda blk, st: _replace(blk, parent_hash=st.genesis_hash),
        "parent",
    ),
    "state-root": (
        lambda blk, st: _replace(blk, state_root=sha256(b"x")),
        "state root",
    ),
    "results-root": (
        lambda blk, st: _replace(blk, results_root=sha256(b"x")),
        "results root",
    ),
    "tx-root": (lambda blk, st: _replace(blk, tx_root=sha256(b"x")), "tx root"),
    "tx-order": (lambda blk, st: Block(blk.header, blk.txs[::-1]), "tx root"),
    "tx-missing": (lambda blk, st: Block(blk.header, blk.txs[:-1]), "tx root"),
    "same-time": (lambda blk, st: _replace(blk, time_ms=st.time_ms), "not after"),
    "earlier-time": (
        lambda blk, st: _replace(blk, time_ms=st.time_ms - 1),
        "not after",
    ),
    "height-repeat": (lambda blk, st: _replace(blk, height=1), "expected height 2"),
    "height-skip": (lambda blk, st: _replace(blk, height=3), "expected height 2"),
    "chain-id": (lambda blk, st: _replace(blk, chain_id="perk-test-2"), "chain id"),
    "validators": (
        lambda blk, st: _replace(blk, validators_hash=sha256(b"x")),
        "validators",
    ),
}


@pytest.mark.parametrize("name", HEADER_FORGERIES)
def test_execute_block_refuses_a_wrong_header(
    chain: Chain, validator: Chain, name: str
) -> None:
    funded(chain)
    sync(chain, validator)
    block = proposal(chain)
    validator.executor.execute_block(block)  # the original is fine
    forge, reason = HEADER_FORGERIES[name]
    bad = forge(block, validator.store)
    before = validator.state()
    with pytest.raises(InvalidBlock) as info:
        validator.executor.execute_block(bad)
    assert reason in info.value.reason
    assert validator.state() == before and validator.store.height == 1


def test_time_must_increase_even_by_a_millisecond(
    chain: Chain, validator: Chain
) -> None:
    funded(chain)
    sync(chain, validator)
    t = chain.store.time_ms
    # One millisecond later is the same second, and fine.
    block, result = chain.build([], t + 1)
    assert validator.executor.execute_block(block).state_root == result.state_root


def test_block_decode_round_trip_of_stored_blocks(chain: Chain) -> None:
    funded(chain)
    data = chain.store.block_bytes(1)
    block = decode_block(data)
    assert block.encode() == data
    assert block.hash == chain.store.block_hash


# --- signatures from odd keys ------------------------------------------------------

IDENTITY = bytes([1]) + bytes(31)  # the neutral point, a small-order key


@pytest.mark.parametrize(
    "signer",
    [IDENTITY, bytes(32), b"\xff" * 32, bytes([0xEC] + [0xFF] * 30 + [0x7F])],
    ids=["identity", "zero", "ff", "non-canonical"],
)
def test_small_order_and_invalid_keys_never_verify(signer: bytes) -> None:
    """(R = identity, S = 0) verifies for any message under a lax verifier with
    a small-order key: anyone could spend from such an account."""
    body = [1, CHAIN, int(Kind.TRANSFER), signer, 10, [C2.public_key, 1, ""]]
    raw = encode(body + [IDENTITY + bytes(32)])
    tx = decode_tx(raw)
    assert not tx.verify_signature()
    with pytest.raises(TxRejected) as info:
        check_stateless(tx, CHAIN, SignatureCache())
    assert info.value.code == Code.BAD_SIGNATURE


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=64, max_size=64))
@settings(max_examples=100, deadline=None)
def test_random_keys_and_signatures_are_bad_signature(signer, signature) -> None:
    body = [1, CHAIN, int(Kind.TRANSFER), signer, 10, [C2.public_key, 1, ""]]
    tx = decode_tx(encode(body + [signature]))
    assert tx.verify_signature() is False


# --- block size ---------------------------------------------------------------


def test_built_block_always_decodes(chain: Chain) -> None:
    exp = chain.exp
    # Admissible transfers from an empty account: refused by the ledger, cheap.
    raws = [
        b.transfer(C1, CHAIN, exp, C2, 1, f"m{i}") for i in range(MAX_BLOCK_TXS + 1)
    ]
    block, result = chain.build(raws)
    assert result.dropped == []
    assert len(block.txs) <= MAX_BLOCK_TXS
    assert decode_block(block.encode()) == block
