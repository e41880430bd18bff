"""Following committed blocks from outside a node, as load tools do.

The raw route serves a block's canonical bytes with its receipts; decoding
them locally is far cheaper for the node than rendering the JSON view of a
block of thousands of transactions.
"""

from __future__ import annotations

import aiohttp

from state.block import Receipt, decode_block, decode_receipts
from state.codec import sha256


async def committed_outcomes(
    session: aiohttp.ClientSession, url: str, height: int
) -> list[tuple[bytes, Receipt]]:
    """(transaction hash, receipt) for every transaction of block `height`."""
    async with session.get(f"{url}/v1/blocks/{height}/raw") as response:
        doc = await response.json()
    block = decode_block(bytes.fromhex(doc["block"]))
    receipts = decode_receipts(bytes.fromhex(doc["receipts"]))
    return [
        (sha256(raw), receipt) for raw, receipt in zip(block.txs, receipts, strict=True)
    ]
