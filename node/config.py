"""Node configuration: `config.toml` inside a node home folder.

A home folder holds everything one node needs:

    HOME/config.toml     this file
    HOME/genesis.json    the chain's genesis
    HOME/node_key.pem    the node's Ed25519 key, PKCS#8 PEM, mode 0600; for a
                         validator it is also the consensus signing key, so it
                         must be protected like one
    HOME/node_cert.pem   the node's self-signed TLS certificate (from the key)
    HOME/data/           the LevelDB database
    HOME/consensus/      signer state and consensus write-ahead log

Every setting has a default that works on one machine; `perk init` writes
them all out so an operator sees what can be changed. Unknown keys are
refused, so a misspelt setting never silently does nothing. The `[testing]`
table is the exception: test-only switches (node.testing), written out only
when one is set, and refused on any chain that is not a devnet.
"""

from __future__ import annotations

import os
import tomllib
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from consensus.messages import MAX_COMMIT_MESSAGE_BYTES

# A commit message (the largest that must fit a frame) and the frame's own
# header and message-type envelope.
MIN_FRAME_BYTES = MAX_COMMIT_MESSAGE_BYTES + 64

CONFIG_FILE = "config.toml"
GENESIS_FILE = "genesis.json"
NODE_KEY_FILE = "node_key.pem"
NODE_CERT_FILE = "node_cert.pem"


class ConfigError(ValueError):
    """A configuration that cannot run a node; the message says which setting."""


@dataclass
class NodeSection:
    name: str = "node"
    # "validator" signs votes; "auditor" is read-only: it syncs, verifies and
    # serves the read API, and forwards submissions to validators.
    kind: str = "validator"
    log_level: str = "info"
    log_format: str = "kv"  # "kv" (key=value) or "json"
    # Devnet only: a shared clock file (node.clock); empty means the wall clock.
    # A node whose genesis is not marked devnet refuses to start with one.
    clock_file: str = ""


@dataclass
class ApiSection:
    host: str = "127.0.0.1"
    port: int = 8700
    max_body_bytes: int = 4 << 20
    max_batch: int = 2000
    max_wait_s: float = 30.0
    # Open connections at most; more are closed on accept (node.api_site).
    max_connections: int = 1024
    cors_origins: list[str] = field(default_factory=list)


@dataclass
class PeerEntry:
    key: str
    host: str
    port: int
    cert: str  # path to the peer's certificate, relative to the home folder


@dataclass
class P2PSection:
    host: str = "127.0.0.1"
    port: int = 26600
    # Must hold a whole block with its certificate (state.block.MAX_BLOCK_BYTES,
    # 4 MiB), a sync response (consensus.sync, 4 MiB) and a gossip batch
    # (node.peering); no more, since a peer can make the node read and copy
    # a frame of this size at will.
    max_frame_bytes: int = 5 << 20
    peers: list[PeerEntry] = field(default_factory=list)
    # Keys of read-only nodes allowed to connect besides the validators.
    observers: list[str] = field(default_factory=list)


@dataclass
class MempoolSection:
    max_txs: int = 100_000
    max_bytes: int = 64 << 20
    max_block_txs: int = 20_000


@dataclass
class ConsensusSection:
    block_interval_ms: int = 1000
    heartbeat_ms: int = 30_000
    timeout_propose_ms: int = 1000
    timeout_prevote_ms: int = 500
    timeout_precommit_ms: int = 500
    timeout_delta_ms: int = 500
    timeout_cap_ms: int = 10_000
    max_clock_drift_ms: int = 2000


CRASH_STEPS = ("propose", "prevote", "precommit")


@dataclass
class TestingSection:
    """Test-only switches, all off by default (node.testing says what each does).

    A node refuses to start with any of them set unless its genesis marks the
    chain as a devnet, like `[node] clock_file`.
    """

    __test__ = False  # a settings table, not a test class

    # Append every signed consensus message received or sent to a file in
    # the home folder.
    record_consensus: bool = False
    # Exit at once right after signing this step at this height (0: never);
    # round -1 means whichever round the node first signs it in.
    crash_after_sign_height: int = 0
    crash_after_sign_round: int = -1
    crash_after_sign_step: str = "prevote"
    # Drop incoming proposals of this height and round (height 0: never),
    # and commit gossip of that height, so the node moves rounds alone and
    # the block can only come by sync.
    miss_proposal_height: int = 0
    miss_proposal_round: int = 0
    # This node's own clock offset file ({"offset_ms": N}), applied on top of
    # whatever clock it reads otherwise; empty means no offset.
    clock_offset_file: str = ""

    @property
    def enabled(self) -> bool:
        return self != TestingSection()


@dataclass
class Config:
    node: NodeSection = field(default_factory=NodeSection)
    api: ApiSection = field(default_factory=ApiSection)
    p2p: P2PSection = field(default_factory=P2PSection)
    mempool: MempoolSection = field(default_factory=MempoolSection)
    consensus: ConsensusSection = field(default_factory=ConsensusSection)
    testing: TestingSection = field(default_factory=TestingSection)
    home: Path = Path(".")

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def consensus_dir(self) -> Path:
        return self.home / "consensus"

    @property
    def genesis_path(self) -> Path:
        return self.home / GENESIS_FILE

    @property
    def node_key_path(self) -> Path:
        return self.home / NODE_KEY_FILE

    @property
    def node_cert_path(self) -> Path:
        return self.home / NODE_CERT_FILE

    @property
    def clock_path(self) -> Path | None:
        if not self.node.clock_file:
            return None
        return (self.home / self.node.clock_file).resolve()

    @property
    def clock_offset_path(self) -> Path | None:
        if not self.testing.clock_offset_file:
            return None
        return (self.home / self.testing.clock_offset_file).resolve()

    def to_toml(self) -> str:
        doc = {
            "node": asdict(self.node),
            "api": asdict(self.api),
            "p2p": asdict(self.p2p),
            "mempool": asdict(self.mempool),
            "consensus": asdict(self.consensus),
        }
        if self.testing.enabled:
            doc["testing"] = asdict(self.testing)
        return tomli_w.dumps(doc)

    def save(self) -> None:
        (self.home / CONFIG_FILE).write_text(self.to_toml())


def _section(cls, doc: Any, name: str):
    if not isinstance(doc, dict):
        raise ConfigError(f"[{name}] must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = set(doc) - set(known)
    if unknown:
        raise ConfigError(f"[{name}] unknown settings: {sorted(unknown)}")
    values = {}
    # Declared types rather than a default instance: a peer entry has no
    # defaults, every field of it must be given.
    hints = typing.get_type_hints(cls)
    for key, value in doc.items():
        expected = typing.get_origin(hints[key]) or hints[key]
        if expected is float and type(value) is int:
            value = float(value)
        if type(value) is not expected:
            raise ConfigError(
                f"[{name}] {key} must be {expected.__name__}, "
                f"not {type(value).__name__}"
            )
        values[key] = value
    missing = [
        f.name
        for f in fields(cls)
        if f.name not in values
        and f.default is MISSING
        and f.default_factory is MISSING
    ]
    if missing:
        raise ConfigError(f"[{name}] missing settings: {missing}")
    return cls(**values)


def load_config(home: str | os.PathLike) -> Config:
    """Read HOME/config.toml; a missing file means all defaults."""
    home = Path(home)
    path = home / CONFIG_FILE
    doc: dict = {}
    if path.exists():
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from None
    sections = {"node", "api", "p2p", "mempool", "consensus", "testing"}
    unknown = set(doc) - sections
    if unknown:
        raise ConfigError(f"unknown sections: {sorted(unknown)}")

    p2p_doc = dict(doc.get("p2p", {}))
    peer_docs = p2p_doc.pop("peers", [])
    config = Config(
        node=_section(NodeSection, doc.get("node", {}), "node"),
        api=_section(ApiSection, doc.get("api", {}), "api"),
        p2p=_section(P2PSection, p2p_doc, "p2p"),
        mempool=_section(MempoolSection, doc.get("mempool", {}), "mempool"),
        consensus=_section(ConsensusSection, doc.get("consensus", {}), "consensus"),
        testing=_section(TestingSection, doc.get("testing", {}), "testing"),
        home=home,
    )
    if not isinstance(peer_docs, list):
        raise ConfigError("[p2p] peers must be a list of tables")
    config.p2p.peers = [
        _section(PeerEntry, p, f"p2p.peers[{i}]") for i, p in enumerate(peer_docs)
    ]
    validate(config)
    return config


def validate(config: Config) -> None:
    if config.node.kind not in ("validator", "auditor"):
        raise ConfigError("[node] kind must be 'validator' or 'auditor'")
    if config.node.log_format not in ("kv", "json"):
        raise ConfigError("[node] log_format must be 'kv' or 'json'")
    for section, name in ((config.api, "api"), (config.p2p, "p2p")):
        if not 0 <= section.port <= 65535:
            raise ConfigError(f"[{name}] port must be 0..65535")
    if config.api.max_body_bytes < 1024:
        raise ConfigError("[api] max_body_bytes must be at least 1024")
    if config.mempool.max_txs < 1 or config.mempool.max_bytes < 1024:
        raise ConfigError("[mempool] limits must be positive")
    if config.p2p.max_frame_bytes < MIN_FRAME_BYTES:
        # Smaller, and a full block with its certificate could never be sent
        # or synced: the node would stall at the first full block.
        raise ConfigError(
            f"[p2p] max_frame_bytes must be at least {MIN_FRAME_BYTES} "
            "(a full block with its commit certificate)"
        )
    c = config.consensus
    if c.block_interval_ms < 1 or c.timeout_cap_ms < c.timeout_propose_ms:
        raise ConfigError("[consensus] intervals must be positive, cap >= timeouts")
    t = config.testing
    if t.crash_after_sign_step not in CRASH_STEPS:
        raise ConfigError(
            f"[testing] crash_after_sign_step must be one of {', '.join(CRASH_STEPS)}"
        )
    if (
        min(t.crash_after_sign_height, t.miss_proposal_height, t.miss_proposal_round)
        < 0
    ):
        raise ConfigError("[testing] heights and rounds must not be negative")
    if t.crash_after_sign_round < -1:
        raise ConfigError("[testing] crash_after_sign_round must be -1 (any) or more")


def check_devnet_only(config: Config, genesis) -> None:
    """Refuse the devnet-only controls (a clock file, test switches) unless the
    genesis marks the chain as a devnet: they must never reach a real chain."""
    if genesis.devnet:
        return
    if config.node.clock_file:
        raise ConfigError(
            f"[node] clock_file is set but chain {genesis.chain_id!r} is not a "
            "devnet: a controllable clock is refused on any other chain"
        )
    if config.testing.enabled:
        raise ConfigError(
            f"[testing] switches are set but chain {genesis.chain_id!r} is not a "
            "devnet: test-only switches are refused on any other chain"
        )


# --- the node key --------------------------------------------------------------------


def write_node_key(path: Path, seed: bytes) -> None:
    """Write the node's key as PKCS#8 PEM, mode 0600; never replace one."""
    from p2p.identity import NodeIdentity
    from p2p.identity import write_node_key as write_pem

    if Path(path).exists():
        raise ConfigError(f"node key {path} exists already; refusing to replace it")
    write_pem(path, NodeIdentity(seed))


def read_node_key(path: Path) -> bytes:
    """The node's 32-byte Ed25519 seed."""
    from p2p.identity import read_node_key as read_pem

    try:
        return read_pem(path).seed
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read node key {path}: {exc}") from None
