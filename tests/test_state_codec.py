"""The canonical codec: one spelling per value, every other spelling refused;
transaction, header, block and receipt decoding."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from state.block import (
    EMPTY_ROOT,
    Block,
    Header,
    Receipt,
    decode_block,
    decode_header,
    decode_receipts,
    encode_array_of_encoded,
    encode_receipts,
    merkle_root,
)
from state.codec import DecodeError, decode, encode, sha256
from state.codes import Code
from state.tx import (
    MAX_TX_BYTES,
    SIGN_DOMAIN,
    Kind,
    Transaction,
    TxRejected,
    build_signed,
    decode_tx,
    payload_wire,
)
from tests.state_helpers import ADMIN, C1, C2, CHAIN, M1, b

EXP = 1_764_550_000
FUZZ = settings(max_examples=300, deadline=None)

# --- spellings ----------------------------------------------------------------
#
# Every msgpack spelling of a value, canonical or not, so each non-canonical one
# can be offered to the decoder.


def int_spellings(n: int) -> set[bytes]:
    out = set()
    if 0 <= n < 128:
        out.add(bytes([n]))
    if -32 <= n < 0:
        out.add(bytes([n & 0xFF]))
    for tag, size in ((0xCC, 1), (0xCD, 2), (0xCE, 4), (0xCF, 8)):
        if 0 <= n < 1 << (8 * size):
            out.add(bytes([tag]) + n.to_bytes(size, "big"))
    for tag, size in ((0xD0, 1), (0xD1, 2), (0xD2, 4), (0xD3, 8)):
        if -(1 << (8 * size - 1)) <= n < 1 << (8 * size - 1):
            out.add(bytes([tag]) + n.to_bytes(size, "big", signed=True))
    return out


def str_spellings(s: str) -> set[bytes]:
    data = s.encode()
    n = len(data)
    out = {bytes([0xDA]) + n.to_bytes(2, "big") + data}
    out.add(bytes([0xDB]) + n.to_bytes(4, "big") + data)
    if n < 256:
        out.add(bytes([0xD9, n]) + data)
    if n < 32:
        out.add(bytes([0xA0 | n]) + data)
    return out


def bin_spellings(data: bytes) -> set[bytes]:
    n = len(data)
    out = {bytes([0xC5]) + n.to_bytes(2, "big") + data}
    out.add(bytes([0xC6]) + n.to_bytes(4, "big") + data)
    if n < 256:
        out.add(bytes([0xC4, n]) + data)
    return out


def array_heads(n: int) -> set[bytes]:
    out = {bytes([0xDC]) + n.to_bytes(2, "big"), bytes([0xDD]) + n.to_bytes(4, "big")}
    if n < 16:
        out.add(bytes([0x90 | n]))
    return out


def str_as_bin(s: str) -> bytes:
    return encode(s.encode())


def bin_as_str(data: bytes) -> bytes:
    return encode(data.decode("latin-1"))  # any bytes, now a string


def float64(x: float) -> bytes:
    return b"\xcb" + struct.pack(">d", x)


def float32(x: float) -> bytes:
    return b"\xca" + struct.pack(">f", x)


# --- canonical values ---------------------------------------------------------

scalars = (
    st.integers(-(2**63), 2**64 - 1)
    | st.booleans()
    | st.binary(max_size=300)
    | st.text(max_size=300)
)
values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=20), max_leaves=40)


def same(a, b) -> bool:
    """Equal and of the same types all the way down (True is not 1)."""
    if type(a) is not type(b):
        return False
    if type(a) is list:
        return len(a) == len(b) and all(map(same, a, b))
    return a == b


@given(values)
@settings(max_examples=200, deadline=None)
def test_canonical_values_round_trip(value) -> None:
    data = encode(value)
    assert same(decode(data, len(data)), value)
    assert encode(decode(data, len(data))) == data


@given(st.integers(-(2**63), 2**64 - 1))
@settings(max_examples=300, deadline=None)
def test_only_the_shortest_integer_spelling_is_accepted(n: int) -> None:
    canonical = encode(n)
    spellings = int_spellings(n)
    assert canonical in spellings
    assert decode(canonical, 16) == n
    for data in spellings - {canonical}:
        with pytest.raises(DecodeError):
            decode(data, 16)


@pytest.mark.parametrize(
    "n", [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32, -1, -32, -33, -128, -129]
)
def test_integer_spellings_at_the_format_boundaries(n: int) -> None:
    canonical = encode(n)
    for data in int_spellings(n):
        if data == canonical:
            assert decode(data, 16) == n
        else:
            with pytest.raises(DecodeError):
                decode(data, 16)


@given(st.text(max_size=300))
@settings(max_examples=100, deadline=None)
def test_only_the_shortest_string_spelling_is_accepted(s: str) -> None:
    canonical = encode(s)
    assert canonical in str_spellings(s)
    for data in str_spellings(s) - {canonical}:
        with pytest.raises(DecodeError):
            decode(data, 1 << 16)


@given(st.binary(max_size=300))
@settings(max_examples=100, deadline=None)
def test_only_the_shortest_bytes_spelling_is_accepted(data: bytes) -> None:
    canonical = encode(data)
    assert canonical in bin_spellings(data)
    for spelling in bin_spellings(data) - {canonical}:
        with pytest.raises(DecodeError):
            decode(spelling, 1 << 16)


@given(st.lists(st.integers(0, 127), max_size=40))
@settings(max_examples=100, deadline=None)
def test_only_the_shortest_array_spelling_is_accepted(items: list[int]) -> None:
    body = bytes(items)  # positive fixints encode as themselves
    canonical = encode(items)
    for head in array_heads(len(items)):
        data = head + body
        if data == canonical:
            assert decode(data, 1 << 16) == items
        else:
            with pytest.raises(DecodeError):
                decode(data, 1 << 16)


@given(values, st.binary(min_size=1, max_size=20))
@settings(max_examples=100, deadline=None)
def test_trailing_bytes_are_refused(value, extra: bytes) -> None:
    data = encode(value) + extra
    with pytest.raises(DecodeError):
        decode(data, len(data))


@pytest.mark.parametrize(
    "data",
    [
        b"\x81\x01\x02",  # a map
        b"\x91\x81\xa1k\x01",  # a map inside an array
        float32(1.5),
        b"\xa2\xff\xfe",  # a string that is not UTF-8
        b"\xa3\xed\xa0\x80",  # an encoded surrogate
        b"\xd4\x01\x00",  # an ext type
        b"\xc1",  # the never-used byte
        b"",
        b"\x92\x01",  # truncated array
    ],
)
def test_refused_forms(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data, 100)


@pytest.mark.parametrize("data", [b"\x80", b"\x91\x80", b"\xc7\x00\x05", b"\xc0"])
def test_decode_refuses_empty_map_ext_and_nil(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode(data, 100)


def test_float64_is_refused_by_decode_and_by_schemas() -> None:
    with pytest.raises(DecodeError):
        decode(float64(1.5), 16)
    header = [1, CHAIN, 1.5, 0, *([b"\0" * 32] * 5), b"\0" * 32]
    with pytest.raises(DecodeError):
        decode_header(encode(header))


def test_size_limit_and_non_bytes_input() -> None:
    data = encode([b"x" * 100])
    assert decode(data, len(data)) == [b"x" * 100]
    with pytest.raises(DecodeError):
        decode(data, len(data) - 1)
    for bad in ("text", None, 5, [1]):
        with pytest.raises(DecodeError):
            decode(bad, 100)  # type: ignore[arg-type]
    assert decode(bytearray(data), 200) == decode(memoryview(data), 200)


# --- transactions -------------------------------------------------------------


def valid_txs() -> list[bytes]:
    return [
        b.register_merchant(ADMIN, CHAIN, EXP, M1, "Café ☕", 150, 10**9),
        b.update_merchant(ADMIN, CHAIN, EXP, M1, "M", 0, 0, False),
        b.set_account_frozen(ADMIN, CHAIN, EXP, C1, True, "reason"),
        b.award_purchase(M1, CHAIN, EXP, C1, "order-1", 19_999),
        b.redeem(C1, CHAIN, EXP, M1, 300, "ref"),
        b.transfer(C1, CHAIN, EXP, C2, 2**20, "x" * 128),
    ]


VALID = valid_txs()


def fields_of(raw: bytes) -> list[bytes]:
    """The seven encoded fields of a canonical transaction."""
    value = decode(raw, MAX_TX_BYTES)
    assert raw[0] == 0x97
    parts = [encode(v) for v in value]
    assert b"\x97" + b"".join(parts) == raw
    return parts


def assemble(parts: list[bytes]) -> bytes:
    return b"\x97" + b"".join(parts)


def malformed(raw: bytes) -> str:
    with pytest.raises(TxRejected) as info:
        decode_tx(raw)
    assert info.value.code == Code.MALFORMED, info.value.detail
    return info.value.detail


def test_valid_transactions_decode() -> None:
    for raw in VALID:
        tx = decode_tx(raw)
        assert tx.raw == raw and tx.hash == sha256(raw)
        assert tx.verify_signature()
        assert assemble(fields_of(raw)) == raw


TRANSFER = VALID[-1]
T = fields_of(TRANSFER)  # version, chain, kind, signer, expires, payload, sig
P = decode(TRANSFER, MAX_TX_BYTES)[5]  # to, amount, memo


def with_field(index: int, data: bytes) -> bytes:
    parts = list(T)
    parts[index] = data
    return assemble(parts)


def with_payload(index: int, data: bytes) -> bytes:
    items = [encode(v) for v in P]
    items[index] = data
    return with_field(5, b"\x93" + b"".join(items))


NON_CANONICAL = {
    # integers wider than needed
    "version-uint8": with_field(0, b"\xcc\x01"),
    "kind-int8": with_field(2, b"\xd0\x15"),
    "expires-uint64": with_field(4, b"\xcf" + EXP.to_bytes(8, "big")),
    "amount-uint64": with_payload(1, b"\xcf" + (2**20).to_bytes(8, "big")),
    "amount-int64": with_payload(1, b"\xd3" + (2**20).to_bytes(8, "big")),
    "amount-int32": with_payload(1, b"\xd2" + (2**20).to_bytes(4, "big")),
    # strings as bytes and bytes as strings
    "chain-as-bin": with_field(1, str_as_bin(CHAIN)),
    "memo-as-bin": with_payload(2, str_as_bin(P[2])),
    "signer-as-str": with_field(3, bin_as_str(b"a" * 32)),
    "to-as-str": with_payload(0, bin_as_str(b"b" * 32)),
    "signature-as-str": with_field(6, bin_as_str(b"c" * 64)),
    "chain-str8": with_field(1, b"\xd9" + bytes([len(CHAIN)]) + CHAIN.encode()),
    "signer-bin16": with_field(3, b"\xc5\x00\x20" + T[3][2:]),
    "payload-array16": with_field(5, b"\xdc\x00\x03" + T[5][1:]),
    # maps, floats, nil, booleans where they do not belong
    "payload-map": with_field(5, b"\x83\x00" + encode(P[0]) + b"\x01\x01\x02\xa0"),
    "payload-empty-map": with_field(5, b"\x80"),
    "amount-float64": with_payload(1, float64(2.0**20)),
    "amount-float32": with_payload(1, float32(1.0)),
    "amount-bool": with_payload(1, b"\xc3"),
    "amount-nil": with_payload(1, b"\xc0"),
    "expires-float": with_field(4, float64(float(EXP))),
    "version-bool": with_field(0, b"\xc3"),
    # shapes
    "eight-fields": b"\x98" + TRANSFER[1:] + b"\x00",
    "six-fields": b"\x96" + b"".join(T[:6]),
    "payload-short": with_field(5, b"\x92" + b"".join(encode(v) for v in P[:2])),
    "signer-31-bytes": with_field(3, encode(b"a" * 31)),
    "signature-65-bytes": with_field(6, encode(b"c" * 65)),
    "memo-129-bytes": with_payload(2, encode("x" * 129)),
    "memo-control-char": with_payload(2, encode("a\nb")),
    "trailing-zero": TRANSFER + b"\x00",
    "trailing-tx": TRANSFER + TRANSFER,
    "not-an-array": encode(b"x" * 100),
}


@pytest.mark.parametrize("raw", NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_non_canonical_transactions_are_malformed(raw: bytes) -> None:
    assert raw != TRANSFER
    malformed(raw)


@pytest.mark.parametrize("depth", [1, 100, 1000, 100_000])
def test_deeply_nested_input_is_refused_cleanly(depth: int) -> None:
    data = b"\x91" * depth + b"\x00"
    malformed(data)
    for decoder in (decode_header, decode_block, decode_receipts):
        with pytest.raises(DecodeError):
            decoder(data)


def test_every_truncation_of_every_valid_tx_is_malformed() -> None:
    for raw in VALID:
        for n in range(len(raw)):
            malformed(raw[:n])


def test_oversized_transaction_is_malformed() -> None:
    raw = build_signed(
        CHAIN,
        Kind.TRANSFER,
        C1.public_key,
        EXP,
        [C2.public_key, 1, "x" * 1000],
        C1.sign,
    )
    assert len(raw) > MAX_TX_BYTES
    assert "over the limit" in malformed(raw)


def check_decode_tx(data: bytes) -> None:
    """decode_tx raises only TxRejected; what it accepts is exactly its input."""
    try:
        tx = decode_tx(data)
    except TxRejected as rejected:
        assert rejected.code in (
            Code.MALFORMED,
            Code.UNSUPPORTED_VERSION,
            Code.UNKNOWN_KIND,
        )
        return
    assert isinstance(tx, Transaction)
    assert tx.raw == data and tx.hash == sha256(data)
    body = [tx.version, tx.chain_id, int(tx.kind), tx.signer, tx.expires_at]
    body.append(payload_wire(tx.payload))
    # The signature covers exactly the decoded fields.
    assert tx.signing_bytes == SIGN_DOMAIN + encode(body)
    assert encode(body + [tx.signature]) == data


@given(st.binary(max_size=1200))
@FUZZ
def test_decode_tx_of_arbitrary_bytes(data: bytes) -> None:
    check_decode_tx(data)


@given(values)
@FUZZ
def test_decode_tx_of_arbitrary_canonical_values(value) -> None:
    check_decode_tx(encode(value))


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2000), st.integers(1, 255)),
    st.tuples(st.just("set"), st.integers(0, 2000), st.integers(0, 255)),
    st.tuples(st.just("insert"), st.integers(0, 2000), st.binary(max_size=9)),
    st.tuples(st.just("delete"), st.integers(0, 2000), st.integers(1, 9)),
    st.tuples(st.just("cut"), st.integers(0, 2000), st.just(0)),
)


def mutate(raw: bytes, steps) -> bytes:
    data = bytearray(raw)
    for op, pos, arg in steps:
        pos = pos % (len(data) + 1)
        if op == "flip" and pos < len(data):
            data[pos] ^= arg
        elif op == "set" and pos < len(data):
            data[pos] = arg
        elif op == "insert":
            data[pos:pos] = arg
        elif op == "delete":
            del data[pos : pos + arg]
        elif op == "cut":
            del data[pos:]
    return bytes(data)


@given(st.sampled_from(VALID), st.lists(mutation, min_size=1, max_size=4))
@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_decode_tx_of_mutated_valid_transactions(raw: bytes, steps) -> None:
    check_decode_tx(mutate(raw, steps))


# --- headers, blocks, receipts ------------------------------------------------

h32 = st.binary(min_size=32, max_size=32)
# Printable text: letters, digits, punctuation, symbols and the ASCII space
# (other Zs spaces such as U+00A0 are not printable and are refused).
chain_ids = st.text(
    st.characters(categories=("L", "N", "P", "S")) | st.just(" "),
    min_size=1,
    max_size=16,
)
headers = st.builds(
    Header,
    chain_id=chain_ids,
    height=st.integers(0, 2**63 - 1),
    time_ms=st.integers(0, 2**63 - 1),
    parent_hash=h32,
    tx_root=h32,
    state_root=h32,
    results_root=h32,
    validators_hash=h32,
    proposer=h32,
)


@given(headers)
@settings(max_examples=100, deadline=None)
def test_header_round_trip(header: Header) -> None:
    data = header.encode()
    assert decode_header(data) == header
    assert header.hash == sha256(data)
    assert header.time_s == header.time_ms // 1000


@given(headers, st.lists(st.binary(max_size=MAX_TX_BYTES), max_size=20))
@settings(max_examples=50, deadline=None)
def test_block_round_trip(header: Header, txs: list[bytes]) -> None:
    block = Block(header, tuple(txs))
    data = block.encode()
    assert decode_block(data) == block
    assert decode_block(data).hash == header.hash


def test_header_refusals() -> None:
    good = Header(CHAIN, 1, 2, *([b"\1" * 32] * 6)).to_wire()
    assert decode_header(encode(good)).height == 1
    cases = {
        "version": [2] + good[1:],
        "height-bool": good[:2] + [True] + good[3:],
        "time-negative": good[:3] + [-1] + good[4:],
        "short-hash": good[:4] + [b"\1" * 31] + good[5:],
        "str-hash": good[:5] + ["x" * 32] + good[6:],
        "eleven-fields": good + [0],
        "empty-chain": [1, ""] + good[2:],
    }
    for name, wire in cases.items():
        with pytest.raises(DecodeError):
            decode_header(encode(wire))
            pytest.fail(name)


def test_block_refusals() -> None:
    header = Header(CHAIN, 1, 2, *([b"\1" * 32] * 6)).to_wire()
    for wire in (
        [header],
        [header, ["not bytes"]],
        [header, [b"x" * (MAX_TX_BYTES + 1)]],
        [header, b"not a list"],
        [header, [], []],
    ):
        with pytest.raises(DecodeError):
            decode_block(encode(wire))


@given(st.binary(max_size=600))
@FUZZ
def test_decode_header_and_block_raise_only_decode_error(data: bytes) -> None:
    for decoder in (decode_header, decode_block):
        try:
            decoder(data)
        except DecodeError:
            pass


events = st.tuples(
    st.text(st.characters(categories=("L", "N", "P")), max_size=32).filter(
        lambda s: len(s.encode()) <= 32
    ),
    st.binary(max_size=40),
    st.integers(-(2**63), 2**63 - 1),
)
receipts = st.builds(
    Receipt,
    code=st.sampled_from(list(Code)),
    events=st.lists(events, max_size=16).map(tuple),
)


@given(st.lists(receipts, max_size=40))
@settings(max_examples=100, deadline=None)
def test_receipts_round_trip(rs: list[Receipt]) -> None:
    data = encode_receipts(rs)
    assert data == encode([r.to_wire() for r in rs])
    assert decode_receipts(data) == rs


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 65535, 65536])
def test_encode_array_of_encoded_is_canonical(n: int) -> None:
    items = [i % 100 for i in range(n)]
    data = encode_array_of_encoded([encode(i) for i in items])
    assert data == encode(items)


def test_receipt_refusals() -> None:
    for wire in (
        [[0]],
        [[0, [["e", b"a"]]]],
        [[0, [["e", b"a", 1.5]]]],
        [[0, [["e", "a", 1]]]],
        [[0, [["x" * 33, b"a", 1]]]],
        [[0, [["e", b"a", 1]] * 17]],
        [[-1, []]],
        [[True, []]],
        [0],
    ):
        with pytest.raises(DecodeError):
            decode_receipts(encode(wire))


def test_receipt_with_unknown_code_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        decode_receipts(encode([[99, []]]))


# --- Merkle root --------------------------------------------------------------


def test_merkle_root_shape() -> None:
    a, b_, c = b"a", b"b", b"c"

    def leaf(x: bytes) -> bytes:
        return sha256(b"\x00" + x)

    def node(x: bytes, y: bytes) -> bytes:
        return sha256(b"\x01" + x + y)

    assert merkle_root([]) == EMPTY_ROOT
    assert merkle_root([a]) == leaf(a)
    assert merkle_root([a, b_]) == node(leaf(a), leaf(b_))
    assert merkle_root([a, b_, c]) == node(node(leaf(a), leaf(b_)), leaf(c))
    # An odd node is promoted, not duplicated: a repeated last leaf changes it.
    assert merkle_root([a, b_, c]) != merkle_root([a, b_, c, c])
    # A leaf can never pose as an inner node.
    assert merkle_root([leaf(a) + leaf(b_)]) != merkle_root([a, b_])


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=40, unique=True))
@settings(max_examples=100, deadline=None)
def test_merkle_root_depends_on_order_and_count(leaves: list[bytes]) -> None:
    assume(len(leaves) >= 2)
    root = merkle_root(leaves)
    assert merkle_root(leaves[::-1]) != root
    assert merkle_root(leaves[:-1]) != root
    assert merkle_root(leaves + leaves[-1:]) != root
