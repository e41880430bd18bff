"""Transactions: the signed envelope, the payload of each kind, admission checks.

Wire form (canonical msgpack, see state.codec):

    [version, chain_id, kind, signer, expires_at, payload, signature]

- version     1
- chain_id    the chain's id, compared byte for byte (no case folding)
- kind        an integer from Kind
- signer      the 32-byte Ed25519 public key that signs; it is also the account
- expires_at  block time in whole seconds after which the transaction is void;
              at most MAX_TTL_S ahead of the block that includes it
- payload     an array whose fields depend on the kind
- signature   Ed25519 over SIGN_DOMAIN + canonical([version .. payload])

The transaction hash is SHA-256 of the whole canonical encoding.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from enum import IntEnum
from typing import Any, NamedTuple

import nacl.bindings
import nacl.exceptions

from state.codec import (
    DecodeError,
    check_array,
    check_bool,
    check_bytes,
    check_text,
    check_types,
    check_uint,
    decode,
    encode,
    sha256,
)
from state.codes import Code

TX_VERSION = 1
SIGN_DOMAIN = b"perkchain/tx/v1\x00"
MAX_TX_BYTES = 1024
MAX_TTL_S = 3600
KEY_BYTES = 32
SIGNATURE_BYTES = 64

# Amounts: minor units of currency for purchases, coins everywhere else.
MAX_AMOUNT = 10**12
# Earning rate: coins per 100 minor units of spend.
MAX_RATE = 10_000
MAX_NAME = 64
MAX_ORDER_ID = 64
MAX_MEMO = 128
MAX_EVIDENCE_BYTES = 512


class Kind(IntEnum):
    REGISTER_MERCHANT = 1
    UPDATE_MERCHANT = 2
    SET_ACCOUNT_FROZEN = 3
    PROPOSE_CHANGE = 4
    APPROVE_CHANGE = 5
    AWARD_PURCHASE = 10
    REFUND_PURCHASE = 11
    ENGAGEMENT_REWARD = 12
    REDEEM = 20
    TRANSFER = 21
    REVERSE_REDEMPTION = 22
    VALIDATOR_VOTE = 30
    REPORT_EVIDENCE = 31


_KINDS: dict[int, Kind] = {int(kind): kind for kind in Kind}


class ValidatorAction(IntEnum):
    ADD = 1
    REMOVE = 2


# The kinds of a program change and their arguments live in state.changes.
MAX_CATEGORY = 32
HASH_BYTES = 32


class EngagementKind(IntEnum):
    FEEDBACK = 1
    CONSULTATION = 2
    SURVEY = 3


# --- payloads -------------------------------------------------------------------


class RegisterMerchant(NamedTuple):
    merchant: bytes
    name: str
    rate: int
    daily_cap: int


class UpdateMerchant(NamedTuple):
    merchant: bytes
    name: str
    rate: int
    daily_cap: int
    active: bool


class SetAccountFrozen(NamedTuple):
    account: bytes
    frozen: bool
    reason: str


class AwardPurchase(NamedTuple):
    """A purchase of `amount` minor units, all paid with money, at the
    merchant's base rate."""

    customer: bytes
    order_id: str
    amount: int

    # The same fields as AwardPurchaseWithDetails, so one rule reads both.
    @property
    def paid_with_coins(self) -> int:
        return 0

    @property
    def category(self) -> str:
        return ""


class AwardPurchaseWithDetails(NamedTuple):
    """A purchase of `amount` minor units of which `paid_with_coins` were paid
    with coins (they earn nothing); `category` selects a category rate. The
    long form of award_purchase, used only when either is set."""

    customer: bytes
    order_id: str
    amount: int
    paid_with_coins: int
    category: str


class RefundPurchase(NamedTuple):
    """The merchant refunds `amount` minor units of its order `order_id`."""

    order_id: str
    amount: int


class EngagementReward(NamedTuple):
    """Fixed coins for feedback, a consultation or a survey; `reference` is
    unique per awarder, so a retried reward is credited once."""

    customer: bytes
    kind: EngagementKind
    reference: str


class ReverseRedemption(NamedTuple):
    """The accepting merchant cancels the redemption with this tx hash."""

    redemption: bytes


class ProposeChange(NamedTuple):
    """A program change; approved by `admin_threshold` admins before
    `deadline` (block time, seconds), its id is this transaction's hash."""

    action: IntEnum  # state.changes.ChangeAction
    args: NamedTuple
    deadline: int


class ApproveChange(NamedTuple):
    proposal: bytes


class Redeem(NamedTuple):
    merchant: bytes
    amount: int
    reference: str


class Transfer(NamedTuple):
    to: bytes
    amount: int
    memo: str


class ValidatorVote(NamedTuple):
    """A current validator's vote to add or remove a validator at a later height."""

    action: ValidatorAction
    validator: bytes
    name: str
    effective_height: int


class ReportEvidence(NamedTuple):
    """Two conflicting votes signed by one validator (state.votes)."""

    evidence: bytes


def payload_wire(payload: NamedTuple) -> list:
    """The payload array as it is signed: the inverse of the kind's parser."""
    if isinstance(payload, ProposeChange):
        return [
            int(payload.action),
            changes.change_wire(payload.args),
            payload.deadline,
        ]
    return [int(v) if isinstance(v, IntEnum) else v for v in payload]


def _int(value: Any, name: str) -> int:
    """Any integer: its range is checked by check_admission with its own code."""
    if type(value) is not int:
        raise DecodeError(f"{name}: expected an integer")
    return value


def _key(value: Any, name: str) -> bytes:
    return check_bytes(value, name, KEY_BYTES)


def _parse_register(p: list) -> RegisterMerchant:
    check_array(p, 4, "payload")
    return RegisterMerchant(
        _key(p[0], "merchant"),
        check_text(p[1], "name", MAX_NAME, 1),
        _int(p[2], "rate"),
        _int(p[3], "daily_cap"),
    )


def _parse_update(p: list) -> UpdateMerchant:
    check_array(p, 5, "payload")
    return UpdateMerchant(
        _key(p[0], "merchant"),
        check_text(p[1], "name", MAX_NAME, 1),
        _int(p[2], "rate"),
        _int(p[3], "daily_cap"),
        check_bool(p[4], "active"),
    )


def _parse_frozen(p: list) -> SetAccountFrozen:
    check_array(p, 3, "payload")
    return SetAccountFrozen(
        _key(p[0], "account"),
        check_bool(p[1], "frozen"),
        check_text(p[2], "reason", MAX_MEMO),
    )


def _parse_award(p: list) -> AwardPurchase | AwardPurchaseWithDetails:
    # The short form is the only spelling of an award with no coin payment and
    # no category, so one award has one encoding.
    if type(p) is list and len(p) == 5:
        award = AwardPurchaseWithDetails(
            _key(p[0], "customer"),
            check_text(p[1], "order_id", MAX_ORDER_ID, 1),
            _int(p[2], "amount"),
            _int(p[3], "paid_with_coins"),
            check_text(p[4], "category", MAX_CATEGORY),
        )
        if award.paid_with_coins == 0 and award.category == "":
            raise DecodeError("payload: use the 3-field form without extras")
        return award
    check_array(p, 3, "payload")
    return AwardPurchase(
        _key(p[0], "customer"),
        check_text(p[1], "order_id", MAX_ORDER_ID, 1),
        _int(p[2], "amount"),
    )


def _parse_refund(p: list) -> RefundPurchase:
    check_array(p, 2, "payload")
    return RefundPurchase(
        check_text(p[0], "order_id", MAX_ORDER_ID, 1), _int(p[1], "amount")
    )


def _engagement_kind(value: Any) -> EngagementKind:
    kind = check_uint(value, "kind")
    if kind not in EngagementKind._value2member_map_:
        raise DecodeError(f"kind: {kind} is not 1, 2 or 3")
    return EngagementKind(kind)


def _parse_engagement(p: list) -> EngagementReward:
    check_array(p, 3, "payload")
    return EngagementReward(
        _key(p[0], "customer"),
        _engagement_kind(p[1]),
        check_text(p[2], "reference", MAX_ORDER_ID, 1),
    )


def _parse_reverse(p: list) -> ReverseRedemption:
    check_array(p, 1, "payload")
    return ReverseRedemption(check_bytes(p[0], "redemption", HASH_BYTES))


def _parse_propose(p: list) -> ProposeChange:
    check_array(p, 3, "payload")
    action = check_uint(p[0], "action")
    args = changes.parse_change(action, p[1])
    return ProposeChange(
        changes.ChangeAction(action), args, check_uint(p[2], "deadline")
    )


def _parse_approve(p: list) -> ApproveChange:
    check_array(p, 1, "payload")
    return ApproveChange(check_bytes(p[0], "proposal", HASH_BYTES))


def _parse_redeem(p: list) -> Redeem:
    check_array(p, 3, "payload")
    return Redeem(
        _key(p[0], "merchant"),
        _int(p[1], "amount"),
        check_text(p[2], "reference", MAX_ORDER_ID),
    )


def _parse_transfer(p: list) -> Transfer:
    check_array(p, 3, "payload")
    return Transfer(
        _key(p[0], "to"),
        _int(p[1], "amount"),
        check_text(p[2], "memo", MAX_MEMO),
    )


def _parse_validator_vote(p: list) -> ValidatorVote:
    check_array(p, 4, "payload")
    action = check_uint(p[0], "action")
    if action not in (ValidatorAction.ADD, ValidatorAction.REMOVE):
        raise DecodeError(f"action: {action} is neither add (1) nor remove (2)")
    return ValidatorVote(
        ValidatorAction(action),
        _key(p[1], "validator"),
        check_text(p[2], "name", MAX_NAME),
        check_uint(p[3], "effective_height"),
    )


def _parse_evidence(p: list) -> ReportEvidence:
    check_array(p, 1, "payload")
    return ReportEvidence(check_bytes(p[0], "evidence", max_len=MAX_EVIDENCE_BYTES))


PAYLOAD_PARSERS = {
    Kind.REGISTER_MERCHANT: _parse_register,
    Kind.UPDATE_MERCHANT: _parse_update,
    Kind.SET_ACCOUNT_FROZEN: _parse_frozen,
    Kind.PROPOSE_CHANGE: _parse_propose,
    Kind.APPROVE_CHANGE: _parse_approve,
    Kind.AWARD_PURCHASE: _parse_award,
    Kind.REFUND_PURCHASE: _parse_refund,
    Kind.ENGAGEMENT_REWARD: _parse_engagement,
    Kind.REDEEM: _parse_redeem,
    Kind.TRANSFER: _parse_transfer,
    Kind.REVERSE_REDEMPTION: _parse_reverse,
    Kind.VALIDATOR_VOTE: _parse_validator_vote,
    Kind.REPORT_EVIDENCE: _parse_evidence,
}


# --- the envelope ------------------------------------------------------------------


class Transaction(NamedTuple):
    """A decoded, structurally checked transaction. A named tuple rather than a
    frozen dataclass: every transaction a node admits makes one, and a frozen
    dataclass takes several times as long to build."""

    version: int
    chain_id: str
    kind: Kind
    signer: bytes
    expires_at: int
    payload: NamedTuple
    signature: bytes
    raw: bytes
    hash: bytes

    @property
    def signing_bytes(self) -> bytes:
        return signing_message(self.raw)

    def verify_signature(self) -> bool:
        try:
            nacl.bindings.crypto_sign_open(
                self.signature + self.signing_bytes, self.signer
            )
        except nacl.exceptions.BadSignatureError:
            return False
        return True


class TxRejected(Exception):
    """A transaction refused before execution, carrying its reason code."""

    def __init__(self, code: Code, detail: str):
        super().__init__(detail)
        self.code = code
        self.detail = detail


def signing_message(raw: bytes) -> bytes:
    """The bytes the signer signs, derived from a canonical signed transaction.

    The signed array has 7 fields and ends with the 64-byte signature, encoded as
    bin8 (2 header bytes). Dropping it and turning the fixarray header 0x97 into
    0x96 yields exactly encode([version .. payload]), without re-encoding.
    """
    return SIGN_DOMAIN + b"\x96" + raw[1 : -(SIGNATURE_BYTES + 2)]


def build_signed(
    chain_id: str,
    kind: Kind,
    signer: bytes,
    expires_at: int,
    payload: list,
    sign,
) -> bytes:
    """Encode and sign a transaction. `sign(message) -> 64-byte signature`."""
    body = [TX_VERSION, chain_id, int(kind), signer, expires_at, list(payload)]
    signature = sign(SIGN_DOMAIN + encode(body))
    return encode(body + [signature])


def decode_tx(raw: bytes) -> Transaction:
    """Decode and structurally check a transaction; raises TxRejected(MALFORMED...).

    This checks form only. Signature, chain, expiry and ranges are checked by
    check_admission, so that each failure reports its own code.
    """
    try:
        value = decode(raw, MAX_TX_BYTES, check_value_types=False)
        check_array(value, 7, "transaction")
        version = check_uint(value[0], "version")
        if version != TX_VERSION:
            raise TxRejected(Code.UNSUPPORTED_VERSION, f"version {version}")
        chain_id = check_text(value[1], "chain_id", 64, 1)
        kind_number = check_uint(value[2], "kind")
        kind = _KINDS.get(kind_number)
        if kind is None:
            raise TxRejected(Code.UNKNOWN_KIND, f"kind {kind_number}")
        signer = _key(value[3], "signer")
        expires_at = check_uint(value[4], "expires_at")
        payload = PAYLOAD_PARSERS[kind](value[5])
        signature = check_bytes(value[6], "signature", SIGNATURE_BYTES)
        check_types(value)
    except DecodeError as exc:
        raise TxRejected(Code.MALFORMED, str(exc)) from None
    raw = bytes(raw)
    return Transaction(
        version,
        chain_id,
        kind,
        signer,
        expires_at,
        payload,
        signature,
        raw,
        sha256(raw),
    )


# Kinds whose payload carries an amount, and those that carry a rate and cap.
_AMOUNT_KINDS = frozenset(
    (Kind.AWARD_PURCHASE, Kind.REDEEM, Kind.TRANSFER, Kind.REFUND_PURCHASE)
)
_RATE_KINDS = frozenset((Kind.REGISTER_MERCHANT, Kind.UPDATE_MERCHANT))


def check_amounts(tx: Transaction) -> None:
    """Refuse amounts and rates outside their stated ranges (AMOUNT_OUT_OF_RANGE)."""
    p = tx.payload
    if tx.kind in _AMOUNT_KINDS:
        if not 1 <= p.amount <= MAX_AMOUNT:
            raise TxRejected(
                Code.AMOUNT_OUT_OF_RANGE,
                f"amount {p.amount} is outside 1..{MAX_AMOUNT}",
            )
        if tx.kind == Kind.AWARD_PURCHASE and not 0 <= p.paid_with_coins <= p.amount:
            raise TxRejected(
                Code.AMOUNT_OUT_OF_RANGE,
                f"paid_with_coins {p.paid_with_coins} is outside 0..{p.amount}",
            )
    elif tx.kind in _RATE_KINDS:
        if not 0 <= p.rate <= MAX_RATE:
            raise TxRejected(
                Code.AMOUNT_OUT_OF_RANGE, f"rate {p.rate} is outside 0..{MAX_RATE}"
            )
        if not 0 <= p.daily_cap <= MAX_AMOUNT:
            raise TxRejected(
                Code.AMOUNT_OUT_OF_RANGE,
                f"daily_cap {p.daily_cap} is outside 0..{MAX_AMOUNT}",
            )


def check_expiry(tx: Transaction, now_s: int) -> None:
    """Valid at block time now_s iff now_s < expires_at <= now_s + MAX_TTL_S."""
    if tx.expires_at <= now_s:
        raise TxRejected(
            Code.EXPIRED, f"expired at {tx.expires_at}, block time is {now_s}"
        )
    if tx.expires_at > now_s + MAX_TTL_S:
        raise TxRejected(
            Code.EXPIRY_TOO_FAR,
            f"expires_at {tx.expires_at} is more than {MAX_TTL_S}s after {now_s}",
        )


def check_stateless(tx: Transaction, chain_id: str, verified: SignatureCache) -> None:
    """Everything that can be checked without the ledger: chain, ranges, signature."""
    if tx.chain_id != chain_id:
        raise TxRejected(
            Code.WRONG_CHAIN, f"chain id {tx.chain_id!r} is not {chain_id!r}"
        )
    check_amounts(tx)
    if not verified.verify(tx):
        raise TxRejected(Code.BAD_SIGNATURE, "signature does not verify")


class SignatureCache:
    """Transactions whose signature verified, by their bytes; bounded and
    thread-safe.

    A node decodes and verifies each transaction once: at admission to the
    mempool, or when it first sees it in a proposed or synced block. The bytes
    include the signature, so a hit means these exact bytes verified before,
    and the decoded transaction is handed back so block execution need not
    decode it again. Keyed by the bytes rather than the hash: a block's
    transaction is found without hashing it first (a bytes object keeps its
    dictionary hash, so each is hashed once).
    """

    def __init__(self, capacity: int = 200_000):
        self._capacity = capacity
        self._txs: OrderedDict[bytes, Transaction] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, tx: Transaction) -> bool:
        return tx.raw in self._txs

    def __len__(self) -> int:
        return len(self._txs)

    def add(self, tx: Transaction) -> None:
        with self._lock:
            self._txs[tx.raw] = tx
            if len(self._txs) > self._capacity:
                self._txs.popitem(last=False)

    def verify(self, tx: Transaction) -> bool:
        if tx.raw in self._txs:
            return True
        if not tx.verify_signature():
            return False
        self.add(tx)
        return True

    def decode(self, raw: bytes) -> Transaction:
        """The decoded transaction for `raw`, from the cache when it was verified
        before; raises TxRejected when it is malformed."""
        tx = self._txs.get(raw) if type(raw) is bytes else None
        return tx if tx is not None else decode_tx(raw)


# Program changes parse their arguments with state.changes, which builds on the
# payload types above; imported last so either module may be imported first.
import state.changes as changes  # noqa: E402
