"""The OpenAPI 3.1 description of the node's HTTP API, served at /v1/openapi.json.

Client authors generate code and check their requests against this document,
so it states every route, parameter, request body and response the API
(node.api) has, with the schema of each document (node.views) and of the
problem documents errors come as. A test fails when a route is served but not
described here.

Conventions the schemas rely on: hashes, signatures, raw transactions and
certificates are lowercase hex; keys are bech32 `perk1...` addresses; amounts
are integers (coins, or minor units of currency for purchases). A msgpack
response (Accept: application/msgpack) is the same document as the JSON one.
Every GET route but the streams also answers HEAD: the same status and
headers, no body.
"""

from __future__ import annotations

from typing import Any

from node.problem_codes import (  # re-exported: the document's source of codes
    API_CODES,
    TX_CODES,
    TX_STATUS,
    codes_description,
    status_of,
)
from state.tx import MAX_TX_BYTES, Kind

BECH32_CHARS = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"

__all__ = ["API_CODES", "TX_CODES", "TX_STATUS", "build_document", "status_of"]


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(
    properties: dict[str, Any], required: list[str] | None = None, **more: Any
) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties}
    schema["required"] = list(properties) if required is None else required
    schema.update(more)
    return schema


INT = {"type": "integer"}
UINT = {"type": "integer", "minimum": 0}
STR = {"type": "string"}
BOOL = {"type": "boolean"}
OBJECT = {"type": "object"}


def loyalty_schemas() -> dict[str, Any]:
    # Imported here: node.openapi_loyalty builds on this module's helpers.
    from node.openapi_loyalty import schemas as loyalty

    return loyalty()


def loyalty_paths() -> dict[str, Any]:
    from node.openapi_loyalty import paths as loyalty

    return loyalty()


def schemas(max_batch: int) -> dict[str, Any]:
    hex32 = ref("Hash")
    return {
        "Hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "Hex": {"type": "string", "pattern": "^([0-9a-f]{2})*$"},
        "Address": {
            "type": "string",
            "pattern": f"^perk1[{BECH32_CHARS}]{{58}}$",
            "description": "A bech32 address: the text form of a 32-byte key.",
        },
        "Problem": obj(
            {
                "type": {"type": "string", "format": "uri"},
                "title": STR,
                "status": {"type": "integer", "minimum": 400, "maximum": 599},
                "code": {"type": "string", "description": codes_description()},
                "detail": STR,
                "hash": hex32,
                "height": UINT,
                "index": UINT,
                "field": {"type": "string", "description": "The field at fault."},
                "parameter": STR,
                "limit": UINT,
            },
            ["type", "title", "status", "code", "detail"],
            description="An RFC 9457 problem document (application/problem+json).",
        ),
        "Status": obj(
            {
                "chain_id": STR,
                "node": STR,
                "kind": {"enum": ["validator", "auditor"]},
                "height": UINT,
                "latest_block_hash": hex32,
                "latest_block_time_ms": UINT,
                "state_root": hex32,
                "genesis_hash": hex32,
                "peers": UINT,
                "mempool_txs": UINT,
                "mempool_bytes": UINT,
                "syncing": BOOL,
            }
        ),
        "SubmitRequest": obj(
            {
                "tx": {
                    "type": "string",
                    "pattern": "^([0-9a-fA-F]{2})+$",
                    "maxLength": 2 * MAX_TX_BYTES,
                }
            },
            additionalProperties=False,
            description="The canonical signed transaction bytes, in hex.",
        ),
        "BatchRequest": obj(
            {
                "txs": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": max_batch,
                    # Not a hex pattern: an item that is not hex is refused on
                    # its own, in its result, and the others still go in.
                    "items": {
                        "type": "string",
                        "description": "A transaction in hex, as in SubmitRequest.",
                    },
                }
            },
            additionalProperties=False,
        ),
        "Pending": obj({"hash": hex32, "status": {"const": "pending"}}),
        "Committed": obj(
            {
                "hash": hex32,
                "status": {"const": "committed"},
                "height": UINT,
                "index": UINT,
                "receipt": ref("Receipt"),
            }
        ),
        "BatchResult": obj(
            {
                "accepted": UINT,
                "results": {
                    "type": "array",
                    "items": {"oneOf": [ref("Pending"), ref("Problem")]},
                    "description": "One per submitted transaction, in order.",
                },
            }
        ),
        "Event": obj({"event": STR, "account": ref("Address"), "delta": INT}),
        "Receipt": obj(
            {
                "code": STR,
                "code_number": UINT,
                "events": {"type": "array", "items": ref("Event")},
            }
        ),
        "Transaction": obj(
            {
                "hash": hex32,
                "kind": {"enum": [kind.name.lower() for kind in Kind]},
                "version": UINT,
                "chain_id": STR,
                "signer": ref("Address"),
                "expires_at": UINT,
                "payload": {
                    "type": "object",
                    "description": "The kind's fields by name; keys as addresses.",
                },
                "signature": ref("Hex"),
                "raw": ref("Hex"),
            }
        ),
        "TransactionStatus": obj(
            {
                "hash": hex32,
                "status": {"enum": ["pending", "committed", "rejected"]},
                "height": UINT,
                "index": UINT,
                "receipt": ref("Receipt"),
                "code": STR,
                "detail": STR,
                "tx": ref("Transaction"),
            },
            ["hash", "status"],
        ),
        "Header": obj(
            {
                "version": UINT,
                "chain_id": STR,
                "height": UINT,
                "time_ms": UINT,
                "parent_hash": hex32,
                "tx_root": hex32,
                "state_root": hex32,
                "results_root": hex32,
                "validators_hash": hex32,
                "proposer": ref("Address"),
            }
        ),
        "BlockTransaction": {
            "allOf": [
                ref("Transaction"),
                obj({"index": UINT, "receipt": ref("Receipt")}),
            ]
        },
        "Block": obj(
            {
                "height": UINT,
                "hash": hex32,
                "header": ref("Header"),
                "tx_count": UINT,
                "txs": {"type": "array", "items": ref("BlockTransaction")},
                "commit": ref("Hex"),
            }
        ),
        "Lot": obj(
            {
                "amount": UINT,
                "expires_at": {"type": "integer", "description": "0: never"},
                "issuer": ref("Address"),
                "earned_at": UINT,
                "live": BOOL,
            }
        ),
        "HistoryItem": obj(
            {
                "height": UINT,
                "index": UINT,
                "hash": hex32,
                "event": STR,
                "delta": INT,
            }
        ),
        "Account": obj(
            {
                "address": ref("Address"),
                "balance": UINT,
                "as_of": {"type": "integer", "description": "Latest block time, s."},
                "frozen": BOOL,
                "debt": UINT,
                "lots": {"type": "array", "items": ref("Lot")},
                "history": {"type": "array", "items": ref("HistoryItem")},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "Pass as `cursor` for older history; null at "
                    "the end.",
                },
                "pending": {"type": "array", "items": ref("PendingCoins")},
                "pending_balance": UINT,
                "tier": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "As of the last purchase award.",
                },
                "tier_multiplier_bp": UINT,
                "tier_window_earned": UINT,
                "today": ref("DayCounts"),
            }
        ),
        "Merchant": obj(
            {
                "address": ref("Address"),
                "name": STR,
                "rate": UINT,
                "daily_cap": UINT,
                "active": BOOL,
                "issued": UINT,
                "redeemed": UINT,
                "day": UINT,
                "issued_on_day": UINT,
                "today": INT,
                "issued_today": UINT,
                "expired": UINT,
                "clawed_back": UINT,
                "price_per_coin": UINT,
                "reimbursement_per_coin": UINT,
                "categories": {
                    "type": "array",
                    "items": obj({"category": STR, "rate": UINT}),
                },
            }
        ),
        "Validators": obj(
            {
                "height": UINT,
                "validators_hash": hex32,
                "validators": {
                    "type": "array",
                    "items": obj({"name": STR, "address": ref("Address")}),
                },
            }
        ),
        "RawBlock": obj(
            {
                "height": UINT,
                "block": ref("Hex"),
                "commit": ref("Hex"),
                "receipts": ref("Hex"),
            },
            description="Canonical bytes of a block, its commit certificate and "
            "its receipts: lowercase hex in JSON, bin when the reply is msgpack.",
        ),
        "Evidence": obj(
            {
                "height": UINT,
                "evidence": {
                    "type": "array",
                    "items": obj(
                        {
                            "validator": ref("Address"),
                            "height": UINT,
                            "round": UINT,
                            "vote_type": {"enum": ["prevote", "precommit"]},
                            "reported_by": ref("Address"),
                            "recorded_at_height": UINT,
                            "evidence": ref("Hex"),
                        }
                    ),
                },
            }
        ),
        "BlockEvent": obj(
            {"height": UINT, "hash": hex32, "time_ms": UINT, "txs": UINT},
            description="Data of an `event: block` server-sent event.",
        ),
        "AccountEvent": {
            "allOf": [ref("HistoryItem"), obj({"time_ms": UINT})],
            "description": "Data of an `event: account` server-sent event.",
        },
        "Health": obj({"status": {"const": "ok"}}),
        "Ready": obj({"status": {"const": "ready"}, "height": UINT}),
        **loyalty_schemas(),
    }


def content(schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "application/json": {"schema": schema},
        "application/msgpack": {"schema": schema},
    }


def ok(description: str, schema_name: str) -> dict[str, Any]:
    """A 200 response with the named schema, in JSON or msgpack."""
    return {"200": {"description": description, "content": content(ref(schema_name))}}


def problem(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/responses/{name}"}


# Problem responses by name: their status and what brings them.
PROBLEM_RESPONSES: dict[str, tuple[str, str]] = {
    "BadRequest": ("400", "Malformed body, parameter or transaction"),
    "NotFound": ("404", "Unknown route or resource"),
    "MethodNotAllowed": ("405", "The route does not take this method"),
    "Conflict": ("409", "The transaction is already committed (duplicate_tx)"),
    "PayloadTooLarge": ("413", "The body or batch is over its limit"),
    "UnsupportedMediaType": ("415", "Content-Type is neither JSON nor msgpack, "
                             "or the body is compressed (Content-Encoding)"),
    "ExpectationFailed": ("417", "An Expect header other than 100-continue"),
    "Unprocessable": ("422", "Well formed, but refused: signature, chain, "
                      "expiry, range, or by the ledger when waiting"),
    "TooManyRequests": ("429", "Too many requests in flight from this client"),
    "InternalError": ("500", "Unexpected failure (logged); no internals shown"),
    "Unavailable": ("503", "Mempool full, node not ready, or too many request "
                    "bodies in flight (server_busy); see Retry-After"),
}  # fmt: skip


def responses(main: dict[str, Any], *errors: str) -> dict[str, Any]:
    """`main` plus the problem responses named, and those any route may give."""
    out = dict(main)
    for name in (*errors, "MethodNotAllowed", "TooManyRequests", "InternalError"):
        out[PROBLEM_RESPONSES[name][0]] = problem(name)
    return out


def param(
    name: str, where: str, schema: dict[str, Any], description: str
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema,
        "description": description,
    }


ADDRESS = param("address", "path", ref("Address"), "A perk1 address.")


def operation(
    operation_id: str,
    summary: str,
    response: dict[str, Any],
    *errors: str,
    params: tuple[dict[str, Any], ...] = (),
    strict_query: bool = True,
    **more: Any,
) -> dict[str, Any]:
    """An operation; `strict_query` ones refuse a query parameter they do not
    declare, or one given twice, with 400 (node.views.check_query)."""
    if strict_query:
        errors = ("BadRequest", *errors)
    return {
        "operationId": operation_id,
        "summary": summary,
        "parameters": list(params),
        "responses": responses(response, *errors),
        **more,
    }


def get(*args: Any, **kw: Any) -> dict[str, Any]:
    return {"get": operation(*args, **kw)}


def text(description: str, media: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"200": {"description": description, "content": {media: {"schema": schema}}}}


def body(description: str, json_schema: str) -> dict[str, Any]:
    raw = {"type": "string", "contentMediaType": "application/msgpack"}
    return {
        "required": True,
        "description": description,
        "content": {
            "application/json": {"schema": ref(json_schema)},
            "application/msgpack": {"schema": raw},
        },
    }


def paths(max_batch: int, max_body: int) -> dict[str, Any]:
    sse = text(
        "A text/event-stream; comment lines every ~15 s keep it open, and "
        "`event: end` with a reason comes when the node ends it.",
        "text/event-stream",
        STR,
    )
    submitted = {
        **ok("Committed with code ok (wait=true)", "Committed"),
        "202": {
            "description": "Admitted to the mempool, or still pending when the "
            "wait timed out. Resubmitting pending bytes is idempotent: 202 with "
            "the same hash.",
            "content": content(ref("Pending")),
        },
    }
    wait = param(
        "wait",
        "query",
        {"type": "string", "enum": ["true", "false"]},
        "Wait until the transaction is committed (or the timeout passes).",
    )
    timeout = param(
        "timeout",
        "query",
        {"type": "string", "pattern": r"^[0-9]{1,6}(\.[0-9]{1,3})?$"},
        "Seconds to wait; capped by api.max_wait_s, which is the default.",
    )
    limit = param(
        "limit",
        "query",
        {"type": "string", "pattern": "^[0-9]{1,6}$"},
        "History items per page, 1..200 (default 50).",
    )
    cursor = param("cursor", "query", ref("Hex"), "next_cursor of the last page.")
    tx_hash = param("hash", "path", ref("Hash"), "Transaction hash (SHA-256).")
    # Heights are unsigned 63-bit integers on the wire (state.codec.check_uint).
    height = param(
        "height",
        "path",
        {"type": "integer", "minimum": 1, "maximum": (1 << 63) - 1},
        "A block height: 1, 2, ...",
    )
    return {
        "/v1/status": get(
            "status", "The node's view of the chain", ok("Status", "Status")
        ),
        "/v1/transactions": {
            "post": operation(
                "submit_transaction",
                "Submit one signed transaction",
                submitted,
                "BadRequest",
                "Conflict",
                "PayloadTooLarge",
                "UnsupportedMediaType",
                "ExpectationFailed",
                "Unprocessable",
                "Unavailable",
                params=(wait, timeout),
                requestBody=body(
                    f"At most {max_body} bytes: the transaction as hex in JSON, "
                    "or its raw canonical bytes as application/msgpack.",
                    "SubmitRequest",
                ),
            )
        },
        "/v1/transactions/batch": {
            "post": operation(
                "submit_batch",
                "Submit many signed transactions",
                ok("One result per transaction, in order", "BatchResult"),
                "BadRequest",
                "PayloadTooLarge",
                "UnsupportedMediaType",
                "ExpectationFailed",
                "Unavailable",
                requestBody=body(
                    f"1..{max_batch} transactions: hex strings in JSON, or a "
                    "msgpack array of bin, each a raw transaction.",
                    "BatchRequest",
                ),
                description="Each result is `{hash, status: pending}` or the "
                "problem document that refused that transaction, with the HTTP "
                "status it would have had alone. Retry-After is set when any "
                "was refused for a full mempool.",
            )
        },
        "/v1/transactions/{hash}": get(
            "transaction",
            "Where a transaction stands",
            ok("Pending, committed or rejected", "TransactionStatus"),
            "BadRequest",
            "NotFound",
            params=(tx_hash,),
        ),
        "/v1/blocks/latest": get(
            "latest_block",
            "The latest block with transactions, receipts and certificate",
            ok("The block", "Block"),
            "NotFound",
        ),
        "/v1/blocks/{height}": get(
            "block_at_height",
            "A block by height",
            ok("The block", "Block"),
            "BadRequest",
            "NotFound",
            params=(height,),
        ),
        "/v1/blocks/{height}/raw": get(
            "raw_block_at_height",
            "A block and its commit certificate as canonical bytes (for audits)",
            ok("The block bytes", "RawBlock"),
            "BadRequest",
            "NotFound",
            params=(height,),
        ),
        "/v1/evidence": get(
            "evidence",
            "Recorded evidence of double signing by validators",
            ok("Evidence", "Evidence"),
        ),
        "/v1/accounts/{address}": get(
            "account",
            "An account's balance, lots and history (newest first)",
            ok("The account", "Account"),
            "BadRequest",
            params=(ADDRESS, limit, cursor),
        ),
        "/v1/merchants/{address}": get(
            "merchant",
            "A merchant's terms and counters",
            ok("The merchant", "Merchant"),
            "BadRequest",
            "NotFound",
            params=(ADDRESS,),
        ),
        "/v1/validators": get(
            "validators", "The validator set", ok("Validators", "Validators")
        ),
        **loyalty_paths(),
        "/v1/stream/blocks": get(
            "block_stream", "Events `block` (data: BlockEvent), one per block", sse
        ),
        "/v1/stream/accounts/{address}": get(
            "account_stream",
            "Events `account` (data: AccountEvent) of one account",
            sse,
            "BadRequest",
            params=(ADDRESS,),
        ),
        "/v1/openapi.json": get(
            "openapi_document",
            "This document",
            {"200": {"description": "OpenAPI 3.1", "content": content(OBJECT)}},
        ),
        # Operators' probes and scrapers ignore any query string.
        "/metrics": get(
            "metrics",
            "Prometheus metrics",
            text("Prometheus text format", "text/plain", STR),
            strict_query=False,
        ),
        "/healthz": get(
            "health", "The process is alive", ok("Alive", "Health"), strict_query=False
        ),
        "/readyz": get(
            "readiness",
            "The store is open and the node started",
            ok("Ready", "Ready"),
            "Unavailable",
            strict_query=False,
        ),
    }


def build_document(max_batch: int = 2000, max_body: int = 4 << 20) -> dict[str, Any]:
    problem_content = {"application/problem+json": {"schema": ref("Problem")}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "perkchain node API",
            "version": "1.0.0",
            "description": __doc__,
        },
        "paths": paths(max_batch, max_body),
        "components": {
            "schemas": schemas(max_batch),
            "responses": {
                name: {"description": description, "content": problem_content}
                for name, (_, description) in PROBLEM_RESPONSES.items()
            },
        },
    }
