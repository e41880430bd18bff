"""The chain's first state, read from genesis.json.

    {
      "chain_id": "perk-devnet-1",
      "genesis_time_ms": 1764547200000,
      "devnet": false,
      "validators": [{"name": "v1", "key": "perk1..."}],
      "admins": ["perk1..."],
      "program": {"transfers_allowed": true, "utc_offset_minutes": 0,
                  "min_validators": 1, "admin_threshold": 1,
                  "min_spend": 0, "pending_seconds": 0,
                  "customer_daily_cap": 0, "velocity_per_day": 0,
                  "transfer_daily_limit": 0,
                  "expiry": {"policy": "days", "days": 365},
                  "tiers": {"window_days": 365, "levels": [
                      {"threshold": 5000, "multiplier_bp": 12500}]},
                  "engagement": {"feedback": {"coins": 20, "daily_cap": 1}}},
      "merchants": [{"key": "perk1...", "name": "...", "rate": 10,
                     "daily_cap": 1000000}]
    }

Unknown fields are refused, so a misspelt rule can never be silently ignored.
The program's loyalty rules (docs/loyalty.md) are all optional; a cap or limit
of 0 means none. The genesis hash is SHA-256 of the canonical encoding of the
parsed values (loyalty rules included when any differs from its default);
block 1 names it as its parent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from state.address import AddressError, parse_address
from state.calendar import ExpiryPolicy
from state.changes import (
    MAX_COUNT,
    MAX_EXPIRY_DAYS,
    MAX_MULTIPLIER_BP,
    MAX_PENDING_S,
    MAX_TIERS,
    MAX_WINDOW_DAYS,
)
from state.codec import encode, sha256
from state.program import Rules
from state.tx import MAX_AMOUNT, MAX_NAME, MAX_RATE, EngagementKind

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
    # The loyalty rules in force until a program change replaces them.
    loyalty: Rules = field(default_factory=Rules)

    def to_wire(self) -> list:
        base = [self.transfers_allowed, self.utc_offset_minutes, self.min_validators]
        # Left out at their defaults, so older genesis files keep their hash.
        return base if self.loyalty.is_default() else [*base, self.loyalty.to_wire()]


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
                **loyalty_json(self.program.loyalty),
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
        {"transfers_allowed", "utc_offset_minutes", "min_validators"}
        | set(LOYALTY_FIELDS),
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
        loyalty=parse_loyalty(p, len(admins)),
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


# --- the loyalty rules -------------------------------------------------------------

POLICIES = {
    "never": ExpiryPolicy.NEVER,
    "days": ExpiryPolicy.DAYS,
    "end_of_month": ExpiryPolicy.END_OF_MONTH,
    "end_of_year": ExpiryPolicy.END_OF_YEAR,
}
ENGAGEMENT_NAMES = {kind.name.lower(): kind for kind in EngagementKind}
# Flat integer rules: (genesis name, lowest, highest).
_LIMITS = {
    "admin_threshold": (1, 1 << 16),
    "min_spend": (0, MAX_AMOUNT),
    "pending_seconds": (0, MAX_PENDING_S),
    "customer_daily_cap": (0, MAX_AMOUNT),
    "velocity_per_day": (0, MAX_COUNT),
    "transfer_daily_limit": (0, MAX_AMOUNT),
}
LOYALTY_FIELDS = (*_LIMITS, "expiry", "tiers", "engagement")


def parse_loyalty(p: dict, admin_count: int) -> Rules:
    """The loyalty rules of the genesis `program` object (already field-checked)."""
    ints = {
        name: _int(p.get(name, 1 if name == "admin_threshold" else 0),
                   f"program.{name}", lo, hi)
        for name, (lo, hi) in _LIMITS.items()
    }  # fmt: skip
    if ints["admin_threshold"] > admin_count:
        raise GenesisError("program.admin_threshold: more than the admins")
    rules = Rules(
        admin_threshold=ints["admin_threshold"],
        min_spend=ints["min_spend"],
        pending_s=ints["pending_seconds"],
        customer_daily_cap=ints["customer_daily_cap"],
        velocity_per_day=ints["velocity_per_day"],
        transfer_daily_limit=ints["transfer_daily_limit"],
    )
    if "expiry" in p:
        e = _fields(p["expiry"], "program.expiry", {"policy"}, {"days"})
        if e["policy"] not in POLICIES:
            raise GenesisError(f"program.expiry.policy: one of {sorted(POLICIES)}")
        rules.expiry_policy = int(POLICIES[e["policy"]])
        if rules.expiry_policy == ExpiryPolicy.DAYS:
            rules.expiry_days = _int(
                e.get("days"), "program.expiry.days", 1, MAX_EXPIRY_DAYS
            )
        elif "days" in e:
            raise GenesisError("program.expiry.days: only for the days policy")
    if "tiers" in p:
        t = _fields(p["tiers"], "program.tiers", {"window_days", "levels"}, set())
        rules.tier_window_days = _int(
            t["window_days"], "program.tiers.window_days", 1, MAX_WINDOW_DAYS
        )
        if not isinstance(t["levels"], list) or len(t["levels"]) > MAX_TIERS:
            raise GenesisError(f"program.tiers.levels: a list of at most {MAX_TIERS}")
        for i, level in enumerate(t["levels"]):
            where = f"program.tiers.levels[{i}]"
            _fields(level, where, {"threshold", "multiplier_bp"}, set())
            rules.tiers.append(
                [
                    _int(level["threshold"], f"{where}.threshold", 0, MAX_AMOUNT),
                    _int(level["multiplier_bp"], f"{where}.multiplier_bp",
                         10_000, MAX_MULTIPLIER_BP),
                ]
            )  # fmt: skip
        thresholds = [level[0] for level in rules.tiers]
        if thresholds != sorted(set(thresholds)):
            raise GenesisError("program.tiers.levels: thresholds must ascend")
    if "engagement" in p:
        offered = _fields(p["engagement"], "program.engagement", set(),
                          set(ENGAGEMENT_NAMES))  # fmt: skip
        for name in sorted(offered):
            where = f"program.engagement.{name}"
            e = _fields(offered[name], where, {"coins"}, {"daily_cap"})
            rules.set_engagement(
                int(ENGAGEMENT_NAMES[name]),
                _int(e["coins"], f"{where}.coins", 0, MAX_AMOUNT),
                _int(e.get("daily_cap", 0), f"{where}.daily_cap", 0, MAX_COUNT),
            )
    return rules


def loyalty_json(rules: Rules) -> dict:
    """The genesis `program` fields of non-default loyalty rules."""
    default = Rules()
    doc: dict[str, Any] = {}
    for name, attr in (("admin_threshold", "admin_threshold"),
                       ("min_spend", "min_spend"),
                       ("pending_seconds", "pending_s"),
                       ("customer_daily_cap", "customer_daily_cap"),
                       ("velocity_per_day", "velocity_per_day"),
                       ("transfer_daily_limit", "transfer_daily_limit")):  # fmt: skip
        if getattr(rules, attr) != getattr(default, attr):
            doc[name] = getattr(rules, attr)
    if rules.expiry_policy != ExpiryPolicy.NEVER:
        policy = {v: k for k, v in POLICIES.items()}[rules.expiry_policy]
        doc["expiry"] = {"policy": policy}
        if rules.expiry_days:
            doc["expiry"]["days"] = rules.expiry_days
    if rules.tier_window_days:
        doc["tiers"] = {
            "window_days": rules.tier_window_days,
            "levels": [{"threshold": t, "multiplier_bp": bp} for t, bp in rules.tiers],
        }
    if rules.engagement:
        doc["engagement"] = {
            EngagementKind(kind).name.lower(): {"coins": coins, "daily_cap": cap}
            for kind, coins, cap in rules.engagement
        }
    return doc
