"""`perk node run`: one node in the foreground until SIGTERM or SIGINT.

The home folder must hold config.toml, genesis.json and node_key.pem (see
node.config). A signal asks for a clean stop: the node finishes the block
write in progress, closes its API and network, and closes the database, then
the process exits 0. A missing or invalid file exits 2 with one line saying
which; anything that goes wrong later is logged and exits 1.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from pathlib import Path

from node.cli_common import EXIT_OK, EXIT_USAGE
from node.config import (
    Config,
    ConfigError,
    check_devnet_only,
    load_config,
    read_node_key,
)
from node.gc_tuning import tune_gc
from node.logs import setup_logging
from state.genesis import Genesis, GenesisError, load_genesis
from state.store import StoreError

log = logging.getLogger("node.runner")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# The node ran but failed, or did not stop cleanly; details are in the log.
EXIT_FAILED = 1


class StartupError(Exception):
    """The node cannot start with this home folder; the message says why."""


def run_node(home: str | Path) -> int:
    """Run the node in `home` until a stop signal; the process exit code."""
    try:
        config, genesis, seed = load_home(Path(home))
    except StartupError as exc:
        print(f"perk: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(config.node.log_level, config.node.log_format, config.node.name)
    tune_gc()
    try:
        return asyncio.run(serve(config, genesis, seed))
    except StartupError as exc:
        log.error("node cannot start error=%r", str(exc))
        return EXIT_USAGE


def load_home(home: Path) -> tuple[Config, Genesis, bytes]:
    if not home.is_dir():
        raise StartupError(f"no node home at {home} (create one with `perk init`)")
    try:
        config = load_config(home)
    except ConfigError as exc:
        raise StartupError(f"config: {exc}") from None
    if not config.genesis_path.is_file():
        raise StartupError(f"no genesis at {config.genesis_path}")
    try:
        genesis = load_genesis(config.genesis_path)
    except GenesisError as exc:
        raise StartupError(f"genesis: {exc}") from None
    try:
        check_devnet_only(config, genesis)
    except ConfigError as exc:
        raise StartupError(f"config: {exc}") from None
    try:
        seed = read_node_key(config.node_key_path)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    return config, genesis, seed


async def serve(config: Config, genesis: Genesis, seed: bytes) -> int:
    from node.service import Node

    stop = asyncio.Event()
    install_signal_handlers(stop)
    node = Node(config, genesis, seed)
    try:
        code = await run_until_stopped(node, stop)
    finally:
        # A signal during the stop itself must not cut it short: the database
        # is closed only after the last block write has finished.
        code_after_stop = await stop_node(node)
    return code if code != EXIT_OK else code_after_stop


async def run_until_stopped(node, stop: asyncio.Event) -> int:
    name = node.config.node.name
    starting = asyncio.create_task(start_node(node))
    stopping = asyncio.create_task(stop.wait())
    try:
        # A stop signal that arrives while the node is still starting wins.
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            log.info("stop requested while starting name=%s", name)
            return EXIT_OK
        starting.result()  # raises StartupError
        log.info(
            "node running name=%s api=%s:%s", name, node.config.api.host, node.api_port
        )
        await stopping
        log.info("stop requested name=%s", name)
        return EXIT_OK
    except StartupError:
        raise
    except Exception:
        log.exception("node failed name=%s", name)
        return EXIT_FAILED
    finally:
        stopping.cancel()


async def stop_node(node) -> int:
    try:
        await node.stop()
    except Exception:
        log.exception("node did not stop cleanly name=%s", node.config.node.name)
        return EXIT_FAILED
    return EXIT_OK


async def start_node(node) -> None:
    """Start the node, turning the failures an operator can fix into one line."""
    try:
        await node.start()
    except StoreError as exc:
        raise StartupError(f"database: {exc}") from None
    except OSError as exc:
        # Typically the API or p2p port is taken by another process.
        raise StartupError(f"cannot listen: {exc.strerror or exc}") from None


def install_signal_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()

    def request_stop(signum: int) -> None:
        if stop.is_set():
            log.info("already stopping signal=%s", signal.Signals(signum).name)
        stop.set()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, request_stop, signum)
