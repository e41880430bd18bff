"""The link proxies of the test harness (tests.harness.links) over plain TCP.

An echo server stands in for a node's p2p port; the proxies must pass bytes
both ways unchanged, and cut, delay, drop and heal exactly the links named.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.harness.links import LinkProxies

TIMEOUT_S = 5.0


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A TCP server that sends back whatever it receives."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve_one(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the proxy resets on a cut
            while data := conn.recv(65536):
                conn.sendall(data)

    def accept_loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve_one, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept_loop, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


@pytest.fixture
def links() -> Iterator[LinkProxies]:
    proxies = LinkProxies()
    proxies.start()
    yield proxies
    proxies.stop()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S)
    sock.settimeout(TIMEOUT_S)
    return sock


def round_trip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    received = b""
    while len(received) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_bytes_pass_both_ways_unchanged(links, echo_port):
    port = links.add("a", "b", echo_port)
    payload = bytes(range(256)) * 1000
    with connect(port) as sock:
        assert round_trip(sock, payload) == payload


def test_a_cut_resets_open_connections_and_refuses_new_ones(links, echo_port):
    port = links.add("a", "b", echo_port)
    other = links.add("a", "c", echo_port)
    with connect(port) as sock, connect(other) as untouched:
        assert round_trip(sock, b"hello") == b"hello"
        links.cut("b", "a")
        with pytest.raises(OSError):
            round_trip(sock, b"again")
            round_trip(sock, b"and again")
        assert round_trip(untouched, b"still up") == b"still up"

    with pytest.raises(OSError), connect(port) as sock:
        round_trip(sock, b"refused")
        round_trip(sock, b"refused")

    links.heal()
    with connect(port) as sock:
        assert round_trip(sock, b"back") == b"back"


def test_a_partition_cuts_only_across_groups(links, echo_port):
    ports = {pair: links.add(*pair, echo_port) for pair in [("v1", "v2"), ("v1", "v3")]}
    links.partition({"v1", "v2"}, {"v3"})
    assert links.is_cut("v1", "v3") and not links.is_cut("v1", "v2")
    with connect(ports[("v1", "v2")]) as sock:
        assert round_trip(sock, b"same side") == b"same side"


def test_a_delay_holds_one_direction(links, echo_port):
    port = links.add("a", "b", echo_port)
    links.delay("a", "b", 300)
    with connect(port) as sock:
        started = time.monotonic()
        assert round_trip(sock, b"slow") == b"slow"
        assert time.monotonic() - started >= 0.3
        links.delay("a", "b", 0)
        started = time.monotonic()
        assert round_trip(sock, b"fast") == b"fast"
        assert time.monotonic() - started < 0.3


def test_a_drop_discards_one_direction_and_heal_resets_the_damage(links, echo_port):
    port = links.add("a", "b", echo_port)
    with connect(port) as sock:
        links.drop("b", "a")  # the echo never comes back
        sock.settimeout(0.5)
        sock.sendall(b"lost")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        links.heal()
        sock.settimeout(TIMEOUT_S)
        # The stream lost bytes, so the connection is reset rather than resumed.
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
    with connect(port) as sock:
        assert round_trip(sock, b"fresh") == b"fresh"
