"""Bad inputs thrown at a running network during the soak, from one thread.

Each kind is a family from ../shared cases (C08 chain-id look-alikes, C14
amount edge values, C15 bodies that are not what they claim, C16 oversized
bodies) plus forged signatures, replays of committed transactions, unknown
fields, and garbage at a peer port. Every answer must be a 4xx problem
document (or, for a peer port, a closed connection), and the node must still
answer its status afterwards. A node that is down at that moment is skipped:
faults run at the same time, and a refused connection proves nothing.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from urllib.parse import urlsplit

import msgpack

from client import builders
from client.http import ApiError, Client, NodeUnreachable
from client.keys import Keypair
from state.tx import SIGN_DOMAIN, Kind

log = logging.getLogger("soak.inputs")

INTERVAL_S = 0.25
HTTP_TIMEOUT_S = 10.0
MB = 1 << 20
OVERSIZED_BYTES = 5 * MB
# Garbage whose first bytes declare a long TLS record waits for the rest of
# it, like any slow handshake: the node hangs up at its TLS handshake timeout
# (p2p.policing, 10 s) at the latest.
PEER_HANGUP_S = 15.0
STILL_SERVING_S = 20.0
PROBLEM_TYPE = "application/problem+json"

LOOKALIKE_SUFFIXES = ["-staging", "X", " ", "1", "\u0456"]  # і: Cyrillic i
BAD_AMOUNTS = [-1, 0, 2**63, 2**64 - 1, float(2**64), 1.5, "100", 1e3, None, True]
NESTED = b"[" * 10_000 + b"]" * 10_000
BAD_BODIES = [
    b"null", b"[null]", b"[]", b"{}", b'"x"', b"123", b'{"tx": "ab',
    b'{"tx": "\xff\xfe"}', b'{"tx": "00", "tx": "01"}', NESTED,
    json.dumps({"tx": "ab" * (MB // 2)}).encode(), b"",
    b'{"tx": "00", "memo": "unknown field"}',
]  # fmt: skip


class Refused(Exception):
    """The node could not be reached; the input was not tried."""


class BadInputs:
    def __init__(self, cluster, seed: int):
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.tried: Counter = Counter()
        self.failures: list[str] = []
        self.stranger = Keypair.generate()
        self.merchant = Keypair.generate()
        self.committed: list[bytes] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.kinds: dict[str, Callable[[str], None]] = {
            "wrong_chain": self.wrong_chain,
            "amount_edge": self.amount_edge,
            "bad_body": self.bad_body,
            "wrong_content_type": self.wrong_content_type,
            "bad_signature": self.bad_signature,
            "replay": self.replay,
            "expired": self.expired,
            "oversized_body": self.oversized_body,
            "oversized_chunked": self.oversized_chunked,
            "peer_garbage": self.peer_garbage,
        }

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(HTTP_TIMEOUT_S * 3)

    def run(self) -> None:
        while not self._stop.wait(INTERVAL_S):
            targets = self.cluster.running_nodes()
            if not targets:
                continue
            via = self.rng.choice(targets)
            kind = self.rng.choice(sorted(self.kinds))
            try:
                self.kinds[kind](via)
            except Refused:
                continue
            except Exception as exc:  # a failure of the check itself is a finding
                self.fail(kind, via, f"{type(exc).__name__}: {exc}")
                continue
            self.tried[kind] += 1
            self.check_still_serving(kind, via)

    def fail(self, kind: str, via: str, what: str) -> None:
        log.error("bad input not refused kind=%s node=%s what=%r", kind, via, what)
        self.failures.append(f"{kind} at {via}: {what}")

    # --- HTTP ---------------------------------------------------------------------

    def request(
        self,
        via: str,
        method: str,
        path: str,
        body: bytes | None = None,
        ctype: str = "application/json",
        chunked: bool = False,
    ) -> tuple[int, str, bytes]:
        url = urlsplit(self.cluster.nodes[via].api_url)
        conn = http.client.HTTPConnection(
            url.hostname, url.port, timeout=HTTP_TIMEOUT_S
        )
        try:
            headers = {"Content-Type": ctype}
            if chunked:
                conn.request(method, path, body=iter([body]), headers=headers,
                             encode_chunked=True)  # fmt: skip
            else:
                conn.request(method, path, body=body, headers=headers)
            reply = conn.getresponse()
            return reply.status, reply.getheader("Content-Type", ""), reply.read()
        except ConnectionRefusedError as exc:
            raise Refused() from exc
        except (ConnectionResetError, BrokenPipeError, http.client.RemoteDisconnected):
            # A node that closes the connection on an oversized body before
            # reading it may reset it under our feet; ask how it ended.
            if not self.answers(via):
                raise Refused() from None
            return 413, PROBLEM_TYPE, b"{}"
        except TimeoutError as exc:
            if via not in self.cluster.running_nodes():
                raise Refused() from exc
            raise
        finally:
            conn.close()

    def answers(self, via: str) -> bool:
        return self.cluster.status(via) is not None

    def expect_problem(self, kind: str, via: str, reply, statuses=range(400, 500)):
        status, ctype, body = reply
        if status not in statuses or not ctype.startswith(PROBLEM_TYPE):
            self.fail(kind, via, f"answered {status} {ctype} {body[:200]!r}")

    def submit(self, kind: str, via: str, raw: bytes, statuses=range(400, 500)):
        body = json.dumps({"tx": raw.hex()}).encode()
        reply = self.request(via, "POST", "/v1/transactions", body)
        self.expect_problem(kind, via, reply, statuses)

    def check_still_serving(self, kind: str, via: str) -> None:
        """The node answers its status afterwards. Faults run meanwhile, so a
        node that was stopped or is still starting gets a few seconds."""
        deadline = time.monotonic() + STILL_SERVING_S
        while time.monotonic() < deadline:
            if via not in self.cluster.running_nodes() or self.answers(via):
                return
            time.sleep(0.5)
        self.fail(kind, via, f"status did not answer within {STILL_SERVING_S:g}s")

    # --- the kinds ----------------------------------------------------------------

    def expiry(self) -> int:
        return int(time.time()) + 600

    def award(self, chain_id: str | None = None, amount=1000, expires_at=None) -> bytes:
        return builders.award_purchase(
            self.merchant,
            chain_id or self.cluster.chain_id,
            expires_at or self.expiry(),
            self.stranger.address,
            f"bad-{self.rng.randrange(10**9)}",
            amount,
        )

    def wrong_chain(self, via: str) -> None:
        suffix = self.rng.choice(LOOKALIKE_SUFFIXES + ["UPPER"])
        chain = self.cluster.chain_id
        other = chain.upper() if suffix == "UPPER" else chain + suffix
        if suffix == "\u0456":
            other = chain.replace("i", "\u0456", 1) if "i" in chain else chain + suffix
        self.submit("wrong_chain", via, self.award(chain_id=other), statuses=[422])

    def amount_edge(self, via: str) -> None:
        amount = self.rng.choice(BAD_AMOUNTS)
        body = [1, self.cluster.chain_id, int(Kind.AWARD_PURCHASE),
                self.merchant.public_key, self.expiry(),
                [self.stranger.public_key, "edge", amount]]  # fmt: skip
        raw = msgpack.packb(body, use_bin_type=True)
        signature = self.merchant.sign(SIGN_DOMAIN + raw)
        self.submit("amount_edge", via, msgpack.packb(body + [signature]))

    def bad_body(self, via: str) -> None:
        body = self.rng.choice(BAD_BODIES)
        reply = self.request(via, "POST", "/v1/transactions", body)
        self.expect_problem("bad_body", via, reply)

    def wrong_content_type(self, via: str) -> None:
        body = json.dumps({"tx": self.award().hex()}).encode()
        ctype = self.rng.choice(["text/plain", "application/octet-stream", ""])
        reply = self.request(via, "POST", "/v1/transactions", body, ctype=ctype)
        self.expect_problem("wrong_content_type", via, reply)

    def bad_signature(self, via: str) -> None:
        raw = bytearray(self.award())
        raw[-1 - self.rng.randrange(64)] ^= 1 << self.rng.randrange(8)
        self.submit("bad_signature", via, bytes(raw))

    def replay(self, via: str) -> None:
        """Resubmitting a committed transaction is refused: as a duplicate
        while it has not expired, as expired after (the committed-hash index
        keeps a hash until its transaction's expiry, as the design says)."""
        # A client of this thread's own: the cluster's clients belong to the
        # thread that drives the faults.
        try:
            with Client(self.cluster.nodes[via].api_url, timeout=HTTP_TIMEOUT_S) as api:
                latest = api.block("latest")
        except (ApiError, NodeUnreachable) as exc:
            raise Refused() from exc
        txs = latest.get("txs") or []
        if not txs:
            raise Refused()  # nothing to replay in this block; not tried
        tx = self.rng.choice(txs)
        left = tx["expires_at"] - time.time()
        # Near its expiry either answer is right: the node's clock decides.
        expected = [422] if left <= 0 else [409] if left > 5 else [409, 422]
        self.submit("replay", via, bytes.fromhex(tx["raw"]), expected)

    def expired(self, via: str) -> None:
        raw = self.award(expires_at=int(time.time()) - 3600)
        self.submit("expired", via, raw, statuses=[422])

    def oversized_body(self, via: str) -> None:
        body = b'{"tx": "' + b"ab" * (OVERSIZED_BYTES // 2) + b'"}'
        reply = self.request(via, "POST", "/v1/transactions", body)
        self.expect_problem("oversized_body", via, reply, statuses=[413])

    def oversized_chunked(self, via: str) -> None:
        body = b'{"tx": "' + b"ab" * (OVERSIZED_BYTES // 2) + b'"}'
        reply = self.request(via, "POST", "/v1/transactions", body, chunked=True)
        self.expect_problem("oversized_chunked", via, reply, statuses=[413])

    def peer_garbage(self, via: str) -> None:
        """Random bytes at a peer port: the node hangs up and carries on."""
        port = self.cluster.nodes[via].p2p_port
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                # Not a TLS record (0x16 starts a handshake), and long enough
                # for the record header to be read and refused at once.
                junk = b"\x47" + self.rng.randbytes(self.rng.randrange(64, 4096))
                sock.sendall(junk)
                sock.settimeout(PEER_HANGUP_S)
                while sock.recv(4096):
                    pass
        except ConnectionRefusedError as exc:
            raise Refused() from exc
        except (ConnectionResetError, BrokenPipeError):
            pass  # hung up on us, as it should
        except TimeoutError:
            self.fail("peer_garbage", via, "connection held open after garbage")
