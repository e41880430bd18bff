"""The text form of a key: bech32 with the human-readable part ``perk``.

Every account on perkchain, whether a customer, a merchant, an operator or a
validator node, is an Ed25519 public key. On the wire a key is its 32 raw
bytes; people see it as a bech32 address:

    perk1<52 data characters><6 checksum characters>

The checksum catches any single mistyped character, so a coin transfer cannot
land on a neighbouring key because of a typo. Bech32 has one known blind spot:
inserting or deleting a ``q`` just before a final ``p`` keeps the checksum
valid. An address must decode to exactly 32 bytes, and every such edit changes
the length, so it is refused too.

Parsing is strict: no surrounding whitespace, no mixed case, no other prefix.
A string that is not exactly an address is an error, never a guess.
"""

from __future__ import annotations

import functools

import bech32

ADDRESS_HRP = "perk"
PUBLIC_KEY_BYTES = 32

# BIP-173 caps a bech32 string at 90 characters; a perk address is 63. The cap
# bounds the work done on hostile input before anything else is looked at.
MAX_ADDRESS_CHARS = 90
CHECKSUM_CHARS = 6


class AddressError(ValueError):
    """Text that is not a valid perkchain address."""


@functools.lru_cache(maxsize=65_536)
def address_of(public_key: bytes) -> str:
    """The bech32 address of a 32-byte public key.

    Cached: encoding is pure Python, and the API names the same accounts (a
    merchant, its regular customers) over and over.
    """
    if type(public_key) is not bytes:
        raise TypeError("public key must be bytes")
    if len(public_key) != PUBLIC_KEY_BYTES:
        raise ValueError(
            f"public key must be {PUBLIC_KEY_BYTES} bytes, got {len(public_key)}"
        )
    data = bech32.convertbits(public_key, 8, 5, True)
    assert data is not None  # only fails for values outside 0..255
    return bech32.bech32_encode(ADDRESS_HRP, data)


def parse_address(text: str) -> bytes:
    """The 32-byte public key an address names; raises AddressError otherwise.

    The checks run in an order that gives the most useful message: first the
    shape of the string, then the prefix, the alphabet, the checksum and
    finally the decoded length.
    """
    if not isinstance(text, str):
        raise AddressError(f"an address must be a string, not {type(text).__name__}")
    check_address_shape(text)
    lowered = text.lower()
    hrp, _, data_part = lowered.rpartition("1")
    check_address_prefix(hrp)
    check_address_alphabet(text, len(hrp) + 1, data_part)

    # All-uppercase is valid bech32 (it makes denser QR codes) and names the
    # same key; bech32_decode folds it. Mixed case was refused above.
    decoded_hrp, data = bech32.bech32_decode(text)
    if decoded_hrp is None or data is None:
        raise AddressError(
            "address checksum does not match: a character is mistyped or missing"
        )
    return convert_address_data(data)


def check_address_shape(text: str) -> None:
    if not text:
        raise AddressError("address is empty")
    if len(text) > MAX_ADDRESS_CHARS:
        raise AddressError(
            f"address is {len(text)} characters, longer than any valid address"
        )
    if any(not 33 <= ord(c) <= 126 for c in text):
        raise AddressError(
            "address contains whitespace or characters outside printable ASCII"
        )
    if text.lower() != text and text.upper() != text:
        raise AddressError("address mixes upper and lower case")
    if "1" not in text:
        raise AddressError(f"address has no '1' after the '{ADDRESS_HRP}' prefix")


def check_address_prefix(hrp: str) -> None:
    if hrp != ADDRESS_HRP:
        raise AddressError(
            f"not a perkchain address: prefix {hrp!r} is not {ADDRESS_HRP!r}"
        )


def check_address_alphabet(text: str, start: int, data_part: str) -> None:
    if len(data_part) < CHECKSUM_CHARS:
        raise AddressError("address is too short to hold a checksum")
    for offset, char in enumerate(data_part):
        if char not in bech32.CHARSET:
            position = start + offset
            raise AddressError(
                f"address has {text[position]!r} at position {position}, "
                "which is not a bech32 character (1, b, i and o never appear)"
            )


def convert_address_data(data: list[int]) -> bytes:
    """5-bit groups to bytes, refusing non-zero padding and any length but 32."""
    payload = bech32.convertbits(data, 5, 8, False)
    if payload is None:
        raise AddressError(
            "address does not decode to whole bytes: it has extra or missing characters"
        )
    if len(payload) != PUBLIC_KEY_BYTES:
        raise AddressError(
            f"address decodes to {len(payload)} bytes; a perkchain address "
            f"holds exactly {PUBLIC_KEY_BYTES}"
        )
    return bytes(payload)
