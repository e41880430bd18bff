"""Bounded in-memory maps of the store and the indexer: trimmed by age, never
by use."""

from __future__ import annotations

import itertools


def drop_oldest_quarter(mapping: dict) -> None:
    """Remove the oldest quarter of `mapping` (insertion order), at least one
    entry: one sweep now and then rather than bookkeeping on every read."""
    for key in list(itertools.islice(mapping, max(1, len(mapping) // 4))):
        del mapping[key]
