"""Build signed transactions, one function per kind.

Each builder takes the signing key, the chain id and the expiry, then the
payload fields of its kind in wire order (see state.tx), and returns the
canonical signed bytes ready to submit. The signer is always the key's own
public key: on perkchain the key that signs is the account that acts.

Accounts and merchants are given as 32 raw key bytes or as ``perk1...``
addresses. Before returning, every builder decodes its own output with
state.tx.decode_tx, so a field the network would refuse as malformed (a name
too long, a control character in a memo, a boolean where an amount belongs)
raises BuildError here rather than coming back as a rejection. Amounts and
rates are deliberately not range-checked: the ledger owns those rules and
reports them with their own codes.

Signing is deterministic, so building the same transaction twice gives the
same bytes and the same hash; a retry after a lost reply cannot spend twice.
The other side of this: two intended, identical transfers must differ in
memo or expiry, or the second is a duplicate.
"""

from __future__ import annotations

from client.keys import PUBLIC_KEY_BYTES, Keypair, parse_address
from state.changes import ChangeAction
from state.tx import (
    EngagementKind,
    Kind,
    TxRejected,
    ValidatorAction,
    build_signed,
    decode_tx,
)

__all__ = [
    "AccountRef",
    "BuildError",
    "approve_change",
    "award_purchase",
    "engagement_reward",
    "propose_change",
    "refund_purchase",
    "reverse_redemption",
    "redeem",
    "register_merchant",
    "set_account_frozen",
    "transfer",
    "update_merchant",
    "validator_vote",
    "report_evidence",
]

# An account named by its raw public key or by its address.
AccountRef = bytes | str


class BuildError(ValueError):
    """The arguments do not make a well-formed transaction."""


def register_merchant(
    key: Keypair,
    chain_id: str,
    expires_at: int,
    merchant: AccountRef,
    name: str,
    rate: int,
    daily_cap: int,
) -> bytes:
    """Admit `merchant` to the coalition; `rate` is coins per 100 minor units."""
    payload = [account_key(merchant, "merchant"), name, rate, daily_cap]
    return sign_transaction(key, chain_id, Kind.REGISTER_MERCHANT, expires_at, payload)


def update_merchant(
    key: Keypair,
    chain_id: str,
    expires_at: int,
    merchant: AccountRef,
    name: str,
    rate: int,
    daily_cap: int,
    active: bool,
) -> bytes:
    """Change a merchant's terms, or suspend it with `active=False`."""
    payload = [account_key(merchant, "merchant"), name, rate, daily_cap, active]
    return sign_transaction(key, chain_id, Kind.UPDATE_MERCHANT, expires_at, payload)


def set_account_frozen(
    key: Keypair,
    chain_id: str,
    expires_at: int,
    account: AccountRef,
    frozen: bool,
    reason: str = "",
) -> bytes:
    """Freeze or unfreeze `account`; `reason` is recorded on chain."""
    payload = [account_key(account, "account"), frozen, reason]
    return sign_transaction(key, chain_id, Kind.SET_ACCOUNT_FROZEN, expires_at, payload)


def award_purchase(
    key: Keypair,
    chain_id: str,
    expires_at: int,
    customer: AccountRef,
    order_id: str,
    amount: int,
    paid_with_coins: int = 0,
    category: str = "",
) -> bytes:
    """A merchant awards coins for an order; `amount` is the spend in minor units,
    `paid_with_coins` the part of it paid with coins (it earns nothing) and
    `category` the merchant's earning category ("" for its base rate).

    Without a coin payment or category the payload is the short
    `[customer, order_id, amount]`, the only spelling the chain accepts then."""
    payload = [account_key(customer, "customer"), order_id, amount]
    if paid_with_coins or category:
        payload += [paid_with_coins, category]
    return sign_transaction(key, chain_id, Kind.AWARD_PURCHASE, expires_at, payload)


def refund_purchase(
    key: Keypair, chain_id: str, expires_at: int, order_id: str, amount: int
) -> bytes:
    """The merchant refunds `amount` minor units of its order `order_id`; the
    coins the order earned are clawed back in proportion."""
    payload = [order_id, amount]
    return sign_transaction(key, chain_id, Kind.REFUND_PURCHASE, expires_at, payload)


def engagement_reward(
    key: Keypair,
    chain_id: str,
    expires_at: int,
    customer: AccountRef,
    kind: EngagementKind,
    reference: str,
) -> bytes:
    """A merchant or an admin rewards feedback, a consultation or a survey;
    `reference` is unique per signer, so a retry is credited once."""
    payload = [account_key(customer, "customer"), int(kind), reference]
    return sign_transaction(key, chain_id, Kind.ENGAGEMENT_REWARD, expires_at, payload)


def reverse_redemption(
    key: Keypair, chain_id: str, expires_at: int, redemption: bytes
) -> bytes:
    """The merchant that accepted a redemption (by its tx hash) cancels it."""
    return sign_transaction(
        key, chain_id, Kind.REVERSE_REDEMPTION, expires_at, [bytes(redemption)]
    )


def propose_change(
    key: Keypair,
    chain_id: str,
    expires_at: int,
    action: ChangeAction,
    args: list,
    deadline: int,
) -> bytes:
    """An admin proposes a program change (state.changes gives each action's
    `args`); it must gather the program's admin threshold of approvals before
    block time `deadline`. Its id is the hash of the returned transaction."""
    payload = [int(action), _wire(args), deadline]
    return sign_transaction(key, chain_id, Kind.PROPOSE_CHANGE, expires_at, payload)


def approve_change(
    key: Keypair, chain_id: str, expires_at: int, proposal: bytes
) -> bytes:
    """An admin approves the proposal whose id (tx hash) is `proposal`."""
    return sign_transaction(
        key, chain_id, Kind.APPROVE_CHANGE, expires_at, [bytes(proposal)]
    )


def _wire(value):
    """Arguments as arrays: tuples become lists, addresses stay text."""
    if isinstance(value, tuple | list):
        return [_wire(v) for v in value]
    return value


def redeem(
    key: Keypair,
    chain_id: str,
    expires_at: int,
    merchant: AccountRef,
    amount: int,
    reference: str = "",
) -> bytes:
    """A customer spends `amount` coins at `merchant`."""
    payload = [account_key(merchant, "merchant"), amount, reference]
    return sign_transaction(key, chain_id, Kind.REDEEM, expires_at, payload)


def transfer(
    key: Keypair,
    chain_id: str,
    expires_at: int,
    to: AccountRef,
    amount: int,
    memo: str = "",
) -> bytes:
    """Send `amount` coins from the key's account to `to`."""
    payload = [account_key(to, "to"), amount, memo]
    return sign_transaction(key, chain_id, Kind.TRANSFER, expires_at, payload)


def validator_vote(
    key: Keypair,
    chain_id: str,
    expires_at: int,
    action: ValidatorAction,
    validator: AccountRef,
    name: str,
    effective_height: int,
) -> bytes:
    """A validator's vote to add (with its name) or remove `validator` from
    `effective_height` on; more than two thirds of the validators must agree."""
    payload = [int(action), account_key(validator, "validator"), name, effective_height]
    return sign_transaction(key, chain_id, Kind.VALIDATOR_VOTE, expires_at, payload)


def report_evidence(
    key: Keypair, chain_id: str, expires_at: int, evidence: bytes
) -> bytes:
    """Put evidence of a double signature (two conflicting votes) on chain."""
    return sign_transaction(
        key, chain_id, Kind.REPORT_EVIDENCE, expires_at, [bytes(evidence)]
    )


def account_key(value: AccountRef, name: str) -> bytes:
    """The 32-byte public key for an account given as raw bytes or an address."""
    if isinstance(value, str):
        # AddressError is a ValueError and already names the problem.
        return parse_address(value)
    if type(value) is not bytes:
        raise TypeError(
            f"{name}: expected 32 key bytes or an address, not {type(value).__name__}"
        )
    if len(value) != PUBLIC_KEY_BYTES:
        raise BuildError(
            f"{name}: a public key is {PUBLIC_KEY_BYTES} bytes, got {len(value)}"
        )
    return value


def sign_transaction(
    key: Keypair, chain_id: str, kind: Kind, expires_at: int, payload: list
) -> bytes:
    """Sign with `key` as signer, then decode the result as a node would."""
    if not isinstance(key, Keypair):
        raise TypeError("key must be a client.keys.Keypair")
    try:
        raw = build_signed(
            chain_id, kind, key.public_key, expires_at, payload, key.sign
        )
    except (OverflowError, TypeError, ValueError) as exc:
        # msgpack refuses integers beyond 64 bits, strings that are not valid
        # Unicode (lone surrogates) and values of types it cannot encode.
        raise BuildError(f"{kind.name}: cannot encode: {exc}") from None
    try:
        decode_tx(raw)
    except TxRejected as exc:
        raise BuildError(f"{kind.name}: {exc.detail}") from None
    return raw
