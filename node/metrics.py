"""Prometheus metrics of one node (prometheus-client).

Each node owns its registry, so several nodes in one process (tests) keep
their figures apart. Served at /metrics by the API.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5,
                    5, 10, 30)  # fmt: skip


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.height = Gauge("perk_height", "Last committed height", registry=r)
        self.txs_committed = Counter(
            "perk_txs_committed", "Transactions committed, by outcome", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.mempool_txs = Gauge(
            "perk_mempool_txs", "Transactions waiting in the mempool", registry=r
        )
        self.mempool_bytes = Gauge(
            "perk_mempool_bytes", "Bytes of transactions in the mempool", registry=r
        )
        self.txs_rejected = Counter(
            "perk_txs_rejected", "Submissions refused at admission, by reason",
            ["reason"], registry=r,
        )  # fmt: skip
        self.block_execution = Histogram(
            "perk_block_execution_seconds", "Time to execute a block",
            buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.http_latency = Histogram(
            "perk_http_request_seconds", "HTTP request latency by route and status",
            ["route", "method", "status"], buckets=_LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.peers = Gauge("perk_peers", "Connected peers", registry=r)

    def observe_commit(
        self, block, result, mempool_size: int, mempool_bytes: int
    ) -> None:
        self.height.set(block.height)
        ok = sum(1 for r in result.receipts if r.code == 0)
        self.txs_committed.labels("ok").inc(ok)
        self.txs_committed.labels("failed").inc(len(result.receipts) - ok)
        # Both gauges: a commit empties the pool as much as admission fills it.
        self.mempool_txs.set(mempool_size)
        self.mempool_bytes.set(mempool_bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)
