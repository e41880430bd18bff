"""The documents of the HTTP API, both ways: what it shows and what it accepts.

What it shows. On the wire and on disk everything is canonical msgpack with
raw 32-byte keys (state.codec); the API turns each record into a plain
document for people and apps:

- keys (signers, customers, merchants, proposers) become bech32 addresses,
  the form people copy and paste (state.address);
- hashes, signatures, raw transactions and certificates become lowercase hex;
- reason codes are given twice: the stable slug (`unknown_merchant`) that apps
  match on, and its number as stored in receipts on chain;
- transaction kinds are lowercase names (`award_purchase`).

Documents hold only strings, integers, booleans, lists and objects, so a
msgpack response is the same document as the JSON one, packed. Errors are
RFC 9457 problem documents (`ApiError`), each with a stable `code` whose HTTP
status node.openapi fixes.

What it accepts. Request bodies and parameters come from anyone, so they are
read strictly: JSON must be UTF-8, nest at most MAX_JSON_DEPTH levels, have no
duplicate keys, no NaN or Infinity and no field the API does not know; hex is
hex; heights, hashes, limits and cursors are exactly what they claim. Every
refusal says what was wrong and, where there is one, which field.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import msgpack

from node.mempool import MempoolFull
from node.openapi import status_of
from state import tx as txs
from state.address import AddressError, address_of, parse_address
from state.block import Block, Header, Receipt
from state.codec import sha256
from state.codes import Code
from state.ledger import (
    KEY_PROGRAM,
    PREFIX_EVIDENCE,
    Account,
    Merchant,
    Program,
    account_key,
    merchant_key,
)
from state.store import Store
from state.tx import MAX_TX_BYTES, Transaction, TxRejected
from state.votes import PREVOTE

if TYPE_CHECKING:
    from node.events import CommittedBlock
    from node.service import TxStatus

JSON = "application/json"
MSGPACK = "application/msgpack"
MSGPACK_TYPES = frozenset({MSGPACK, "application/x-msgpack"})
PROBLEM_TYPE = "urn:perkchain:problem:"
RETRY_AFTER_S = 1
# Request bodies here nest two levels; anything far deeper is an attack on the
# parser (Python's decoder recurses and would hit the interpreter's limit).
MAX_JSON_DEPTH = 32
MAX_ECHO = 64  # characters of client input quoted back in a problem
DEFAULT_HISTORY = 50
MAX_HISTORY = 200
MAX_HEIGHT = (1 << 63) - 1
CURSOR_BYTES = 1 + 32 + 8 + 4 + 1  # a history key of the store (state.store)

# Codec errors name the field first ("amount: expected an integer", "amount 0
# is outside ..."); a name that is a transaction field is reported as `field`.
_TX_FIELDS = frozenset(
    ["version", "chain_id", "kind", "signer", "expires_at", "payload", "signature"]
    + [
        name
        for payload in (txs.RegisterMerchant, txs.UpdateMerchant, txs.AwardPurchase,
                        txs.SetAccountFrozen, txs.Redeem, txs.Transfer,
                        txs.AwardPurchaseWithDetails, txs.RefundPurchase,
                        txs.EngagementReward, txs.ReverseRedemption,
                        txs.ApproveChange, txs.ProposeChange, txs.ValidatorVote,
                        txs.ReportEvidence)
        for name in payload._fields
    ]
)  # fmt: skip
_FIELD_PREFIX = re.compile(r"([a-z_]+)(?::|\s-?\d)")
_HEX = re.compile(r"[0-9a-fA-F]*")
_HASH = re.compile(r"[0-9a-fA-F]{64}")
_HEIGHT = re.compile(r"[1-9][0-9]{0,18}")
_UINT = re.compile(r"[0-9]{1,6}")
_SECONDS = re.compile(r"[0-9]{1,6}(\.[0-9]{1,3})?")
# The characters that decide JSON nesting: brackets, quotes, backslashes.
_JSON_STRUCTURE = re.compile(r'[\[\]{}"\\]')


# --- problems ------------------------------------------------------------------------


class ApiError(Exception):
    """A refusal, rendered as a problem document by the `problems` middleware."""

    def __init__(
        self,
        code: str | Code,
        detail: str,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        close: bool = False,
        **extra: Any,
    ):
        super().__init__(detail)
        self.status = status or status_of(code)
        slug = code.slug if isinstance(code, Code) else code
        self.doc = {
            "type": PROBLEM_TYPE + slug,
            "title": slug.replace("_", " ").capitalize(),
            "status": self.status,
            "code": slug,
            "detail": detail,
            **extra,
        }
        self.headers = headers or {}
        # Close the connection after answering: the body was not read, and
        # draining what the client still sends would be reading it after all.
        self.close = close


def clip(text: str) -> str:
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "..."


def refusal(exc: Exception, raw: bytes) -> ApiError:
    """The problem for a transaction the mempool refused (TxRejected, MempoolFull)."""
    tx_hash = sha256(raw).hex()
    if isinstance(exc, MempoolFull):
        retry = {"Retry-After": str(RETRY_AFTER_S)}
        detail = f"the node takes no transactions now ({exc}); retry shortly"
        return ApiError("mempool_full", detail, headers=retry, hash=tx_hash)
    assert isinstance(exc, TxRejected)
    extra: dict[str, Any] = {"hash": tx_hash}
    match = _FIELD_PREFIX.match(exc.detail)
    if match and match.group(1) in _TX_FIELDS:
        extra["field"] = match.group(1)
    return ApiError(exc.code, exc.detail, **extra)


def too_large(declared: int | None, limit: int) -> ApiError:
    size = "the body" if declared is None else f"the body of {declared} bytes"
    detail = f"{size} is over the limit of {limit} bytes"
    return ApiError("body_too_large", detail, close=True, limit=limit)


# --- request documents ---------------------------------------------------------------


class _DuplicateKey(ValueError):
    pass


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return doc


def _constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {clip(text)} is out of range")
    return value


def check_json_depth(text: str) -> None:
    """Refuse nesting deeper than MAX_JSON_DEPTH before the parser recurses.

    One pass over the structural characters, in time linear in the body: inside
    a string, brackets do not count and a backslash escapes the next character.
    """
    depth = 0
    in_string = False
    escaped_at = -1
    for match in _JSON_STRUCTURE.finditer(text):
        at, char = match.start(), match.group()
        if in_string:
            if at == escaped_at:
                continue
            if char == "\\":
                escaped_at = at + 1
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                detail = f"JSON nests deeper than {MAX_JSON_DEPTH} levels"
                raise ApiError("too_deep", detail)
        elif char in "]}":
            depth -= 1


def parse_json(body: bytes) -> Any:
    """Strict JSON: UTF-8, bounded nesting, no duplicate keys, no NaN/Infinity."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError("invalid_utf8", f"not UTF-8 at byte {exc.start}") from None
    check_json_depth(text)
    try:
        return json.loads(
            text,
            object_pairs_hook=_object,
            parse_constant=_constant,
            parse_float=_float,
        )
    except _DuplicateKey as exc:
        key = clip(exc.args[0])
        detail = f"key {key!r} appears twice in one object"
        raise ApiError("duplicate_key", detail, field=key) from None
    except (ValueError, RecursionError) as exc:
        raise ApiError("invalid_json", f"the body is not JSON: {exc}") from None


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), "a number")


def only_field(doc: Any, name: str) -> Any:
    """The value of `name` in a request object that must hold just that field."""
    if type(doc) is not dict:
        detail = f'expected an object {{"{name}": ...}}, not {json_type(doc)}'
        raise ApiError("invalid_body", detail)
    for key in doc:
        if key != name:
            detail = f"unknown field {clip(key)!r}"
            raise ApiError("unknown_field", detail, field=clip(key))
    if name not in doc:
        raise ApiError("invalid_body", f"missing field {name!r}", field=name)
    return doc[name]


def tx_from_hex(value: str, field: str) -> bytes:
    # The size is checked first so a huge string costs no decoding.
    if len(value) > 2 * MAX_TX_BYTES:
        detail = f"{field}: {len(value) // 2} bytes is over the limit of {MAX_TX_BYTES}"
        raise ApiError(Code.MALFORMED, detail, field=field)
    if len(value) % 2 or not _HEX.fullmatch(value):
        detail = f"{field}: not an even number of hex digits"
        raise ApiError("invalid_hex", detail, field=field)
    return bytes.fromhex(value)


def hex_string(value: Any, field: str) -> str:
    if type(value) is not str:
        detail = f"{field}: expected a hex string, not {json_type(value)}"
        raise ApiError("invalid_body", detail, field=field)
    return value


def json_tx(doc: Any) -> bytes:
    """The transaction of a JSON submission: {"tx": hex}."""
    return tx_from_hex(hex_string(only_field(doc, "tx"), "tx"), "tx")


def json_batch(doc: Any, max_batch: int) -> list[bytes | ApiError]:
    """The transactions of {"txs": [hex, ...]} in order; a bad one is its ApiError.

    A body of the wrong shape refuses the whole batch; a transaction that is
    not hex or too long refuses only itself.
    """
    value = only_field(doc, "txs")
    if type(value) is not list:
        raise ApiError("invalid_body", "txs: expected an array", field="txs")
    check_batch_size(len(value), max_batch)
    items = [hex_string(item, f"txs[{i}]") for i, item in enumerate(value)]
    out: list[bytes | ApiError] = []
    for i, item in enumerate(items):
        try:
            out.append(tx_from_hex(item, f"txs[{i}]"))
        except ApiError as exc:
            out.append(exc)
    return out


def msgpack_batch(body: bytes, max_batch: int) -> list[bytes | ApiError]:
    """The transactions of a msgpack array of bin, each the raw transaction."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=len(body), max_map_len=0)
    unpacker.feed(body)
    try:
        # msgpack raises several types for bad input; all mean the same here.
        count = unpacker.read_array_header()
        check_batch_size(count, max_batch)
        raws = [unpacker.unpack() for _ in range(count)]
    except ApiError:
        raise
    except Exception:
        detail = "expected a msgpack array of bin (the transactions)"
        raise ApiError("invalid_body", detail) from None
    if any(type(raw) is not bytes for raw in raws) or unpacker.tell() != len(body):
        raise ApiError("invalid_body", "expected a msgpack array of bin, and no more")
    return raws


def check_batch_size(count: int, max_batch: int) -> None:
    if count > max_batch:
        detail = f"{count} transactions in one batch; at most {max_batch}"
        raise ApiError("batch_too_large", detail, limit=max_batch)
    if count == 0:
        raise ApiError("invalid_body", "the batch holds no transactions")


# --- parameters ----------------------------------------------------------------------


def accepted_media(accept: str) -> list[tuple[str, float]]:
    """(media type, quality) for each entry of an Accept header; a quality that
    is not a number in 0..1 (NaN, nonsense) counts as "not at all"."""
    out = []
    for part in accept.split(","):
        media, _, params = part.partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        out.append((media.strip().lower(), q if 0.0 <= q <= 1.0 else 0.0))
    return out


def preference(accept: str, media_types: Iterable[str]) -> tuple[float, float]:
    """The best quality given to any of `media_types`, and to JSON."""
    wanted = frozenset(media_types)
    best = best_json = 0.0
    for media, q in accepted_media(accept):
        if media in wanted:
            best = max(best, q)
        elif media in (JSON, "application/*", "*/*"):
            best_json = max(best_json, q)
    return best, best_json


def prefers_msgpack(accept: str) -> bool:
    """True when an Accept header prefers msgpack to JSON (a tie goes to the one
    named explicitly, so `*/*` alone still means JSON)."""
    best_msgpack, best_json = preference(accept, MSGPACK_TYPES)
    return best_msgpack > 0 and best_msgpack >= best_json


def check_query(items: Iterable[tuple[str, str]], allowed: tuple[str, ...]):
    """Query parameters by name, refusing unknown or repeated ones (typos too)."""
    params: dict[str, str] = {}
    for name, value in items:
        if name not in allowed:
            raise bad_param(clip(name), "unknown query parameter")
        if name in params:
            raise bad_param(name, "given twice")
        params[name] = value
    return params


def bad_param(name: str, detail: str) -> ApiError:
    return ApiError("invalid_parameter", f"{name}: {detail}", parameter=name)


def parse_wait(params: dict[str, str], cap: float) -> float | None:
    """Seconds to wait for finality, or None when the client does not wait."""
    wait = params.get("wait", "false")
    if wait not in ("true", "false"):
        raise bad_param("wait", "expected true or false")
    timeout = params.get("timeout")
    if timeout is not None and (not _SECONDS.fullmatch(timeout) or not float(timeout)):
        raise bad_param("timeout", "expected seconds > 0, at most 3 decimals")
    if wait == "false":
        return None
    return cap if timeout is None else min(float(timeout), cap)


def parse_limit(params: dict[str, str]) -> int:
    value = params.get("limit", str(DEFAULT_HISTORY))
    if not _UINT.fullmatch(value) or not 1 <= int(value) <= MAX_HISTORY:
        raise bad_param("limit", f"expected an integer in 1..{MAX_HISTORY}")
    return int(value)


def parse_cursor(params: dict[str, str], account: bytes) -> bytes | None:
    """A history cursor: a store key, which must be one of this account's."""
    value = params.get("cursor")
    if value is None:
        return None
    if len(value) != 2 * CURSOR_BYTES or not _HEX.fullmatch(value):
        raise ApiError("invalid_cursor", "cursor: not a cursor this API returned")
    cursor = bytes.fromhex(value)
    if not cursor.startswith(b"h" + account):
        raise ApiError("invalid_cursor", "cursor: belongs to another account")
    return cursor


def parse_address_text(text: str) -> bytes:
    try:
        return parse_address(text)
    except AddressError as exc:
        raise ApiError("invalid_address", str(exc)) from None


def parse_height(text: str) -> int:
    if not _HEIGHT.fullmatch(text) or int(text) > MAX_HEIGHT:
        detail = f"{clip(text)!r} is not a block height (1..{MAX_HEIGHT})"
        raise ApiError("invalid_height", detail)
    return int(text)


def parse_hash(text: str) -> bytes:
    if not _HASH.fullmatch(text):
        raise ApiError("invalid_hash", f"{clip(text)!r} is not 64 hex digits")
    return bytes.fromhex(text)


# --- transactions and receipts -------------------------------------------------------


def kind_name(tx: Transaction) -> str:
    return tx.kind.name.lower()


# Byte fields of payloads that are hashes (a proposal's or a redemption's
# transaction hash), shown as hex; every other 32-byte field is a key.
_HASH_FIELDS = frozenset({"proposal", "redemption"})


def payload_value(name: str, value: Any) -> Any:
    """A payload field as a document value: keys as addresses, hashes and other
    bytes as hex, nested arguments (a program change's) as objects by name."""
    if type(value) is bytes:
        if name in _HASH_FIELDS or len(value) != 32:
            return value.hex()
        return address_of(value)
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {
            n: payload_value(n, v) for n, v in zip(value._fields, value, strict=True)
        }
    if isinstance(value, tuple | list):
        return [payload_value(name, v) for v in value]
    if isinstance(value, IntEnum):
        return int(value)
    return value


def payload_view(tx: Transaction) -> dict[str, Any]:
    """The payload fields by name (payload_value)."""
    return {
        name: payload_value(name, value)
        for name, value in zip(tx.payload._fields, tx.payload, strict=True)
    }


def tx_view(tx: Transaction) -> dict[str, Any]:
    return {
        "hash": tx.hash.hex(),
        "kind": kind_name(tx),
        "version": tx.version,
        "chain_id": tx.chain_id,
        "signer": address_of(tx.signer),
        "expires_at": tx.expires_at,
        "payload": payload_view(tx),
        "signature": tx.signature.hex(),
        # The canonical bytes let a client re-check the hash and signature.
        "raw": tx.raw.hex(),
    }


def receipt_view(receipt: Receipt) -> dict[str, Any]:
    return {
        "code": receipt.code.slug,
        "code_number": int(receipt.code),
        "events": [
            {"event": name, "account": address_of(account), "delta": delta}
            for name, account, delta in receipt.events
        ],
    }


def tx_status_view(tx_hash: bytes, status: TxStatus) -> dict[str, Any]:
    """A transaction as `GET /v1/transactions/{hash}` reports it."""
    doc: dict[str, Any] = {"hash": tx_hash.hex(), "status": status.status}
    if status.status == "committed":
        doc["height"] = status.height
        doc["index"] = status.index
        doc["receipt"] = receipt_view(status.receipt)
    elif status.status == "rejected":
        doc["code"] = status.code.slug
        doc["detail"] = status.detail
    if status.tx is not None:
        doc["tx"] = tx_view(status.tx)
    return doc


# --- blocks --------------------------------------------------------------------------


def header_view(header: Header) -> dict[str, Any]:
    return {
        "version": header.version,
        "chain_id": header.chain_id,
        "height": header.height,
        "time_ms": header.time_ms,
        "parent_hash": header.parent_hash.hex(),
        "tx_root": header.tx_root.hex(),
        "state_root": header.state_root.hex(),
        "results_root": header.results_root.hex(),
        "validators_hash": header.validators_hash.hex(),
        "proposer": address_of(header.proposer),
    }


def block_view(
    block: Block,
    txs: list[Transaction],
    receipts: list[Receipt],
    commit: bytes,
) -> dict[str, Any]:
    return {
        "height": block.height,
        "hash": block.hash.hex(),
        "header": header_view(block.header),
        "tx_count": len(txs),
        "txs": [
            {"index": index, **tx_view(tx), "receipt": receipt_view(receipt)}
            for index, (tx, receipt) in enumerate(zip(txs, receipts, strict=True))
        ],
        # The certificate's format belongs to consensus; here it is opaque bytes.
        "commit": commit.hex(),
    }


def block_summary(block: Block) -> dict[str, Any]:
    """One event of the block stream: enough to decide whether to fetch it."""
    return {
        "height": block.height,
        "hash": block.hash.hex(),
        "time_ms": block.header.time_ms,
        "txs": len(block.txs),
    }


# --- accounts and merchants ----------------------------------------------------------


def _record(store: Store, key: bytes) -> list | None:
    raw = store.get_state(key)
    # Records are written canonical by the ledger and covered by the state root.
    return None if raw is None else msgpack.unpackb(raw, raw=False)


def read_account(store: Store, key: bytes) -> Account:
    """The account of `key`; one never written is an empty account, not an error."""
    wire = _record(store, account_key(key))
    return Account() if wire is None else Account.from_wire(wire)


def read_merchant(store: Store, key: bytes) -> Merchant | None:
    wire = _record(store, merchant_key(key))
    return None if wire is None else Merchant.from_wire(wire)


def read_program(store: Store) -> Program:
    return Program.from_wire(_record(store, KEY_PROGRAM))


def lot_view(lot: list, now_s: int) -> dict[str, Any]:
    amount, expires_at, issuer, earned_at = lot
    return {
        "amount": amount,
        "expires_at": expires_at,
        "issuer": address_of(issuer),
        "earned_at": earned_at,
        "live": expires_at == 0 or expires_at > now_s,
    }


def history_item(
    height: int, index: int, tx_hash: bytes, event: str, delta: int
) -> dict[str, Any]:
    return {
        "height": height,
        "index": index,
        "hash": tx_hash.hex(),
        "event": event,
        "delta": delta,
    }


def account_view(
    key: bytes,
    account: Account,
    now_s: int,
    history: list[dict[str, Any]],
    next_cursor: bytes | None,
) -> dict[str, Any]:
    return {
        "address": address_of(key),
        # Balances are as of the latest block's time: a lot past its expiry no
        # longer counts even though it stays in the record until it is spent.
        "balance": account.balance(now_s),
        "as_of": now_s,
        "frozen": account.frozen,
        "debt": account.debt,
        "lots": [lot_view(lot, now_s) for lot in account.lots],
        "history": history,
        "next_cursor": None if next_cursor is None else next_cursor.hex(),
    }


def merchant_view(
    key: bytes, merchant: Merchant, program: Program, now_s: int
) -> dict[str, Any]:
    today = program.day_of(now_s)
    return {
        "address": address_of(key),
        "name": merchant.name,
        "rate": merchant.rate,
        "daily_cap": merchant.daily_cap,
        "active": merchant.active,
        "issued": merchant.issued,
        "redeemed": merchant.redeemed,
        # The day counter as stored, and what it means today: the stored count
        # belongs to `day` and resets when the program day changes.
        "day": merchant.day,
        "issued_on_day": merchant.issued_on_day,
        "today": today,
        "issued_today": merchant.issued_today(today),
    }


def validators_view(store: Store) -> dict[str, Any]:
    return {
        "height": store.height,
        "validators_hash": store.validators_hash.hex(),
        "validators": [
            {"name": name, "address": address_of(key)} for name, key in store.validators
        ],
    }


def evidence_view(store: Store) -> dict[str, Any]:
    """Every recorded double signature, oldest key first (state.ledger `se`)."""
    items = []
    for key, value in store.db.iterator(prefix=PREFIX_EVIDENCE):
        evidence, reporter, recorded_at = msgpack.unpackb(value)
        validator = key[2:34]
        items.append(
            {
                "validator": address_of(validator),
                "height": int.from_bytes(key[34:42], "big"),
                "round": int.from_bytes(key[42:46], "big"),
                "vote_type": "prevote" if key[46] == PREVOTE else "precommit",
                "reported_by": address_of(reporter),
                "recorded_at_height": recorded_at,
                "evidence": evidence.hex(),
            }
        )
    return {"height": store.height, "evidence": items}


def account_events(committed: CommittedBlock, key: bytes) -> list[dict[str, Any]]:
    """The events of account `key` in a committed block, for its stream."""
    out = []
    pairs = zip(committed.txs, committed.receipts, strict=True)
    for index, (tx, receipt) in enumerate(pairs):
        for name, account, delta in receipt.events:
            if account == key:
                item = history_item(committed.height, index, tx.hash, name, delta)
                item["time_ms"] = committed.block.header.time_ms
                out.append(item)
    return out
