"""The signer guard: one signature per step, never backwards, across restarts."""

from __future__ import annotations

import pytest

from consensus.messages import NIL, PRECOMMIT, PREVOTE
from consensus.signer import (
    STEP_PRECOMMIT,
    STEP_PREVOTE,
    STEP_PROPOSE,
    DoubleSignRefused,
    SignerGuard,
    SignerStateError,
)

CHAIN = "perk-test-1"
SEED = bytes([7]) * 32
A = b"\xaa" * 32
B = b"\xbb" * 32


@pytest.fixture
def path(tmp_path):
    return tmp_path / "keys" / "signer.state"


def test_missing_file_means_never_signed(path):
    guard = SignerGuard(path, SEED)
    assert guard.last is None
    assert not path.exists()


def test_signing_is_recorded_before_the_signature_is_returned(path):
    guard = SignerGuard(path, SEED)
    vote = guard.sign_vote(CHAIN, PREVOTE, 5, 1, A)
    vote.verify(CHAIN)
    # The file alone, read by a fresh guard, already holds this signature.
    last = SignerGuard(path, SEED).last
    assert (last.height, last.round, last.step, last.block_hash) == (
        5,
        1,
        STEP_PREVOTE,
        A,
    )
    assert last.signature == vote.signature
    assert not path.with_name(path.name + ".tmp").exists()


def test_the_same_message_again_gets_the_recorded_signature(path):
    guard = SignerGuard(path, SEED)
    first = guard.sign_vote(CHAIN, PRECOMMIT, 5, 1, A)
    again = guard.sign_vote(CHAIN, PRECOMMIT, 5, 1, A)
    assert again == first
    restarted = SignerGuard(path, SEED).sign_vote(CHAIN, PRECOMMIT, 5, 1, A)
    assert restarted == first


def test_another_block_at_the_same_step_is_refused_naming_both(path):
    guard = SignerGuard(path, SEED)
    guard.sign_vote(CHAIN, PREVOTE, 5, 1, A)
    with pytest.raises(DoubleSignRefused) as refused:
        guard.sign_vote(CHAIN, PREVOTE, 5, 1, B)
    text = str(refused.value)
    assert "prevote h=5 r=1 block=bbbbbbbb" in text
    assert "already signed prevote h=5 r=1 block=aaaaaaaa" in text
    assert refused.value.requested.block_hash == B
    assert refused.value.last.block_hash == A
    # Nil is a different value too.
    with pytest.raises(DoubleSignRefused):
        guard.sign_vote(CHAIN, PREVOTE, 5, 1, NIL)


def test_positions_before_the_last_are_refused(path):
    guard = SignerGuard(path, SEED)
    guard.sign_vote(CHAIN, PRECOMMIT, 5, 1, A)
    for height, round, step in [
        (5, 1, STEP_PREVOTE),
        (5, 0, STEP_PRECOMMIT),
        (4, 9, 3),
    ]:
        with pytest.raises(DoubleSignRefused, match="before the last"):
            guard.sign(height, round, step, A, b"message")
    # Forward is fine: a later round, then a later height.
    guard.sign_proposal(CHAIN, 5, 2, 1, A)
    guard.sign_vote(CHAIN, PREVOTE, 5, 2, A)
    guard.sign_vote(CHAIN, PREVOTE, 6, 0, NIL)
    assert guard.last.order == (6, 0, STEP_PREVOTE)


def test_refusals_survive_a_restart(path):
    SignerGuard(path, SEED).sign_proposal(CHAIN, 3, 0, -1, A)
    guard = SignerGuard(path, SEED)
    assert guard.last.step == STEP_PROPOSE
    with pytest.raises(DoubleSignRefused):
        guard.sign_proposal(CHAIN, 3, 0, -1, B)
    with pytest.raises(DoubleSignRefused):
        guard.sign_vote(CHAIN, PRECOMMIT, 2, 0, A)


def test_same_block_in_a_different_message_is_refused(path):
    guard = SignerGuard(path, SEED)
    guard.sign_proposal(CHAIN, 3, 2, -1, A)
    with pytest.raises(DoubleSignRefused, match="different message"):
        guard.sign_proposal(CHAIN, 3, 2, 1, A)
    with pytest.raises(DoubleSignRefused, match="different message"):
        guard.sign_proposal("perk-other-1", 3, 2, -1, A)


def test_damaged_state_file_is_an_error_not_a_fresh_start(path):
    SignerGuard(path, SEED).sign_vote(CHAIN, PREVOTE, 1, 0, A)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(SignerStateError):
        SignerGuard(path, SEED)
    path.write_bytes(b"")
    with pytest.raises(SignerStateError):
        SignerGuard(path, SEED)


def test_precommit_step_order(path):
    guard = SignerGuard(path, SEED)
    guard.sign_proposal(CHAIN, 1, 0, -1, A)
    guard.sign_vote(CHAIN, PREVOTE, 1, 0, A)
    guard.sign_vote(CHAIN, PRECOMMIT, 1, 0, A)
    assert guard.last.step == STEP_PRECOMMIT
    with pytest.raises(DoubleSignRefused):
        guard.sign_vote(CHAIN, PREVOTE, 1, 0, A)


def test_bad_seed_is_refused(path):
    with pytest.raises(ValueError):
        SignerGuard(path, b"short")
