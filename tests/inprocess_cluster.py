"""Several real nodes in one process, for tests that reach inside a node.

Each node is a full `node.service.Node` with its own home folder, database,
TLS identity, API and consensus engine, connected to the others over real
TLS on 127.0.0.1. Keeping them in one event loop lets a test hand a crafted
message straight to one node's engine (for example two conflicting votes)
and then observe the whole network's reaction through the public API of the
nodes.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from client.keys import Keypair
from node.config import Config, PeerEntry
from node.service import Node
from p2p.identity import NodeIdentity, write_certificate
from state.genesis import Genesis, parse_genesis

CHAIN_ID = "perk-inproc-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class InProcessCluster:
    """`validators` validator nodes plus `spares`: nodes that run (as
    validators by configuration) without being in the genesis set."""

    def __init__(self, root: Path, validators: int = 4, spares: int = 0):
        self.root = root
        self.admin = Keypair.from_seed(b"\x01" * 32)
        self.keys = [Keypair.from_seed(bytes([10 + i]) * 32) for i in range(validators)]
        self.spare_keys = [
            Keypair.from_seed(bytes([60 + i]) * 32) for i in range(spares)
        ]
        self.genesis: Genesis = parse_genesis(
            {
                "chain_id": CHAIN_ID,
                "genesis_time_ms": time.time_ns() // 1_000_000 - 1000,
                "validators": [
                    {"name": f"v{i + 1}", "key": k.address}
                    for i, k in enumerate(self.keys)
                ],
                "admins": [self.admin.address],
                "program": {"min_validators": 3},
            }
        )
        all_keys = self.keys + self.spare_keys
        self.ports = [free_port() for _ in all_keys]
        for i, key in enumerate(all_keys):
            home = root / f"n{i + 1}"
            home.mkdir()
            write_certificate(home / "node_cert.pem", NodeIdentity(key.seed))
        self.nodes = [self.make_node(i, all_keys) for i in range(len(all_keys))]

    def make_node(self, i: int, all_keys: list[Keypair]) -> Node:
        config = Config(home=self.root / f"n{i + 1}")
        config.node.name = f"n{i + 1}"
        config.api.port = 0
        config.p2p.port = self.ports[i]
        config.consensus.block_interval_ms = 200
        config.consensus.heartbeat_ms = 1000
        config.consensus.timeout_propose_ms = 600
        config.p2p.peers = [
            PeerEntry(
                all_keys[j].address,
                "127.0.0.1",
                self.ports[j],
                str(self.root / f"n{j + 1}" / "node_cert.pem"),
            )
            for j in range(len(all_keys))
            if j != i
        ]
        return Node(config, self.genesis, all_keys[i].seed)

    async def start(self, nodes: list[Node] | None = None) -> None:
        await asyncio.gather(*(n.start() for n in nodes or self.nodes))

    async def stop(self) -> None:
        await asyncio.gather(*(n.stop() for n in self.nodes if n.started))

    async def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                heights = {n.config.node.name: n.store.height for n in self.nodes}
                raise AssertionError(f"timed out waiting for {what}; heights {heights}")
            await asyncio.sleep(0.05)

    async def wait_for_height(self, height: int, nodes=None, timeout=30.0) -> None:
        nodes = nodes or [n for n in self.nodes if n.started]
        await self.wait_for(
            lambda: all(n.store.height >= height for n in nodes),
            timeout,
            f"height {height}",
        )

    def expiry(self) -> int:
        return max(n.store.time_ms for n in self.nodes if n.started) // 1000 + 600

    async def submit_final(self, node: Node, raw: bytes, timeout: float = 20.0):
        admission = await node.submit(raw)
        status = await node.wait_final(admission.tx.hash, timeout)
        assert status is not None and status.status == "committed", status
        return status
