"""The safety properties of a run, checked over what the nodes stored and said.

Consensus is safe when no two honest nodes ever finalise different blocks at
one height, whatever the network and the clocks did. At the end of a run the
harness gathers what can show that it was not:

- `blocks`: every block each reachable node stores, with its certificate;
- `messages`: every signed proposal, vote and commit certificate any node
  received or sent, as recorded by the `[testing] record_consensus` switch
  (node.testing), from every node that ever ran;
- `final_txs`: every transaction a client was told is final, and where.

`find_violations` is a pure function of those `Observations`; each problem it
returns names the height, the nodes and both sides of a disagreement:

- a fork: two different blocks committed at one height, whether stored by
  nodes or named by a recorded certificate that a quorum of validators
  signed;
- a node whose chain is not a chain: a block whose parent hash is not the
  block below it, or whose certificate is for another block or height;
- state roots that differ at one height between nodes;
- a double sign: one validator key signing two different block hashes (nil
  counts as one) for the same height, round and step. Every signature is
  verified first, so a forged or malformed message never counts against the
  key it names; those are only counted;
- a final transaction that is missing from, or repeated in, the chain of a
  node that has its height.

`check_safety` raises AssertionError listing every violation, and otherwise
returns a short report of what was checked.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from consensus.messages import (
    PRECOMMIT,
    CommitCertificate,
    MalformedMessage,
    decode_certificate,
    decode_proposal,
    decode_vote,
    quorum,
)
from state.block import decode_block
from state.codec import sha256
from state.votes import signature_ok

MAX_LISTED = 30


@dataclass(frozen=True)
class StoredBlock:
    """A block as one node stores it, reduced to what the checks need."""

    height: int
    hash: bytes
    parent_hash: bytes
    state_root: bytes
    tx_hashes: tuple[bytes, ...]
    certificate: bytes  # the encoded commit certificate stored with it

    @classmethod
    def from_raw(cls, block_bytes: bytes, certificate: bytes) -> StoredBlock:
        block = decode_block(block_bytes)
        return cls(
            block.height,
            block.hash,
            block.header.parent_hash,
            block.header.state_root,
            tuple(sha256(tx) for tx in block.txs),
            certificate,
        )


@dataclass(frozen=True)
class RecordedMessage:
    """A signed consensus message as a node recorded it."""

    node: str
    kind: str  # "proposal" | "vote" | "certificate"
    message: bytes


@dataclass(frozen=True)
class FinalTx:
    """A transaction a client was told is final: at `height`, via `via`."""

    tx_hash: bytes
    height: int | None
    via: str


@dataclass
class Observations:
    chain_id: str
    # The validator keys; a recorded certificate counts as a commit when a
    # quorum of them signed it.
    validators: frozenset[bytes]
    blocks: dict[str, dict[int, StoredBlock]] = field(default_factory=dict)
    messages: list[RecordedMessage] = field(default_factory=list)
    final_txs: list[FinalTx] = field(default_factory=list)


@dataclass(frozen=True)
class Statement:
    """One validly signed claim of one key: at (height, round, step), this block."""

    signer: bytes
    height: int
    round: int
    step: str  # "propose" | "prevote" | "precommit"
    block_hash: bytes
    where: str

    @property
    def slot(self) -> tuple[bytes, int, int, str]:
        return (self.signer, self.height, self.round, self.step)


@dataclass
class SafetyReport:
    nodes: int = 0
    heights: int = 0
    statements: int = 0
    certificates: int = 0
    unverified: int = 0
    malformed: int = 0
    final_txs: int = 0
    violations: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"nodes={self.nodes} heights={self.heights} "
            f"statements={self.statements} certificates={self.certificates} "
            f"unverified={self.unverified} malformed={self.malformed} "
            f"final_txs={self.final_txs} violations={len(self.violations)}"
        )


def check_safety(observations: Observations) -> SafetyReport:
    """Raise AssertionError listing every violation; else what was checked."""
    report = find_violations(observations)
    problems = report.violations
    assert not problems, (
        f"safety violated ({report.describe()}):\n"
        + "\n".join(problems[:MAX_LISTED])
        + (
            f"\n... and {len(problems) - MAX_LISTED} more"
            if len(problems) > MAX_LISTED
            else ""
        )
    )
    return report


def find_violations(observations: Observations) -> SafetyReport:
    report = SafetyReport(nodes=len(observations.blocks))
    verifier = Verifier(observations.chain_id)
    statements = list(stored_statements(observations, verifier))
    statements += recorded_statements(observations, verifier, report)
    certified = recorded_commits(observations, verifier, report)

    report.heights = len({h for blocks in observations.blocks.values() for h in blocks})
    report.statements = len({(s.slot, s.block_hash) for s in statements})
    report.unverified += verifier.failures
    report.final_txs = len(observations.final_txs)
    report.violations = [
        *forks(observations, certified),
        *broken_links(observations),
        *state_root_disagreements(observations),
        *double_signs(statements),
        *lost_final_txs(observations),
    ]
    return report


# --- signatures ----------------------------------------------------------------------


class Verifier:
    """Ed25519 checks of consensus messages, each distinct one verified once."""

    def __init__(self, chain_id: str):
        self.chain_id = chain_id
        self.failures = 0
        self._known: dict[tuple[bytes, bytes, bytes], bool] = {}

    def check(self, key: bytes, message: bytes, signature: bytes) -> bool:
        entry = (key, message, signature)
        ok = self._known.get(entry)
        if ok is None:
            ok = self._known[entry] = signature_ok(key, message, signature)
            if not ok:
                self.failures += 1
        return ok

    def certificate_signers(self, certificate: CommitCertificate) -> list[bytes]:
        """The keys whose precommit in `certificate` verifies."""
        return [
            vote.validator
            for vote in certificate.precommits()
            if self.check(
                vote.validator, vote.sign_bytes(self.chain_id), vote.signature
            )
        ]


def precommit_statements(
    certificate: CommitCertificate, verifier: Verifier, where: str
) -> Iterable[Statement]:
    for key in verifier.certificate_signers(certificate):
        yield Statement(
            key,
            certificate.height,
            certificate.round,
            "precommit",
            certificate.block_hash,
            where,
        )


def stored_statements(
    observations: Observations, verifier: Verifier
) -> Iterable[Statement]:
    """The precommits inside every stored certificate."""
    seen: set[bytes] = set()
    for node, blocks in observations.blocks.items():
        for height, block in blocks.items():
            if block.certificate in seen:
                continue
            seen.add(block.certificate)
            try:
                certificate = decode_certificate(block.certificate)
            except MalformedMessage:
                continue  # broken_links reports it
            yield from precommit_statements(
                certificate, verifier, f"certificate stored by {node} at {height}"
            )


def recorded_statements(
    observations: Observations, verifier: Verifier, report: SafetyReport
) -> list[Statement]:
    """Every validly signed proposal, vote and certificate precommit recorded."""
    statements: list[Statement] = []
    seen: set[tuple[str, bytes]] = set()
    for recorded in observations.messages:
        if (recorded.kind, recorded.message) in seen:
            continue
        seen.add((recorded.kind, recorded.message))
        where = f"{recorded.kind} recorded by {recorded.node}"
        try:
            if recorded.kind == "proposal":
                p = decode_proposal(recorded.message)
                if verifier.check(
                    p.proposer, p.sign_bytes(verifier.chain_id), p.signature
                ):
                    statements.append(
                        Statement(
                            p.proposer,
                            p.height,
                            p.round,
                            "propose",
                            p.block_hash,
                            where,
                        )
                    )
            elif recorded.kind == "vote":
                v = decode_vote(recorded.message)
                if verifier.check(
                    v.validator, v.sign_bytes(verifier.chain_id), v.signature
                ):
                    step = "precommit" if v.vote_type == PRECOMMIT else "prevote"
                    statements.append(
                        Statement(
                            v.validator, v.height, v.round, step, v.block_hash, where
                        )
                    )
            elif recorded.kind == "certificate":
                certificate = decode_certificate(recorded.message)
                statements += precommit_statements(certificate, verifier, where)
        except MalformedMessage:
            report.malformed += 1
    return statements


def recorded_commits(
    observations: Observations, verifier: Verifier, report: SafetyReport
) -> dict[int, dict[bytes, list[str]]]:
    """Blocks that a recorded certificate proves committed: height -> block
    hash -> the nodes that recorded such a certificate."""
    needed = quorum(len(observations.validators))
    committed: dict[int, dict[bytes, list[str]]] = defaultdict(
        lambda: defaultdict(list)
    )
    verdicts: dict[bytes, CommitCertificate | None] = {}
    for recorded in observations.messages:
        if recorded.kind != "certificate":
            continue
        if recorded.message not in verdicts:
            verdicts[recorded.message] = quorum_certificate(
                recorded.message, observations.validators, needed, verifier
            )
        certificate = verdicts[recorded.message]
        if certificate is not None:
            nodes = committed[certificate.height][certificate.block_hash]
            if recorded.node not in nodes:
                nodes.append(recorded.node)
    report.certificates = sum(1 for c in verdicts.values() if c is not None)
    return committed


def quorum_certificate(
    message: bytes, validators: frozenset[bytes], needed: int, verifier: Verifier
) -> CommitCertificate | None:
    try:
        certificate = decode_certificate(message)
    except MalformedMessage:
        return None
    signers = set(verifier.certificate_signers(certificate)) & validators
    return certificate if len(signers) >= needed else None


# --- the checks ----------------------------------------------------------------------


def forks(
    observations: Observations, certified: dict[int, dict[bytes, list[str]]]
) -> list[str]:
    """Heights with more than one committed block, stored or certified."""
    by_height: dict[int, dict[bytes, list[str]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for node, blocks in observations.blocks.items():
        for height, block in blocks.items():
            by_height[height][block.hash].append(f"stored by {node}")
    for height, hashes in certified.items():
        for block_hash, nodes in hashes.items():
            by_height[height][block_hash].append(
                f"certified in messages recorded by {','.join(sorted(nodes))}"
            )
    return [
        f"fork at height {height}: "
        + "; ".join(
            f"{short(block_hash)} {', '.join(sources)}"
            for block_hash, sources in hashes.items()
        )
        for height, hashes in sorted(by_height.items())
        if len(hashes) > 1
    ]


def broken_links(observations: Observations) -> list[str]:
    """Blocks not linked to their parent or not certified as themselves."""
    problems = []
    for node, blocks in observations.blocks.items():
        for height, block in sorted(blocks.items()):
            where = f"{node} height {height}"
            if block.height != height:
                problems.append(f"{where}: holds a block of height {block.height}")
            parent = blocks.get(height - 1)
            if parent is not None and block.parent_hash != parent.hash:
                problems.append(
                    f"{where}: parent {short(block.parent_hash)} is not block "
                    f"{height - 1} {short(parent.hash)}"
                )
            try:
                certificate = decode_certificate(block.certificate)
            except MalformedMessage as exc:
                problems.append(f"{where}: certificate malformed: {exc}")
                continue
            if (certificate.height, certificate.block_hash) != (height, block.hash):
                problems.append(
                    f"{where}: certificate is for height {certificate.height} block "
                    f"{short(certificate.block_hash)}, not {short(block.hash)}"
                )
    return problems


def state_root_disagreements(observations: Observations) -> list[str]:
    roots: dict[int, dict[bytes, list[str]]] = defaultdict(lambda: defaultdict(list))
    for node, blocks in observations.blocks.items():
        for height, block in blocks.items():
            roots[height][block.state_root].append(node)
    return [
        f"state roots differ at height {height}: "
        + "; ".join(f"{short(root)} on {','.join(nodes)}" for root, nodes in r.items())
        for height, r in sorted(roots.items())
        if len(r) > 1
    ]


def double_signs(statements: Iterable[Statement]) -> list[str]:
    """Keys that signed two different blocks for one height, round and step."""
    by_slot: dict[tuple, dict[bytes, str]] = defaultdict(dict)
    for statement in statements:
        by_slot[statement.slot].setdefault(statement.block_hash, statement.where)
    return [
        f"double sign by {signer[:4].hex()}: {step} h={height} r={round_} for "
        + "; ".join(f"{short(h)} ({where})" for h, where in blocks.items())
        for (signer, height, round_, step), blocks in sorted(by_slot.items())
        if len(blocks) > 1
    ]


def lost_final_txs(observations: Observations) -> list[str]:
    """Final transactions not exactly once, at their height, in every chain
    that reaches that height."""
    wanted = {tx.tx_hash for tx in observations.final_txs}
    found: dict[str, dict[bytes, list[int]]] = {}
    tips: dict[str, int] = {}
    for node, blocks in observations.blocks.items():
        found[node] = defaultdict(list)
        tips[node] = max(blocks, default=0)
        for height, block in blocks.items():
            for tx_hash in block.tx_hashes:
                if tx_hash in wanted:
                    found[node][tx_hash].append(height)
    problems = []
    for tx in observations.final_txs:
        name = f"final tx {short(tx.tx_hash)} (via {tx.via}, height {tx.height})"
        reach = tx.height or 1
        covering = [node for node, tip in tips.items() if tip >= reach]
        if not covering:
            problems.append(f"{name}: no node's chain reaches its height")
        for node in found:
            heights = sorted(found[node].get(tx.tx_hash, []))
            if node in covering and not heights:
                problems.append(f"{name}: missing from {node}'s chain")
            elif len(heights) > 1:
                problems.append(f"{name}: {node} holds it at heights {heights}")
            elif heights and tx.height is not None and heights != [tx.height]:
                problems.append(f"{name}: {node} holds it at height {heights[0]}")
    return problems


def short(value: bytes) -> str:
    return value[:8].hex() if value else "nil"
