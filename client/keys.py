"""Signing keys for accounts, merchants, admins and nodes.

Every account on perkchain is an Ed25519 public key: the key that signs a
transaction is also the account it acts for. People see keys as bech32
addresses (`perk1...`), defined in state.address and re-exported here.
"""

from __future__ import annotations

from typing import NoReturn

import nacl.signing

from state.address import (
    ADDRESS_HRP,
    MAX_ADDRESS_CHARS,
    PUBLIC_KEY_BYTES,
    AddressError,
    address_of,
    parse_address,
)

__all__ = [
    "ADDRESS_HRP",
    "MAX_ADDRESS_CHARS",
    "PUBLIC_KEY_BYTES",
    "AddressError",
    "Keypair",
    "address_of",
    "parse_address",
]

SEED_BYTES = 32


class Keypair:
    """An Ed25519 signing key with its public key and address.

    The seed is the whole secret: anyone holding it can sign as this account.
    It is reachable through ``seed`` for the keystore, and nowhere else; in
    particular ``repr`` shows only the address.
    """

    __slots__ = ("_signing_key", "_public_key")

    def __init__(self, signing_key: nacl.signing.SigningKey) -> None:
        if not isinstance(signing_key, nacl.signing.SigningKey):
            raise TypeError("Keypair wraps a nacl.signing.SigningKey")
        self._signing_key = signing_key
        self._public_key = bytes(signing_key.verify_key)

    @classmethod
    def generate(cls) -> Keypair:
        """A new key from the operating system's random source."""
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Keypair:
        """The key for a 32-byte seed, as stored in a keystore."""
        if type(seed) is not bytes:
            raise TypeError("seed must be bytes")
        if len(seed) != SEED_BYTES:
            raise ValueError(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def public_key(self) -> bytes:
        return self._public_key

    @property
    def seed(self) -> bytes:
        return bytes(self._signing_key)

    @property
    def address(self) -> str:
        return address_of(self._public_key)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached Ed25519 signature of `message`."""
        return self._signing_key.sign(message).signature

    def __repr__(self) -> str:
        return f"Keypair(address={self.address!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Keypair):
            return NotImplemented
        return self._public_key == other._public_key

    def __hash__(self) -> int:
        return hash(self._public_key)

    def __reduce__(self) -> NoReturn:
        # Pickling would write the seed in the clear to wherever the pickle
        # goes (a cache, a queue, a crash dump). Keys travel via the keystore.
        raise TypeError("Keypair cannot be pickled; use client.keystore")
