"""Transaction builders: each kind decodes back to what was asked, signed by the key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from client import builders
from client.builders import BuildError
from client.keys import AddressError, Keypair
from state.changes import ChangeAction, EarningRules
from state.codes import Code
from state.tx import (
    ApproveChange,
    AwardPurchase,
    AwardPurchaseWithDetails,
    EngagementKind,
    EngagementReward,
    Kind,
    ProposeChange,
    Redeem,
    RefundPurchase,
    RegisterMerchant,
    ReportEvidence,
    ReverseRedemption,
    SetAccountFrozen,
    SignatureCache,
    Transfer,
    TxRejected,
    UpdateMerchant,
    ValidatorAction,
    ValidatorVote,
    check_amounts,
    check_stateless,
    decode_tx,
)

CHAIN = "perk-test-1"
EXPIRES = 1_750_000_000

SIGNER = Keypair.from_seed(bytes([1]) * 32)
OTHER = Keypair.from_seed(bytes([2]) * 32)


class Case(NamedTuple):
    build: Callable[..., bytes]
    args: tuple[Any, ...]
    kind: Kind
    payload: NamedTuple


CASES = [
    Case(
        builders.register_merchant,
        (OTHER.public_key, "Corner Café", 150, 50_000),
        Kind.REGISTER_MERCHANT,
        RegisterMerchant(OTHER.public_key, "Corner Café", 150, 50_000),
    ),
    Case(
        builders.update_merchant,
        (OTHER.public_key, "Corner Café & Bakery", 0, 0, False),
        Kind.UPDATE_MERCHANT,
        UpdateMerchant(OTHER.public_key, "Corner Café & Bakery", 0, 0, False),
    ),
    Case(
        builders.set_account_frozen,
        (OTHER.public_key, True, "chargeback under review"),
        Kind.SET_ACCOUNT_FROZEN,
        SetAccountFrozen(OTHER.public_key, True, "chargeback under review"),
    ),
    Case(
        builders.award_purchase,
        (OTHER.public_key, "order-2024-0001", 2_599),
        Kind.AWARD_PURCHASE,
        AwardPurchase(OTHER.public_key, "order-2024-0001", 2_599),
    ),
    Case(
        builders.award_purchase,
        (OTHER.public_key, "order-2024-0002", 5_000, 1_200, "books"),
        Kind.AWARD_PURCHASE,
        AwardPurchaseWithDetails(
            OTHER.public_key, "order-2024-0002", 5_000, 1_200, "books"
        ),
    ),
    Case(
        builders.refund_purchase,
        ("order-2024-0001", 1_000),
        Kind.REFUND_PURCHASE,
        RefundPurchase("order-2024-0001", 1_000),
    ),
    Case(
        builders.engagement_reward,
        (OTHER.public_key, EngagementKind.SURVEY, "survey-42"),
        Kind.ENGAGEMENT_REWARD,
        EngagementReward(OTHER.public_key, EngagementKind.SURVEY, "survey-42"),
    ),
    Case(
        builders.reverse_redemption,
        (bytes(range(32)),),
        Kind.REVERSE_REDEMPTION,
        ReverseRedemption(bytes(range(32))),
    ),
    Case(
        builders.propose_change,
        (ChangeAction.EARNING, [100, 3600, 0, 5], 1_750_000_600),
        Kind.PROPOSE_CHANGE,
        ProposeChange(
            ChangeAction.EARNING, EarningRules(100, 3600, 0, 5), 1_750_000_600
        ),
    ),
    Case(
        builders.approve_change,
        (bytes(range(32, 64)),),
        Kind.APPROVE_CHANGE,
        ApproveChange(bytes(range(32, 64))),
    ),
    Case(
        builders.redeem,
        (OTHER.public_key, 400, "receipt 77"),
        Kind.REDEEM,
        Redeem(OTHER.public_key, 400, "receipt 77"),
    ),
    Case(
        builders.transfer,
        (OTHER.public_key, 10**12, "birthday 🎂"),
        Kind.TRANSFER,
        Transfer(OTHER.public_key, 10**12, "birthday 🎂"),
    ),
    Case(
        builders.validator_vote,
        (ValidatorAction.ADD, OTHER.public_key, "merchant-node-5", 120),
        Kind.VALIDATOR_VOTE,
        ValidatorVote(ValidatorAction.ADD, OTHER.public_key, "merchant-node-5", 120),
    ),
    Case(
        builders.report_evidence,
        (b"\x92" + b"\x90" * 2,),
        Kind.REPORT_EVIDENCE,
        ReportEvidence(b"\x92" + b"\x90" * 2),
    ),
]
IDS = [case.kind.name for case in CASES]


def test_every_kind_has_a_builder_under_test() -> None:
    assert {case.kind for case in CASES} == set(Kind)
    assert set(builders.__all__) >= {case.build.__name__ for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_builder_output_decodes_to_the_requested_transaction(case: Case) -> None:
    raw = case.build(SIGNER, CHAIN, EXPIRES, *case.args)
    tx = decode_tx(raw)
    assert tx.kind is case.kind
    assert tx.payload == case.payload
    assert type(tx.payload) is type(case.payload)
    assert tx.chain_id == CHAIN
    assert tx.expires_at == EXPIRES
    assert tx.signer == SIGNER.public_key
    assert tx.verify_signature()
    assert tx.raw == raw


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_builder_output_passes_stateless_admission(case: Case) -> None:
    tx = decode_tx(case.build(SIGNER, CHAIN, EXPIRES, *case.args))
    check_stateless(tx, CHAIN, SignatureCache())
    with pytest.raises(TxRejected) as info:
        check_stateless(tx, "perk-other", SignatureCache())
    assert info.value.code is Code.WRONG_CHAIN


# Builders whose first argument after the expiry names an account.
ACCOUNT_FIRST = [case for case in CASES if case.args[0] == OTHER.public_key]


@pytest.mark.parametrize("case", ACCOUNT_FIRST, ids=lambda c: c.kind.name)
def test_address_and_raw_key_build_identical_bytes(case: Case) -> None:
    by_key = case.build(SIGNER, CHAIN, EXPIRES, *case.args)
    by_address = case.build(SIGNER, CHAIN, EXPIRES, OTHER.address, *case.args[1:])
    assert by_address == by_key


def test_validator_vote_takes_an_address_too() -> None:
    args = (ValidatorAction.REMOVE, OTHER.public_key, "", 99)
    by_key = builders.validator_vote(SIGNER, CHAIN, EXPIRES, *args)
    by_address = builders.validator_vote(
        SIGNER, CHAIN, EXPIRES, args[0], OTHER.address, *args[2:]
    )
    assert by_address == by_key


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_signature_is_bound_to_the_signer(case: Case) -> None:
    raw = case.build(SIGNER, CHAIN, EXPIRES, *case.args)
    tx = decode_tx(raw)
    # The same body claimed by another signer must not verify.
    forged = raw.replace(SIGNER.public_key, OTHER.public_key, 1)
    assert forged != raw
    assert not decode_tx(forged).verify_signature()
    # The old signature on a body with a later expiry must not verify. The
    # signature is the last 64 bytes, so it can be swapped without re-encoding.
    later = case.build(SIGNER, CHAIN, EXPIRES + 1, *case.args)
    altered = decode_tx(later[:-64] + tx.signature)
    assert altered.expires_at == EXPIRES + 1
    assert not altered.verify_signature()


def test_builders_sign_deterministically() -> None:
    a = builders.transfer(SIGNER, CHAIN, EXPIRES, OTHER.address, 5, "coffee")
    b = builders.transfer(SIGNER, CHAIN, EXPIRES, OTHER.address, 5, "coffee")
    c = builders.transfer(SIGNER, CHAIN, EXPIRES, OTHER.address, 5, "coffee 2")
    assert a == b
    assert decode_tx(a).hash != decode_tx(c).hash


def test_optional_text_fields_default_to_empty() -> None:
    assert decode_tx(
        builders.set_account_frozen(SIGNER, CHAIN, EXPIRES, OTHER.address, False)
    ).payload == SetAccountFrozen(OTHER.public_key, False, "")
    assert decode_tx(
        builders.redeem(SIGNER, CHAIN, EXPIRES, OTHER.address, 1)
    ).payload == Redeem(OTHER.public_key, 1, "")
    assert decode_tx(
        builders.transfer(SIGNER, CHAIN, EXPIRES, OTHER.address, 1)
    ).payload == Transfer(OTHER.public_key, 1, "")


@given(
    amount=st.integers(min_value=1, max_value=10**12),
    memo=st.text(
        # Printable text: ASCII space is the only printable separator.
        st.characters(
            codec="utf-8", categories=["L", "N", "P", "S"], include_characters=" "
        ),
        max_size=30,
    ),
    expires_at=st.integers(min_value=0, max_value=2**63 - 1),
    seed=st.binary(min_size=32, max_size=32),
)
def test_transfer_round_trips_any_valid_fields(
    amount: int, memo: str, expires_at: int, seed: bytes
) -> None:
    key = Keypair.from_seed(seed)
    tx = decode_tx(
        builders.transfer(key, CHAIN, expires_at, OTHER.address, amount, memo)
    )
    assert tx.payload == Transfer(OTHER.public_key, amount, memo)
    assert tx.expires_at == expires_at
    assert tx.signer == key.public_key
    assert tx.verify_signature()


# --- refusals ----------------------------------------------------------------------


# (builder, arguments after the key, what the error names)
MALFORMED: list[tuple[Callable[..., bytes], tuple[Any, ...], str]] = [
    (builders.transfer, (CHAIN, EXPIRES, OTHER.address, True), "amount"),
    (builders.transfer, (CHAIN, EXPIRES, OTHER.address, 2**64), "encode"),
    (builders.transfer, (CHAIN, EXPIRES, OTHER.address, 1, "a\nb"), "memo"),
    (builders.transfer, (CHAIN, EXPIRES, bytes(31), 1), "32 bytes"),
    (builders.transfer, ("", EXPIRES, OTHER.address, 1), "chain_id"),
    (builders.transfer, ("c" * 65, EXPIRES, OTHER.address, 1), "chain_id"),
    (builders.transfer, (CHAIN, -1, OTHER.address, 1), "expires_at"),
    (builders.register_merchant, (CHAIN, EXPIRES, OTHER.address, "", 1, 1), "name"),
    (
        builders.register_merchant,
        (CHAIN, EXPIRES, OTHER.address, "x" * 65, 1, 1),
        "name",
    ),
    (builders.award_purchase, (CHAIN, EXPIRES, OTHER.address, "", 100), "order_id"),
    (
        builders.update_merchant,
        (CHAIN, EXPIRES, OTHER.address, "Shop", 1, 1, 1),
        "active",
    ),
    (
        builders.set_account_frozen,
        (CHAIN, EXPIRES, OTHER.address, True, "r" * 129),
        "reason",
    ),
    (builders.redeem, (CHAIN, EXPIRES, OTHER.address, 1.5), "amount"),
    (builders.transfer, (CHAIN, EXPIRES, OTHER.address, 1, "\ud800"), "encode"),
]


@pytest.mark.parametrize("build, args, message", MALFORMED)
def test_malformed_fields_raise_build_error(
    build: Callable[..., bytes], args: tuple[Any, ...], message: str
) -> None:
    with pytest.raises(BuildError, match=message):
        build(SIGNER, *args)


def test_bad_address_is_refused() -> None:
    with pytest.raises(AddressError):
        builders.transfer(SIGNER, CHAIN, EXPIRES, OTHER.address[:-1] + "x", 1)
    with pytest.raises(AddressError):
        builders.transfer(SIGNER, CHAIN, EXPIRES, " " + OTHER.address, 1)


def test_wrong_argument_types_are_refused() -> None:
    not_a_key: Any = bytearray(32)
    with pytest.raises(TypeError):
        builders.transfer(SIGNER, CHAIN, EXPIRES, not_a_key, 1)
    not_a_keypair: Any = SIGNER.seed
    with pytest.raises(TypeError):
        builders.transfer(not_a_keypair, CHAIN, EXPIRES, OTHER.address, 1)


def test_out_of_range_amounts_are_left_to_admission() -> None:
    # The ledger owns range rules and reports them with their own code, so a
    # builder produces the transaction and admission refuses it.
    for amount in (0, -5, 10**12 + 1):
        tx = decode_tx(builders.transfer(SIGNER, CHAIN, EXPIRES, OTHER.address, amount))
        assert tx.verify_signature()
        with pytest.raises(TxRejected) as info:
            check_amounts(tx)
        assert info.value.code is Code.AMOUNT_OUT_OF_RANGE
