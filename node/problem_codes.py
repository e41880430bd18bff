"""The stable codes of the API's problem documents and the HTTP status of each.

A problem document's `code` is what apps match on, so codes are never
renamed: the API's own codes (bad parameters, unknown routes, limits) and the
reason codes of transactions (state.codes) by slug. node.views raises them,
node.openapi lists them in the document it serves.
"""

from __future__ import annotations

from state.codes import Code

# The `code` of a problem document: stable, machine-readable, never renamed.
# Each with the HTTP status it comes with.
API_CODES: dict[str, tuple[int, str]] = {
    "invalid_json": (400, "the body is not JSON (syntax, NaN, Infinity)"),
    "duplicate_key": (400, "a JSON object names the same key twice"),
    "too_deep": (400, "JSON nests deeper than 32 levels"),
    "invalid_utf8": (400, "the JSON body is not UTF-8"),
    "empty_body": (400, "the body is empty"),
    "invalid_body": (400, "the body is not the documented shape"),
    "unknown_field": (400, "the body has a field this API does not know"),
    "invalid_hex": (400, "a hex field is not an even number of hex digits"),
    "invalid_parameter": (400, "a query parameter is unknown, repeated or invalid"),
    "invalid_address": (400, "a path address is not a perk1 address"),
    "invalid_height": (400, "a path height is not a whole number >= 1"),
    "invalid_hash": (400, "a path hash is not 64 hex digits"),
    "invalid_cursor": (400, "a history cursor was not issued for this account"),
    "invalid_range": (400, "a period's from is not before its to, or it is too long"),
    "origin_not_allowed": (403, "a CORS preflight from an origin not configured"),
    "not_found": (404, "no such route"),
    "unknown_transaction": (404, "no transaction with this hash is known"),
    "unknown_block": (404, "no block at this height yet"),
    "unknown_merchant": (404, "no merchant has this address (on reads)"),
    "method_not_allowed": (405, "the route exists, not with this method"),
    "body_too_large": (413, "the body is over api.max_body_bytes; it is not read"),
    "batch_too_large": (413, "more transactions than api.max_batch"),
    "unsupported_media_type": (415, "the body is not JSON or msgpack, or compressed"),
    "expectation_failed": (417, "an Expect header other than 100-continue"),
    "bad_request": (400, "a request the HTTP server itself could not take"),
    "dropped": (422, "the transaction left the mempool uncommitted (expired)"),
    "too_many_requests": (429, "too many requests in flight from this client"),
    "internal_error": (500, "an unexpected failure; details are in the node log"),
    "mempool_full": (503, "the mempool is full; retry after Retry-After seconds"),
    "not_ready": (503, "the node is starting or stopping"),
    "server_busy": (503, "the node holds as many request bodies as it may; retry"),
}
# Reason codes of transactions (state.codes) by slug. Admission codes that are
# not 422: a transaction that is not a transaction at all, or one already in.
TX_STATUS = {
    Code.MALFORMED: 400,
    Code.UNSUPPORTED_VERSION: 400,
    Code.UNKNOWN_KIND: 400,
    Code.DUPLICATE_TX: 409,
}
TX_CODES: dict[Code, str] = {
    Code.MALFORMED: "not a canonical transaction (`field` names the field)",
    Code.WRONG_CHAIN: "signed for another chain id",
    Code.BAD_SIGNATURE: "the signature does not verify",
    Code.EXPIRED: "expires_at is not after the latest block time",
    Code.EXPIRY_TOO_FAR: "expires_at is more than an hour ahead",
    Code.DUPLICATE_TX: "this transaction is already committed",
    Code.UNSUPPORTED_VERSION: "a transaction version this node does not know",
    Code.UNKNOWN_KIND: "a transaction kind this node does not know",
    Code.UNAUTHORISED: "the signer may not do this",
    Code.UNKNOWN_MERCHANT: "the merchant is not registered",
    Code.MERCHANT_SUSPENDED: "the merchant is suspended",
    Code.MERCHANT_EXISTS: "a merchant with this key exists",
    Code.ACCOUNT_FROZEN: "the account is frozen",
    Code.INSUFFICIENT_BALANCE: "not enough live coins",
    Code.DUPLICATE_ORDER: "this merchant already awarded this order",
    Code.AMOUNT_OUT_OF_RANGE: "amount, rate or daily_cap out of range (`field`)",
    Code.DAILY_CAP_EXCEEDED: "over the merchant's daily issuance cap",
    Code.TRANSFERS_DISABLED: "the program does not allow transfers",
    Code.INVALID_RECIPIENT: "awarding or sending to oneself",
    Code.BALANCE_LIMIT: "the recipient's balance would be too large",
    Code.INVALID_EVIDENCE: "the evidence does not prove a double signature",
    Code.EVIDENCE_EXISTS: "this double signature is already recorded",
    Code.ALREADY_VOTED: "this validator already voted for this change",
    Code.INVALID_VALIDATOR_CHANGE: "the validator-set change is not possible",
    Code.VALIDATOR_SET_LIMIT: "the change would take the set below its minimum",
    Code.UNKNOWN_PROPOSAL: "no open program-change proposal has this id",
    Code.PROPOSAL_EXPIRED: "the proposal was not approved in time",
    Code.DUPLICATE_APPROVAL: "this admin already approved the proposal",
    Code.APPROVAL_REQUIRED: "this change needs k admin approvals (propose_change)",
    Code.INVALID_PROGRAM_CHANGE: "the proposed program change is not valid",
    Code.TOO_MANY_PROPOSALS: "too many proposals are open",
    Code.UNKNOWN_ORDER: "this merchant has no such order",
    Code.REFUND_EXCEEDS_ORDER: "the refund is more than what is left of the order",
    Code.CUSTOMER_DAILY_CAP_EXCEEDED: "the customer's daily earning cap is reached",
    Code.VELOCITY_LIMIT_EXCEEDED: "too many awards to this customer today",
    Code.TRANSFER_LIMIT_EXCEEDED: "the sender's daily transfer limit is reached",
    Code.ENGAGEMENT_NOT_OFFERED: "the program offers no such engagement reward",
    Code.ENGAGEMENT_CAP_EXCEEDED: "the customer's daily cap for this reward is reached",
    Code.DUPLICATE_REFERENCE: "this reward reference was already used",
    Code.UNKNOWN_REDEMPTION: "no redemption has this transaction hash",
    Code.NOT_REDEEMING_MERCHANT: "only the merchant that accepted it can reverse it",
    Code.REDEMPTION_ALREADY_REVERSED: "the redemption was already reversed",
}


def status_of(code: str | Code) -> int:
    """The HTTP status a problem with this code comes with."""
    if isinstance(code, Code):
        return TX_STATUS.get(code, 422)
    return API_CODES[code][0]


def codes_description() -> str:
    api = "; ".join(f"`{c}` {s}: {d}" for c, (s, d) in API_CODES.items())
    tx = "; ".join(f"`{c.slug}` {status_of(c)}: {d}" for c, d in TX_CODES.items())
    return (
        f"Stable machine-readable code. API codes: {api}. Transaction codes "
        f"(state.codes; refusals by the ledger come when waiting): {tx}."
    )
