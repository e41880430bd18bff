"""Following committed blocks from outside a node, as load tools do.

The raw route serves a block's canonical bytes with its receipts; decoding
them locally is far cheaper for the node than rendering the JSON view of a
block of thousands of transactions.
"""

from __future__ import annotations

import aiohttp
import msgpack

from client.http import MSGPACK_TYPE
from state.block import Receipt, decode_block, decode_receipts
from state.codec import sha256


class FollowError(Exception):
    """The node did not serve the block."""


async def committed_outcomes(
    session: aiohttp.ClientSession, url: str, height: int
) -> list[tuple[bytes, Receipt]]:
    """(transaction hash, receipt) for every transaction of block `height`."""
    headers = {"Accept": MSGPACK_TYPE}
    async with session.get(f"{url}/v1/blocks/{height}/raw", headers=headers) as r:
        if r.status != 200:
            raise FollowError(f"{url} block {height}: HTTP {r.status}")
        doc = msgpack.unpackb(await r.read(), raw=False)
    block = decode_block(doc["block"])
    receipts = decode_receipts(doc["receipts"])
    return [
        (sha256(raw), receipt) for raw, receipt in zip(block.txs, receipts, strict=True)
    ]
