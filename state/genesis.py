"""The chain's first state, read from genesis.json.

    {
      "chain_id": "perk-devnet-1",
      "genesis_time_ms": 1764547200000,
      "devnet": false,
      "validators": [{"name": "v1", "key": "perk1..."}],
      "admins": ["perk1..."],
      "program": {"transfers_allowed": true, "utc_offset_minutes": 0,
                  "min_validators": 1},
      "merchants": [{"key": "perk1...", "name": "...", "rate": 10,
                     "daily_cap": 1000000}]
    }

Unknown fields are refused, so a misspelt rule can never be silently ignored.
The genesis hash is SHA-256 of the canonical encoding of the parsed values;
block 1 names it as its parent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from state.address import AddressError, parse_address
from state.codec import encode, sha256
from state.tx import MAX_AMOUNT, MAX_NAME, MAX_RATE

MAX_VALIDATORS = 100


class GenesisError(ValueError):
    """A genesis document that cannot start a chain."""


@dataclass(frozen=True)
class Validator:
    name: str
    key: bytes


@dataclass(frozen=True)
class GenesisMerchant:
    key: bytes
    name: str
    rate: int
    daily_cap: int


@dataclass(frozen=True)
class Program:
    transfers_allowed: bool = True
    utc_offset_minutes: int = 0
    # A validator-set change that would leave fewer validators is refused.
    min_validators: int = 1

    def to_wire(self) -> list:
        return [self.transfers_allowed, self.utc_offset_minutes, self.min_validators]


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    genesis_time_ms: int
    validators: tuple[Validator, ...]
    admins: tuple[bytes, ...]
    program: Program = field(default_factory=Program)
    merchants: tuple[GenesisMerchant, ...] = ()
    devnet: bool = False

    def to_wire(self) -> list:
        return [
            self.chain_id,
            self.genesis_time_ms,
            self.devnet,
            [[v.name, v.key] for v in self.validators],
            list(self.admins),
            self.program.to_wire(),
            [[m.key, m.name, m.rate, m.daily_cap] for m in self.merchants],
        ]

    @property
    def hash(self) -> bytes:
        return sha256(b"perkchain/genesis/v1\x00" + encode(self.to_wire()))

    def to_json(self) -> dict:
        from state.address import address_of

        return {
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "devnet": self.devnet,
            "validators": [
                {"name": v.name, "key": address_of(v.key)} for v in self.validators
            ],
            "admins": [address_of(a) for a in self.admins],
            "program": {
                "transfers_allowed": self.program.transfers_allowed,
                "utc_offset_minutes": self.program.utc_offset_minutes,
                "min_validators": self.program.min_validators,
            },
            "merchants": [
                {
                    "key": address_of(m.key),
                    "name": m.name,
                    "rate": m.rate,
                    "daily_cap": m.daily_cap,
                }
                for m in self.merchants
            ],
        }

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def _fields(doc: Any, where: str, required: set[str], optional: set[str]) -> dict:
    if not isinstance(doc, dict):
        raise GenesisError(f"{where}: expected an object")
    unknown = set(doc) - required - optional
    if unknown:
        raise GenesisError(f"{where}: unknown fields {sorted(unknown)}")
    missing = required - set(doc)
    if missing:
        raise GenesisError(f"{where}: missing fields {sorted(missing)}")
    return doc


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise GenesisError(f"{where}: expected an integer in {lo}..{hi}")
    return value


def _text(value: Any, where: str, max_len: int) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > max_len:
        raise GenesisError(f"{where}: expected a string of 1..{max_len} bytes")
    if not value.isprintable():
        raise GenesisError(f"{where}: contains control characters")
    return value


def _key(value: Any, where: str) -> bytes:
    try:
        return parse_address(value)
    except AddressError as exc:
        raise GenesisError(f"{where}: {exc}") from None


def parse_genesis(doc: Any) -> Genesis:
    doc = _fields(
        doc,
        "genesis",
        {"chain_id", "genesis_time_ms", "validators", "admins"},
        {"program", "merchants", "devnet"},
    )
    chain_id = _text(doc["chain_id"], "chain_id", 64)
    if chain_id.strip() != chain_id or not chain_id.isascii():
        raise GenesisError("chain_id: must be ASCII without surrounding spaces")
    time_ms = _int(doc["genesis_time_ms"], "genesis_time_ms", 0, (1 << 63) - 1)

    if not isinstance(doc["validators"], list) or not doc["validators"]:
        raise GenesisError("validators: expected a non-empty list")
    if len(doc["validators"]) > MAX_VALIDATORS:
        raise GenesisError(f"validators: at most {MAX_VALIDATORS}")
    validators = []
    for i, v in enumerate(doc["validators"]):
        _fields(v, f"validators[{i}]", {"name", "key"}, set())
        validators.append(
            Validator(
                _text(v["name"], f"validators[{i}].name", MAX_NAME),
                _key(v["key"], f"validators[{i}].key"),
            )
        )
    if len({v.key for v in validators}) != len(validators):
        raise GenesisError("validators: a key is listed twice")

    if not isinstance(doc["admins"], list) or not doc["admins"]:
        raise GenesisError("admins: expected a non-empty list")
    admins = tuple(_key(a, f"admins[{i}]") for i, a in enumerate(doc["admins"]))

    p = _fields(
        doc.get("program", {}),
        "program",
        set(),
        {"transfers_allowed", "utc_offset_minutes", "min_validators"},
    )
    transfers = p.get("transfers_allowed", True)
    if type(transfers) is not bool:
        raise GenesisError("program.transfers_allowed: expected true or false")
    program = Program(
        transfers_allowed=transfers,
        utc_offset_minutes=_int(
            p.get("utc_offset_minutes", 0), "program.utc_offset_minutes", -840, 840
        ),
        min_validators=_int(
            p.get("min_validators", 1), "program.min_validators", 1, MAX_VALIDATORS
        ),
    )

    merchants = []
    for i, m in enumerate(doc.get("merchants", [])):
        _fields(m, f"merchants[{i}]", {"key", "name", "rate", "daily_cap"}, set())
        merchants.append(
            GenesisMerchant(
                _key(m["key"], f"merchants[{i}].key"),
                _text(m["name"], f"merchants[{i}].name", MAX_NAME),
                _int(m["rate"], f"merchants[{i}].rate", 0, MAX_RATE),
                _int(m["daily_cap"], f"merchants[{i}].daily_cap", 0, MAX_AMOUNT),
            )
        )
    if len({m.key for m in merchants}) != len(merchants):
        raise GenesisError("merchants: a key is listed twice")

    if program.min_validators > len(validators):
        raise GenesisError("program.min_validators: more than the genesis validators")
    devnet = doc.get("devnet", False)
    if type(devnet) is not bool:
        raise GenesisError("devnet: expected true or false")
    return Genesis(
        chain_id,
        time_ms,
        tuple(validators),
        admins,
        program,
        tuple(merchants),
        devnet,
    )


def load_genesis(path: str | Path) -> Genesis:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise GenesisError(f"cannot read {path}: {exc}") from None
    return parse_genesis(doc)
