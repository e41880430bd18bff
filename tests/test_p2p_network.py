"""Networks of real nodes on 127.0.0.1: meshes, messaging, admission, churn."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from p2p import (
    Limits,
    Network,
    NodeIdentity,
    PeerAddress,
    PeerUnavailable,
    RequestFailed,
    RequestTimeout,
)

FAST = Limits(
    handshake_timeout=2.0,
    dial_timeout=2.0,
    frame_timeout=0.5,
    idle_timeout=3.0,
    ping_interval=0.5,
    write_timeout=2.0,
    backoff_initial=0.05,
    backoff_max=0.3,
    ban_seconds=60.0,
)
ECHO = 1
GOSSIP = 2
SLOW = 3

IDENTITIES = [NodeIdentity(bytes([n + 1]) * 32) for n in range(5)]


class Allowlist:
    """A mutable allowlist, as the validator set would be."""

    def __init__(self, *identities: NodeIdentity) -> None:
        self.keys = {identity.public_key for identity in identities}

    def __call__(self, key: bytes) -> bool:
        return key in self.keys


def peer(identity: NodeIdentity, port: int | None = None) -> PeerAddress:
    """A peer entry; without a port it is accepted but not dialled."""
    host = None if port is None else "127.0.0.1"
    return PeerAddress(identity.public_key, host, port, identity.certificate_pem())


def node(
    name: str,
    identity: NodeIdentity,
    peers: list[PeerAddress],
    is_allowed: Callable[[bytes], bool] | None = None,
    port: int = 0,
) -> Network:
    return Network(
        identity,
        "127.0.0.1",
        port,
        peers,
        is_allowed or (lambda key: True),
        limits=FAST,
        logger=logging.getLogger(f"p2p.{name}"),
    )


@asynccontextmanager
async def running(*networks: Network) -> AsyncIterator[None]:
    try:
        for network in networks:
            await network.start()
        yield
    finally:
        for network in networks:
            await network.stop()


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def logged(caplog: pytest.LogCaptureFixture, name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == f"p2p.{name}"]


def short(identity: NodeIdentity) -> str:
    return identity.public_key[:4].hex()


@pytest.fixture(autouse=True)
def _debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="p2p")


async def start_mesh(count: int) -> list[Network]:
    """Start nodes one by one, each dialling those already listening."""
    networks: list[Network] = []
    for index in range(count):
        peers = [
            peer(IDENTITIES[other], networks[other].listen_port)
            if other < index
            else peer(IDENTITIES[other])
            for other in range(count)
            if other != index
        ]
        network = node(f"n{index}", IDENTITIES[index], peers)
        await network.start()
        networks.append(network)
    await wait_until(
        lambda: all(len(n.connected_peers()) == count - 1 for n in networks)
    )
    return networks


async def stop_all(networks: list[Network]) -> None:
    for network in networks:
        await network.stop()


async def test_three_nodes_mesh_broadcast_and_request(caplog) -> None:
    networks = await start_mesh(3)
    try:
        received: list[list[tuple[bytes, bytes]]] = [[] for _ in networks]
        for index, network in enumerate(networks):

            async def on_gossip(peer_key: bytes, body: bytes, index=index) -> None:
                received[index].append((peer_key, body))

            async def echo(peer_key: bytes, body: bytes, me=network) -> bytes:
                return me.public_key[:4] + body

            network.register_handler(GOSSIP, on_gossip)
            network.register_request_handler(ECHO, echo)

        for index, network in enumerate(networks):
            assert await network.broadcast(GOSSIP, f"from {index}".encode()) == 2
        await wait_until(lambda: all(len(r) == 2 for r in received))
        for index, messages in enumerate(received):
            senders = {key for key, _ in messages}
            expected = {n.public_key for i, n in enumerate(networks) if i != index}
            assert senders == expected

        first, second, third = networks
        answer = await first.request(third.public_key, ECHO, b"ping", timeout=2)
        assert answer == third.public_key[:4] + b"ping"
        await second.send(first.public_key, GOSSIP, b"direct")
        await wait_until(lambda: (second.public_key, b"direct") in received[0])
        connected = [m for m in logged(caplog, "n2") if m.startswith("peer connected")]
        assert f"peer connected peer={short(IDENTITIES[0])} addr=127.0.0.1:" in (
            connected[0] + connected[1]
        )
    finally:
        await stop_all(networks)


async def test_request_errors_are_clear() -> None:
    networks = await start_mesh(2)
    try:
        first, second = networks

        async def never_answers(peer_key: bytes, body: bytes) -> bytes:
            await asyncio.sleep(30)
            return b""

        async def broken(peer_key: bytes, body: bytes) -> bytes:
            raise RuntimeError("handler bug")

        second.register_request_handler(SLOW, never_answers)
        second.register_request_handler(ECHO, broken)
        started = asyncio.get_running_loop().time()
        with pytest.raises(RequestTimeout):
            await first.request(second.public_key, SLOW, b"", timeout=0.3)
        assert asyncio.get_running_loop().time() - started < 1.0
        with pytest.raises(RequestFailed) as failed:
            await first.request(second.public_key, ECHO, b"", timeout=2)
        assert failed.value.reason == "handler_error"
        with pytest.raises(RequestFailed) as failed:
            await first.request(second.public_key, 99, b"", timeout=2)
        assert failed.value.reason == "no_handler"
        with pytest.raises(PeerUnavailable):
            await first.request(IDENTITIES[4].public_key, ECHO, b"", timeout=2)

        # A request in flight fails at once when its peer goes away.
        pending = asyncio.create_task(
            first.request(second.public_key, SLOW, b"", timeout=10)
        )
        await asyncio.sleep(0.1)
        await second.stop()
        with pytest.raises(PeerUnavailable):
            await asyncio.wait_for(pending, 2)
        # The failed handler did not take the node down: it still serves.
        assert first.connected_peers() == []
    finally:
        await stop_all(networks)


async def test_simultaneous_dials_leave_one_connection(caplog) -> None:
    alice, bob = IDENTITIES[0], IDENTITIES[1]
    a = node("a", alice, [peer(bob)])
    b = node("b", bob, [peer(alice)])
    async with running(a, b):
        # Both learn the other's address in the same instant and dial.
        a.update_peers([peer(bob, b.listen_port)])
        b.update_peers([peer(alice, a.listen_port)])
        await wait_until(lambda: a.connected_peers() and b.connected_peers())
        await asyncio.sleep(0.5)
        assert a.connected_peers() == [bob.public_key]
        assert b.connected_peers() == [alice.public_key]
        lower = a if alice.public_key < bob.public_key else b
        higher = b if lower is a else a
        # The kept connection is the one the lower key dialled, on both ends.
        assert lower._connections[higher.public_key].outbound
        assert not higher._connections[lower.public_key].outbound
        for name in ("a", "b"):
            lines = logged(caplog, name)
            assert sum(m.startswith("peer connected") for m in lines) == 1
            assert not any(m.startswith("peer disconnected") for m in lines)


async def test_untrusted_certificates_are_refused_both_ways(caplog) -> None:
    alice, bob, mallory = IDENTITIES[0], IDENTITIES[1], IDENTITIES[2]
    # Mallory trusts Alice, but Alice has never heard of Mallory.
    m = node("m", mallory, [peer(alice)])
    async with running(m):
        # Alice believes Bob lives where Mallory listens.
        a = node("a", alice, [peer(bob, m.listen_port)])
        async with running(a):
            m.update_peers([peer(alice, a.listen_port)])
            await wait_until(
                lambda: (
                    any(
                        "reason=certificate_not_trusted" in line
                        and f"peer={short(bob)}" in line
                        for line in logged(caplog, "a")
                    )
                    and any(
                        "reason=certificate_not_trusted" in line and "peer=" not in line
                        for line in logged(caplog, "a")
                    )
                )
            )
            assert a.connected_peers() == [] and m.connected_peers() == []
            assert any(
                line.startswith(f"peer refused peer={short(alice)}")
                and "reason=refused_by_peer" in line
                for line in logged(caplog, "m")
            )


async def test_peer_outside_allowlist_is_refused(caplog) -> None:
    alice, bob = IDENTITIES[0], IDENTITIES[1]
    a = node("a", alice, [peer(bob)], is_allowed=Allowlist())
    async with running(a):
        b = node("b", bob, [peer(alice, a.listen_port)])
        async with running(b):
            await wait_until(
                lambda: any(
                    "detail=not_allowed" in line for line in logged(caplog, "b")
                )
            )
            refusal = f"peer refused peer={short(bob)} addr=127.0.0.1:"
            assert any(
                line.startswith(refusal) and line.endswith("reason=not_allowed")
                for line in logged(caplog, "a")
            )
            assert a.connected_peers() == [] and b.connected_peers() == []


async def test_allowlist_change_drops_and_restores_connection(caplog) -> None:
    alice, bob = IDENTITIES[0], IDENTITIES[1]
    allowed = Allowlist(bob)
    a = node("a", alice, [peer(bob)], is_allowed=allowed)
    async with running(a):
        b = node("b", bob, [peer(alice, a.listen_port)])
        async with running(b):
            await wait_until(lambda: a.connected_peers() == [bob.public_key])
            allowed.keys.clear()
            a.refresh_allowlist()
            await wait_until(lambda: not a.connected_peers())
            await wait_until(lambda: not b.connected_peers())
            assert any(
                line.startswith(f"peer disconnected peer={short(bob)}")
                and "reason=not_allowed" in line
                for line in logged(caplog, "a")
            )
            await asyncio.sleep(0.4)  # Bob keeps trying, and is turned away.
            assert a.connected_peers() == []
            allowed.keys.add(bob.public_key)
            await wait_until(lambda: a.connected_peers() == [bob.public_key])


async def test_removed_peer_is_dropped_and_no_longer_trusted(caplog) -> None:
    alice, bob = IDENTITIES[0], IDENTITIES[1]
    a = node("a", alice, [peer(bob)])
    async with running(a):
        b = node("b", bob, [peer(alice, a.listen_port)])
        async with running(b):
            await wait_until(lambda: a.connected_peers() == [bob.public_key])
            a.update_peers([])
            await wait_until(
                lambda: any(
                    "reason=certificate_not_trusted" in line
                    for line in logged(caplog, "a")
                )
            )
            assert a.connected_peers() == []
            assert any("reason=peer_removed" in line for line in logged(caplog, "a"))


async def test_reconnects_after_peer_restart() -> None:
    alice, bob = IDENTITIES[0], IDENTITIES[1]
    b = node("b", bob, [peer(alice)])
    async with running(b):
        port = b.listen_port
        a = node("a", alice, [peer(bob, port)])
        async with running(a):
            await wait_until(lambda: a.connected_peers() == [bob.public_key])
            await b.stop()
            await wait_until(lambda: a.connected_peers() == [])
            await asyncio.sleep(0.3)  # Alice's redials now fail for a while.
            b_again = node("b", bob, [peer(alice)], port=port)

            async def echo(peer_key: bytes, body: bytes) -> bytes:
                return body

            b_again.register_request_handler(ECHO, echo)
            async with running(b_again):
                await wait_until(lambda: a.connected_peers() == [bob.public_key])
                assert await a.request(bob.public_key, ECHO, b"back", 2) == b"back"


async def test_keepalive_holds_a_quiet_link_and_stop_leaves_no_tasks() -> None:
    before = asyncio.all_tasks()
    networks = await start_mesh(2)
    try:
        # Quiet for longer than the idle timeout: pings keep the link alive.
        await asyncio.sleep(FAST.idle_timeout + 0.5)
        assert [len(n.connected_peers()) for n in networks] == [1, 1]
    finally:
        await stop_all(networks)
    assert asyncio.all_tasks() - before == set()


async def test_handlers_and_messages_are_validated() -> None:
    network = node("v", IDENTITIES[0], [])

    async def handler(peer_key: bytes, body: bytes) -> None:
        return None

    network.register_handler(GOSSIP, handler)
    with pytest.raises(ValueError):
        network.register_handler(GOSSIP, handler)
    with pytest.raises(ValueError):
        network.register_handler(-1, handler)
    with pytest.raises(ValueError):
        await network.broadcast(1 << 20, b"")
    with pytest.raises(ValueError):
        PeerAddress(
            IDENTITIES[1].public_key, None, None, IDENTITIES[2].certificate_pem()
        )
