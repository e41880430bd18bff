"""Only the configured nodes get in; strangers and garbage are shut out.

What this proves:

- a node with a fresh key, on the right chain and configured with every
  validator's address and certificate, is refused by every validator (their
  logs say why) and never receives a block, while the chain goes on; this
  holds even at a validator that trusts its certificate: a trusted
  certificate is not a place in the allowlist (validators and observers);
- a raw TCP client that sends garbage to a validator's p2p port is dropped at
  once, and one that connects and says nothing is dropped after the TLS
  handshake timeout; neither disturbs the validators' links or the chain.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import pytest

from tests.harness.cluster import launched_cluster

log = logging.getLogger("tests.network")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

UNTRUSTED = "certificate_not_trusted"
NOT_ALLOWED = "not_allowed"
# p2p.policing.Limits.handshake_timeout, plus a margin for a busy machine.
SILENT_DROP_S = 10.0 + 5.0


@pytest.fixture
def cluster(tmp_path, request):
    with launched_cluster(tmp_path / "devnet", request) as running:
        yield running


def test_strangers_and_garbage_are_refused_and_the_chain_goes_on(cluster):
    log.info("a raw client connects to v2's p2p port and says nothing")
    silent = connect_raw(cluster, "v2")
    silent_since = time.monotonic()
    try:
        log.info("a raw client sends garbage to v1's p2p port")
        assert_dropped_after_garbage(cluster, "v1")

        log.info("a node with a fresh key; v1 trusts its certificate by mistake")
        outsider = cluster.add_outsider("x1")
        cluster.stop("v1")
        cluster.pin_certificate("v1", "x1")
        cluster.start("v1")

        log.info("x1 tries to join as a peer of every validator")
        cluster.start("x1")
        reasons = {v: UNTRUSTED for v in cluster.validators} | {"v1": NOT_ALLOWED}
        cluster.wait_until(
            lambda: all(refused(cluster, v, r) for v, r in reasons.items()),
            20,
            f"the validators to log their refusal of x1: {reasons}",
            cluster.validators,
        )
        short_key = outsider.public_key[:4].hex()
        assert any(
            f"peer={short_key}" in line for line in refused(cluster, "v1", NOT_ALLOWED)
        ), f"v1 refused someone else than x1 ({short_key})"
        cluster.wait_for_blocks(3, cluster.members, timeout=20)

        log.info("the stranger got nothing")
        status = cluster.status("x1")
        assert status["height"] == 0, f"x1 got blocks: {status}"
        assert status["peers"] == 0, f"x1 has peers: {status}"
        for name in cluster.validators:
            peers = cluster.status(name)["peers"]
            assert peers == len(cluster.members) - 1, (
                f"{name} has {peers} peers\n{cluster.describe()}"
            )

        log.info("the silent client is dropped after the handshake timeout")
        remaining = SILENT_DROP_S - (time.monotonic() - silent_since)
        assert_closed_by_peer(silent, remaining, "a silent client on v2")
    finally:
        silent.close()

    log.info("the chain went on, the same on every node")
    cluster.wait_for_blocks(2, cluster.members)
    cluster.assert_consistent(cluster.members)


def refused(cluster, name: str, reason: str) -> list[str]:
    return cluster.log_matches(name, rf"peer refused .*reason={reason}\b")


def connect_raw(cluster, name: str) -> socket.socket:
    return socket.create_connection(
        ("127.0.0.1", cluster.nodes[name].p2p_port), timeout=5
    )


def assert_dropped_after_garbage(cluster, name: str) -> None:
    with connect_raw(cluster, name) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: perk\r\n\r\n" + os.urandom(1024))
        assert_closed_by_peer(raw, 5.0, f"a garbage sender on {name}")


def assert_closed_by_peer(sock: socket.socket, timeout: float, who: str) -> None:
    """The peer closed the connection (EOF or reset) within `timeout`."""
    sock.settimeout(max(timeout, 0.1))
    try:
        while sock.recv(4096):
            pass  # a refusal frame or TLS alert may come before the close
    except TimeoutError:
        raise AssertionError(f"{who} still connected after {timeout:.1f}s") from None
    except ConnectionResetError:
        pass
