"""The node's test-only switches (node.testing): off by default, refused on
any chain that is not a devnet, and doing exactly what they say when set."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

from consensus.messages import (
    PRECOMMIT,
    PREVOTE,
    CommitCertificate,
    encode_commit_message,
    encode_proposal_message,
)
from consensus.signer import SignerGuard
from consensus.sync import encode_status
from node import testing
from node.clock import DevnetClock, write_clock_offset
from node.config import (
    CONFIG_FILE,
    Config,
    ConfigError,
    TestingSection,
    check_devnet_only,
    load_config,
)
from node.service import Node
from tests.node_helpers import VALIDATOR, make_genesis

CHAIN = "perk-switches-1"


def signer(tmp_path) -> SignerGuard:
    return SignerGuard(tmp_path / "signer.json", VALIDATOR.seed)


def test_switches_are_off_and_not_written_out_by_default(tmp_path):
    config = Config(home=tmp_path)
    assert not config.testing.enabled
    assert "[testing]" not in config.to_toml()

    config.testing.record_consensus = True
    config.save()
    assert "[testing]" in (tmp_path / CONFIG_FILE).read_text()
    assert load_config(tmp_path).testing.record_consensus is True


@pytest.mark.parametrize(
    "setting, value",
    [
        ("crash_after_sign_step", "commit"),
        ("crash_after_sign_round", -2),
        ("miss_proposal_height", -1),
    ],
)
def test_bad_switch_values_are_refused(tmp_path, setting, value):
    config = Config(home=tmp_path)
    setattr(config.testing, setting, value)
    config.save()
    with pytest.raises(ConfigError, match=r"\[testing\]"):
        load_config(tmp_path)


def test_switches_are_refused_unless_the_chain_is_a_devnet(tmp_path):
    genesis = make_genesis(0)
    config = Config(home=tmp_path)
    config.testing.record_consensus = True
    with pytest.raises(ConfigError, match="not a devnet"):
        check_devnet_only(config, genesis)
    with pytest.raises(ConfigError, match="not a devnet"):
        Node(config, genesis, VALIDATOR.seed, manual_blocks=True)

    check_devnet_only(config, dataclasses.replace(genesis, devnet=True))
    check_devnet_only(Config(home=tmp_path), genesis)


def test_recorder_keeps_each_signed_message_once_and_survives_a_torn_tail(
    tmp_path,
):
    guard = signer(tmp_path)
    prevote = guard.sign_vote(CHAIN, PREVOTE, 3, 0, b"\x01" * 32)
    precommit = guard.sign_vote(CHAIN, PRECOMMIT, 3, 0, b"\x01" * 32)
    proposal = guard.sign_proposal(CHAIN, 4, 0, -1, b"\x02" * 32)
    certificate = CommitCertificate.from_votes([precommit])
    path = tmp_path / testing.RECORD_FILE

    recorder = testing.ConsensusRecorder(path)
    recorder.record("out", "vote", prevote.encode())
    recorder.record("in", "vote", prevote.encode())  # a repeat: not again
    recorder.record("in", "proposal", encode_proposal_message(proposal, b"b" * 4000))
    recorder.record("sync", "commit", encode_commit_message(certificate, b"block"))
    recorder.record("in", "status", b"not consensus")
    recorder.close()
    with open(path, "ab") as f:
        f.write(b"\x94\xa4vote")  # a record cut short by a kill

    entries = testing.read_consensus_record(path)
    assert [(e.kind, e.direction, e.message) for e in entries] == [
        ("vote", "out", prevote.encode()),
        ("proposal", "in", proposal.encode()),
        ("certificate", "sync", certificate.encode()),
    ]


def test_signed_head_refuses_what_is_not_a_message():
    assert testing.signed_head("proposal", b"") is None
    assert testing.signed_head("proposal", b"\x91\x01") is None
    assert testing.signed_head("commit", b"\x92\xc1") is None


def test_miss_proposal_drops_that_round_its_commits_and_tips_meanwhile(tmp_path):
    guard = signer(tmp_path)
    switches = TestingSection(miss_proposal_height=5, miss_proposal_round=1)

    def proposal(height: int, round_: int) -> bytes:
        signed = guard.sign_proposal(CHAIN, height, round_, -1, b"\x03" * 32)
        return encode_proposal_message(signed, b"block")

    def commit(height: int) -> bytes:
        vote = guard.sign_vote(CHAIN, PRECOMMIT, height, 2, b"\x03" * 32)
        return encode_commit_message(CommitCertificate.from_votes([vote]), b"block")

    at = (5, 1)
    assert not testing.misses(switches, "proposal", proposal(5, 0), at)
    assert testing.misses(switches, "proposal", proposal(5, 1), at)
    assert testing.misses(switches, "commit", commit(5), at)
    assert not testing.misses(switches, "commit", commit(6), at)
    assert not testing.misses(TestingSection(), "proposal", proposal(7, 0), at)

    # Peers' tips are not heard while the node is in the missed round...
    status = encode_status(5, b"\x05" * 32)
    assert testing.misses(switches, "status", status, (5, 1))
    assert testing.misses(switches, "status", status, (5, 0))
    assert not testing.misses(switches, "status", encode_status(4, b"\x04" * 32), at)
    # ...and are once it moved on.
    assert not testing.misses(switches, "status", status, (5, 2))
    assert not testing.misses(switches, "status", status, (6, 0))


def test_crash_after_sign_exits_only_at_its_step(tmp_path, monkeypatch):
    exits = []
    monkeypatch.setattr(os, "_exit", exits.append)
    guard = signer(tmp_path)
    assert testing.crash_after_sign(TestingSection()) is None

    on_signed = testing.crash_after_sign(
        TestingSection(crash_after_sign_height=7, crash_after_sign_step="precommit")
    )
    on_signed(guard.sign_vote(CHAIN, PREVOTE, 7, 0, b""))
    on_signed(guard.sign_proposal(CHAIN, 7, 1, -1, b"\x04" * 32))
    assert exits == []
    on_signed(guard.sign_vote(CHAIN, PRECOMMIT, 7, 1, b""))
    assert exits == [testing.CRASH_EXIT_CODE]


def test_a_clock_offset_shifts_the_clock_it_sits_on(tmp_path):
    base = iter(range(10_000, 10_000_000, 1_000))
    offset_file = tmp_path / "clock-offset.json"
    clock = DevnetClock(offset_file, base=lambda: next(base))
    assert clock() == 10_000  # no file: the base clock as it is

    write_clock_offset(offset_file, 5_000)
    assert clock() == 11_000 + 5_000
    write_clock_offset(offset_file, -5_000)
    assert json.loads(offset_file.read_text()) == {"offset_ms": -5_000}
    # Behind now: it stands still rather than go back...
    assert clock() == 16_000
    # ...until the shifted time passes what it last said.
    readings = [clock() for _ in range(10)]  # base 13_000 .. 22_000
    assert readings == [16_000] * 9 + [17_000]
