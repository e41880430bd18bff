"""A steady stream of award submissions from a background thread.

`SteadyLoad` submits one award every `interval_s` to the given nodes in turn,
without waiting for finality, and remembers each admitted transaction and the
coins it should earn. A test then checks that every one of them became final
and that the customer's balance is their sum on every node: nothing lost,
nothing applied twice.
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass, field

from client.http import ApiError, Client, NodeUnreachable
from client.keys import Keypair
from tests.harness.cluster import MERCHANT_RATE, Cluster

log = logging.getLogger("tests.network")

SUBMIT_TIMEOUT_S = 5.0


@dataclass
class Submitted:
    tx_hash: str
    via: str
    coins: int


@dataclass
class SteadyLoad:
    cluster: Cluster
    merchant: Keypair
    customer: Keypair
    targets: list[str]
    interval_s: float = 0.15
    amount: int = 1000  # minor units of spend per purchase
    submitted: list[Submitted] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.run, name="steady-load", daemon=True
        )
        self._thread.start()
        log.info("steady load started targets=%s", ",".join(self.targets))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(SUBMIT_TIMEOUT_S * 2)
            assert not self._thread.is_alive(), "the load thread did not stop"
        log.info(
            "steady load stopped submitted=%d errors=%d",
            len(self.submitted),
            len(self.errors),
        )

    def __enter__(self) -> SteadyLoad:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def expected_coins(self) -> int:
        return sum(s.coins for s in self.submitted)

    def run(self) -> None:
        # Clients are not shared with the test's thread: each has its own loop.
        clients = {
            name: Client(self.cluster.nodes[name].api_url, timeout=SUBMIT_TIMEOUT_S)
            for name in self.targets
        }
        try:
            for i in itertools.count():
                if self._stop.wait(self.interval_s):
                    return
                via = self.targets[i % len(self.targets)]
                self.submit_one(clients[via], via, self.amount + i)
        finally:
            for client in clients.values():
                client.close()

    def submit_one(self, client: Client, via: str, amount: int) -> None:
        raw = self.cluster.award_tx(self.merchant, self.customer, amount)
        try:
            doc = client.submit(raw)
        except (ApiError, NodeUnreachable) as exc:
            self.errors.append(f"{via}: {exc}")
            return
        coins = amount * MERCHANT_RATE // 100
        self.submitted.append(Submitted(doc["hash"], via, coins))
