"""Whether a proposed block may be the next one, and whether it is on time.

Two different questions, asked at different moments:

- valid: the block is for this chain and height, dated after its parent, names
  a validator as proposer, and executes on the last committed state to exactly
  the roots in its header (the application checks that part). The answer is
  the same on every honest node, so it may gate locking and committing.
- timely: a fresh proposal is not dated more than max_clock_drift_ms ahead of
  this node's clock. Clocks differ, so the answer may differ between nodes; it
  only gates prevoting a fresh proposal, so no proposer can push block time
  into the future, and never decides a commit.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from consensus.app import Application
from consensus.messages import short
from state.block import Block


def block_problem(
    block: Block,
    chain_id: str,
    height: int,
    validators: Collection[bytes],
    app: Application,
    log: logging.Logger,
) -> str | None:
    """Why `block` may not be the next block, or None if it may."""
    header = block.header
    if header.chain_id != chain_id:
        reason = f"chain id {header.chain_id!r}"
    elif header.height != height:
        reason = f"height {header.height} is not {height}"
    elif header.time_ms <= app.last_block_time_ms():
        reason = "block time is not after the parent's"
    elif header.proposer not in validators:
        reason = "the proposer field names no validator"
    else:
        try:
            reason = app.validate_block(block)
        except Exception as exc:
            log.exception("validate_block failed height=%d", height)
            reason = f"validation failed: {type(exc).__name__}"
    if reason is not None:
        log.info(
            "invalid block height=%d hash=%s reason=%s",
            height,
            short(block.hash),
            reason,
        )
    return reason


def is_timely(
    block: Block, now_ms: int, max_clock_drift_ms: int, log: logging.Logger
) -> bool:
    """Rule: a fresh block dated more than max_clock_drift_ms ahead of our clock
    gets a nil prevote."""
    ahead = block.header.time_ms - now_ms
    if ahead > max_clock_drift_ms:
        log.info("untimely block height=%d ahead_ms=%d", block.height, ahead)
        return False
    return True
