"""What every node says about the chain, fetched block by block, and the checks
a user would make on it.

`fetch_chains` reads `GET /v1/blocks/{h}` for every height of every node
concurrently. The checks are pure functions of what was fetched, so a failing
one names the node, the height and both sides of a disagreement:

- `check_consistent`: one block hash per height anywhere, the same state root
  at every height two nodes share, each block linked to its parent, and a
  commit certificate for exactly that block and height;
- `check_no_conflicting_signatures`: no validator key appears in commit
  certificates of two different blocks at one height;
- `signers_at` / `heights_signed_by`: who signed the commits a node stores.

`fetch_stored_blocks` reads the raw blocks instead (`GET /v1/blocks/{h}/raw`),
cheaper for long chains, as the safety checker (harness.safety) wants them.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field

from client.http import AsyncClient
from consensus.messages import CommitCertificate, decode_certificate
from state.address import address_of
from tests.harness.safety import StoredBlock

# Block reads in flight per node at once; well under the API's per-client limit.
FETCH_CONCURRENCY = 16
FETCH_TIMEOUT_S = 10.0


@dataclass
class NodeChain:
    """The blocks one node served, by height, with their decoded certificates."""

    name: str
    tip: int
    blocks: dict[int, dict] = field(default_factory=dict)
    certificates: dict[int, CommitCertificate] = field(default_factory=dict)

    def hash_at(self, height: int) -> str:
        return self.blocks[height]["hash"]

    def state_root_at(self, height: int) -> str:
        return self.blocks[height]["header"]["state_root"]


Chains = dict[str, NodeChain]


def fetch_chains(urls: dict[str, str], from_height: int = 1) -> Chains:
    """Every block from `from_height` to each node's tip, from every node."""

    async def fetch_all() -> list[NodeChain]:
        return await asyncio.gather(
            *(fetch_chain(name, url, from_height) for name, url in urls.items())
        )

    return {chain.name: chain for chain in asyncio.run(fetch_all())}


async def fetch_chain(name: str, url: str, from_height: int) -> NodeChain:
    async with AsyncClient(url, timeout=FETCH_TIMEOUT_S) as api:
        tip = (await api.status())["height"]
        chain = NodeChain(name, tip)
        heights = list(range(max(from_height, 1), tip + 1))
        for start in range(0, len(heights), FETCH_CONCURRENCY):
            batch = heights[start : start + FETCH_CONCURRENCY]
            docs = await asyncio.gather(*(api.block(h) for h in batch))
            for height, doc in zip(batch, docs, strict=True):
                chain.blocks[height] = doc
                chain.certificates[height] = decode_certificate(
                    bytes.fromhex(doc["commit"])
                )
    return chain


def fetch_stored_blocks(urls: dict[str, str]) -> dict[str, dict[int, StoredBlock]]:
    """Every block from height 1 to each node's tip, from every node, raw."""

    async def fetch_all() -> list[dict[int, StoredBlock]]:
        return await asyncio.gather(*(fetch_raw_chain(url) for url in urls.values()))

    return dict(zip(urls, asyncio.run(fetch_all()), strict=True))


async def fetch_raw_chain(url: str) -> dict[int, StoredBlock]:
    blocks: dict[int, StoredBlock] = {}
    async with AsyncClient(url, timeout=FETCH_TIMEOUT_S) as api:
        tip = (await api.status())["height"]
        heights = list(range(1, tip + 1))
        for start in range(0, len(heights), FETCH_CONCURRENCY):
            batch = heights[start : start + FETCH_CONCURRENCY]
            raws = await asyncio.gather(*(api.raw_block(h) for h in batch))
            for height, (block, commit, _) in zip(batch, raws, strict=True):
                blocks[height] = StoredBlock.from_raw(block, commit)
    return blocks


def check_consistent(chains: Chains) -> None:
    """Raise AssertionError unless the nodes tell one and the same history."""
    problems: list[str] = []
    for chain in chains.values():
        problems += check_one_node(chain)
    by_height: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    roots: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for chain in chains.values():
        for height in chain.blocks:
            by_height[height][chain.hash_at(height)].append(chain.name)
            roots[height][chain.state_root_at(height)].append(chain.name)
    for height in sorted(by_height):
        if len(by_height[height]) > 1:
            problems.append(f"fork at height {height}: {describe(by_height[height])}")
        if len(roots[height]) > 1:
            problems.append(
                f"state roots differ at height {height}: {describe(roots[height])}"
            )
    tips = ", ".join(f"{c.name}={c.tip}" for c in chains.values())
    assert not problems, f"nodes disagree (tips {tips}):\n" + "\n".join(problems[:20])


def check_one_node(chain: NodeChain) -> list[str]:
    """Each block at its height, linked to its parent, certified as itself."""
    problems = []
    for height, doc in sorted(chain.blocks.items()):
        where = f"{chain.name} height {height}"
        if doc["height"] != height or doc["header"]["height"] != height:
            problems.append(f"{where}: served block of height {doc['height']}")
        parent = chain.blocks.get(height - 1)
        if parent is not None and doc["header"]["parent_hash"] != parent["hash"]:
            problems.append(
                f"{where}: parent_hash {short(doc['header']['parent_hash'])} is not "
                f"block {height - 1} {short(parent['hash'])}"
            )
        certificate = chain.certificates[height]
        if certificate.height != height or certificate.block_hash.hex() != doc["hash"]:
            problems.append(
                f"{where}: certificate is for height {certificate.height} block "
                f"{short(certificate.block_hash.hex())}, not {short(doc['hash'])}"
            )
    return problems


def check_no_conflicting_signatures(chains: Chains) -> None:
    """No validator signed commits of two different blocks at one height."""
    signed: dict[tuple[int, bytes], dict[str, list[str]]] = defaultdict(
        lambda: defaultdict(list)
    )
    for chain in chains.values():
        for height, certificate in chain.certificates.items():
            for key in certificate.validators:
                signed[(height, key)][certificate.block_hash.hex()].append(chain.name)
    conflicts = [
        f"{address_of(key)} signed {len(blocks)} blocks at height {height}: "
        f"{describe(blocks)}"
        for (height, key), blocks in sorted(signed.items())
        if len(blocks) > 1
    ]
    assert not conflicts, "conflicting commit signatures:\n" + "\n".join(conflicts)


def signers_at(chains: Chains, height: int, exclude: str = "") -> set[bytes]:
    """Keys in the certificates of `height` as stored by the nodes (but one)."""
    keys: set[bytes] = set()
    for chain in chains.values():
        if chain.name != exclude and height in chain.certificates:
            keys.update(chain.certificates[height].validators)
    return keys


def heights_signed_by(chains: Chains, key: bytes, exclude: str = "") -> list[int]:
    """Heights whose stored certificate (on a node other than `exclude`)
    carries `key`'s precommit."""
    heights = {
        height
        for chain in chains.values()
        if chain.name != exclude
        for height, certificate in chain.certificates.items()
        if key in certificate.validators
    }
    return sorted(heights)


def describe(groups: dict[str, list[str]]) -> str:
    return "; ".join(
        f"{short(value)} on {','.join(names)}" for value, names in groups.items()
    )


def short(hex_text: str) -> str:
    return hex_text[:16]
