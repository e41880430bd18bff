"""Keypairs and the perk1... address format: round trips and every refusal."""

from __future__ import annotations

import pickle
import string

import bech32
import nacl.exceptions
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from client.keys import AddressError, Keypair, address_of, parse_address

SEED = bytes(range(32))


def encode_raw(hrp: str, payload: bytes) -> str:
    """A bech32 string with a checksum that is valid, whatever hrp and length."""
    return bech32.bech32_encode(hrp, bech32.convertbits(payload, 8, 5, True))


def address_ending_in(suffix: str) -> str:
    """An address with the given ending; bech32 is weak on those ending in 'p'."""
    for i in range(100_000):
        address = address_of(i.to_bytes(32, "big"))
        if address.endswith(suffix):
            return address
    raise AssertionError(f"no address ending in {suffix!r} found")


# --- round trips -----------------------------------------------------------------


@given(st.binary(min_size=32, max_size=32))
def test_address_round_trips_for_any_key(key: bytes) -> None:
    address = address_of(key)
    assert address.startswith("perk1")
    assert len(address) == 63
    assert address == address.lower()
    assert parse_address(address) == key


@given(st.binary(min_size=32, max_size=32))
def test_all_uppercase_address_names_the_same_key(key: bytes) -> None:
    assert parse_address(address_of(key).upper()) == key


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_distinct_keys_have_distinct_addresses(a: bytes, b: bytes) -> None:
    assert (address_of(a) == address_of(b)) == (a == b)


def test_keypair_from_seed_is_deterministic_and_signs() -> None:
    key = Keypair.from_seed(SEED)
    again = Keypair.from_seed(SEED)
    assert key.public_key == again.public_key
    assert key.seed == SEED
    assert len(key.public_key) == 32
    assert key.address == address_of(key.public_key)
    assert parse_address(key.address) == key.public_key

    signature = key.sign(b"message")
    assert len(signature) == 64
    verify_key = nacl.signing.VerifyKey(key.public_key)
    assert verify_key.verify(b"message", signature) == b"message"
    with pytest.raises(nacl.exceptions.BadSignatureError):
        verify_key.verify(b"messagE", signature)


def test_generated_keys_differ_and_round_trip_through_their_seed() -> None:
    a, b = Keypair.generate(), Keypair.generate()
    assert a.public_key != b.public_key
    assert Keypair.from_seed(a.seed).public_key == a.public_key


def test_repr_shows_the_address_and_never_the_seed() -> None:
    key = Keypair.from_seed(SEED)
    text = repr(key)
    assert key.address in text
    assert SEED.hex() not in text
    assert repr(SEED) not in text
    assert str(key) == text


def test_keypair_cannot_be_pickled() -> None:
    with pytest.raises(TypeError):
        pickle.dumps(Keypair.from_seed(SEED))


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33)])
def test_from_seed_refuses_wrong_length(seed: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Keypair.from_seed(seed)


def test_from_seed_refuses_text() -> None:
    with pytest.raises(TypeError):
        Keypair.from_seed(SEED.hex())  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [bytes(31), bytes(33)])
def test_address_of_refuses_wrong_length(key: bytes) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        address_of(key)


# --- refusals ----------------------------------------------------------------------


@pytest.mark.parametrize("seed_byte", [0, 1, 7, 200])
def test_every_single_character_substitution_is_refused(seed_byte: int) -> None:
    address = Keypair.from_seed(bytes([seed_byte]) * 32).address
    alphabet = string.ascii_lowercase + string.digits
    tried = 0
    for position, original in enumerate(address):
        for replacement in alphabet + original.upper():
            if replacement == original:
                continue
            typo = address[:position] + replacement + address[position + 1 :]
            with pytest.raises(AddressError):
                parse_address(typo)
            tried += 1
    assert tried >= len(address) * (len(alphabet) - 1)


def test_mistyped_data_character_reports_a_checksum_error() -> None:
    address = Keypair.from_seed(SEED).address
    replacement = "q" if address[20] != "q" else "p"
    typo = address[:20] + replacement + address[21:]
    with pytest.raises(AddressError, match="checksum"):
        parse_address(typo)


@pytest.mark.parametrize("hrp", ["bc", "perx", "perkk", "per", "tperk"])
def test_wrong_human_readable_part_is_refused(hrp: str) -> None:
    text = encode_raw(hrp, SEED)
    assert bech32.bech32_decode(text)[0] == hrp  # a valid bech32 string
    with pytest.raises(AddressError, match="prefix"):
        parse_address(text)


@pytest.mark.parametrize("size", [0, 20, 31, 33, 40])
def test_payload_of_other_than_32_bytes_is_refused(size: int) -> None:
    text = encode_raw("perk", bytes(range(size)))
    assert bech32.bech32_decode(text)[0] == "perk"  # checksum is fine
    with pytest.raises(AddressError):
        parse_address(text)


def test_31_and_33_byte_payloads_name_their_length() -> None:
    for size in (31, 33):
        with pytest.raises(AddressError, match=f"{size} bytes"):
            parse_address(encode_raw("perk", bytes(size)))


def test_every_truncation_is_refused() -> None:
    address = Keypair.from_seed(SEED).address
    for end in range(len(address)):
        with pytest.raises(AddressError):
            parse_address(address[:end])
    for start in range(1, len(address)):
        with pytest.raises(AddressError):
            parse_address(address[start:])


def test_bech32_insertion_weakness_is_caught_by_the_length_check() -> None:
    ends_p = address_ending_in("p")
    ends_qp = address_ending_in("qp")
    edits = [
        ends_p[:-1] + "q" + ends_p[-1],
        ends_p[:-1] + "qq" + ends_p[-1],
        ends_qp[:-2] + ends_qp[-1],
    ]
    for text in edits:
        # bech32 itself accepts each edit: this is the known weakness.
        assert bech32.bech32_decode(text)[0] == "perk"
        with pytest.raises(AddressError):
            parse_address(text)


def test_mixed_case_is_refused() -> None:
    address = Keypair.from_seed(SEED).address
    for text in (address[:10] + address[10:].upper(), "PERK" + address[4:]):
        with pytest.raises(AddressError, match="mixes upper and lower case"):
            parse_address(text)


@pytest.mark.parametrize(
    "wrap", [" {}", "{} ", "\t{}", "{}\n", "{}\x00", "{}é", "{} {}"]
)
def test_surrounding_whitespace_and_non_ascii_are_refused(wrap: str) -> None:
    address = Keypair.from_seed(SEED).address
    with pytest.raises(AddressError):
        parse_address(wrap.format(address, address))


@pytest.mark.parametrize("value", [None, 42, b"perk1", bytearray(32), ["perk1"]])
def test_non_string_is_refused(value: object) -> None:
    with pytest.raises(AddressError, match="must be a string"):
        parse_address(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("perk", "no '1'"),
        ("perk1qqq", "too short"),
        ("x" * 91, "longer than"),
        ("perk1" + "b" * 58, "not a bech32 character"),
    ],
)
def test_malformed_text_gets_a_clear_message(text: str, message: str) -> None:
    with pytest.raises(AddressError, match=message):
        parse_address(text)


def test_address_error_is_a_value_error() -> None:
    assert issubclass(AddressError, ValueError)
