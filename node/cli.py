"""`perk`: the command line of a perkchain node and its users.

    perk init --home DIR            a new node home (key and config.toml)
    perk genesis --out FILE ...     a genesis.json for a new chain
    perk node run --home DIR        run a node in the foreground
    perk devnet up|status|down      a local network in the background
    perk wallet create|show|list    signing keys on this machine
    perk status | block | tx | balance | history | validators
    perk award | refund | redeem | transfer | freeze | unfreeze | merchant ...
    perk bench ledger               measure ledger throughput

Exit codes (see node.cli_common): 0 success, 1 refused by the node or the
ledger, 2 usage or configuration error, 3 node unreachable.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from client.http import ApiError, NodeUnreachable, TooManyRequests, Unavailable
from client.keys import Keypair
from client.keystore import KeystoreError
from node.cli_audit import add_audit_parser
from node.cli_chain import add_chain_parsers
from node.cli_common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    CliError,
    Output,
    json_parent,
    non_negative_int,
    port_number,
    positive_float,
    positive_int,
    print_table,
)
from node.cli_replay import add_replay_parser
from node.cli_wallet import add_wallet_parsers
from node.config import (
    CONFIG_FILE,
    NODE_KEY_FILE,
    ApiSection,
    Config,
    ConfigError,
    NodeSection,
    P2PSection,
    write_node_key,
)
from node.devnet import DEFAULT_AUDITORS, DEFAULT_VALIDATORS
from state.address import AddressError
from state.genesis import GenesisError, parse_genesis

# --- init -----------------------------------------------------------------------------


def init_home(args: argparse.Namespace, out: Output) -> int:
    from node.devnet import write_certificate

    home = Path(args.home)
    for name in (CONFIG_FILE, NODE_KEY_FILE):
        if (home / name).exists():
            raise CliError(f"{home / name} exists: refusing to overwrite a node home")
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = Config(
        node=NodeSection(name=args.name or home.resolve().name, kind=args.kind),
        api=ApiSection(port=args.api_port),
        p2p=P2PSection(port=args.p2p_port),
        home=home,
    )
    seed = os.urandom(32)
    write_node_key(config.node_key_path, seed)
    write_certificate(home, seed)
    config.save()
    address = Keypair.from_seed(seed).address
    doc = {
        "home": str(home),
        "name": config.node.name,
        "kind": config.node.kind,
        "address": address,
    }
    out.emit(doc)
    out.line(f"next: put the chain's genesis.json into {home}")
    return EXIT_OK


# --- genesis --------------------------------------------------------------------------


def make_genesis(args: argparse.Namespace, out: Output) -> int:
    out_path = Path(args.out)
    if out_path.exists() and not args.force:
        raise CliError(f"{out_path} exists (use --force to replace it)")
    doc = {
        "chain_id": args.chain_id,
        "genesis_time_ms": (
            args.time_ms if args.time_ms is not None else time.time_ns() // 1_000_000
        ),
        "devnet": args.devnet,
        "validators": [parse_validator(v) for v in args.validator],
        "admins": args.admin,
        "program": {
            "transfers_allowed": args.transfers,
            "utc_offset_minutes": args.utc_offset_minutes,
        },
        "merchants": [parse_merchant(m) for m in args.merchant or []],
    }
    try:
        genesis = parse_genesis(doc)
    except GenesisError as exc:
        raise CliError(f"genesis: {exc}") from None
    genesis.write(out_path)
    out.emit(
        {
            "path": str(out_path),
            "chain_id": genesis.chain_id,
            "genesis_hash": genesis.hash.hex(),
            "validators": len(genesis.validators),
        }
    )
    return EXIT_OK


def parse_validator(text: str) -> dict:
    name, sep, address = text.partition("=")
    if not sep or not name or not address:
        raise CliError(f"--validator {text!r}: expected NAME=ADDRESS")
    return {"name": name, "key": address}


def parse_merchant(text: str) -> dict:
    address, sep, rest = text.partition(":")
    # The name may itself contain ':'; the rate and cap after it cannot.
    parts = rest.rsplit(":", 2)
    try:
        if not sep or len(parts) != 3 or not parts[0]:
            raise ValueError
        rate, cap = int(parts[1]), int(parts[2])
    except ValueError:
        raise CliError(f"--merchant {text!r}: expected ADDRESS:NAME:RATE:CAP") from None
    return {"key": address, "name": parts[0], "rate": rate, "daily_cap": cap}


# --- node run -------------------------------------------------------------------------


def run_node(args: argparse.Namespace, out: Output) -> int:
    from node.runner import run_node as run

    return run(args.home)


# --- devnet ---------------------------------------------------------------------------


def devnet_up(args: argparse.Namespace, out: Output) -> int:
    from node import devnet

    doc = call_devnet(
        devnet.up,
        Path(args.home),
        args.validators,
        args.auditors,
        args.chain_id,
        args.timeout,
    )

    def human() -> None:
        print_table(doc["nodes"], ["name", "kind", "pid", "api", "p2p_port"])
        admin = doc["admin"]
        print(f"chain   {doc['chain_id']}")
        print(f"admin   {admin['address']}")
        print(
            f"sign as admin: --wallet-dir {admin['wallet_dir']} --wallet "
            f"{admin['wallet']} --password-file {admin['password_file']}"
        )

    out.emit(doc, human)
    return EXIT_OK


def devnet_status(args: argparse.Namespace, out: Output) -> int:
    from node import devnet

    doc = call_devnet(devnet.status, Path(args.home))
    columns = ["name", "kind", "pid", "alive", "api", "height"]
    out.emit(doc, lambda: print_table(doc["nodes"], columns))
    return EXIT_OK


def devnet_time(args: argparse.Namespace, out: Output) -> int:
    from node.clock import ClockError, DevnetClock, write_clock_file
    from node.devnet import CLOCK_FILE, read_devnet

    root = Path(args.home)
    call_devnet(read_devnet, root)  # refuses a folder that is not a devnet
    path = root / CLOCK_FILE
    now = DevnetClock(path)()
    if not args.show:
        target = (
            args.set_ms if args.set_ms is not None else now + int(args.advance * 1000)
        )
        try:
            write_clock_file(path, target)
        except ClockError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
        now = target
    out.emit({"now_ms": now})
    return EXIT_OK


def devnet_down(args: argparse.Namespace, out: Output) -> int:
    from node import devnet

    doc = call_devnet(devnet.down, Path(args.home), args.timeout)
    result = {"nodes": [{"name": n["name"], "stop": n["stop"]} for n in doc["nodes"]]}
    out.emit(result, lambda: print_table(result["nodes"], ["name", "stop"]))
    return EXIT_OK


def call_devnet(function, *args):
    from node.devnet import DevnetError

    try:
        return function(*args)
    except DevnetError as exc:
        raise CliError(str(exc), EXIT_USAGE if exc.usage else EXIT_REFUSED) from None


# --- bench ----------------------------------------------------------------------------


def bench_ledger(args: argparse.Namespace, out: Output) -> int:
    from node.bench import bench_ledger as bench
    from node.bench import print_report

    report = bench(args.txs, args.block_size, min(args.txs, 20_000))
    print_report(report, out.as_json)
    return EXIT_OK if report.get("state_root_matches", True) else EXIT_REFUSED


def bench_network(args: argparse.Namespace, out: Output) -> int:
    import asyncio

    from node.bench import print_report
    from node.bench_network import BenchError
    from node.bench_network import bench_network as bench

    try:
        report = asyncio.run(
            bench(args.validators, args.auditors, args.txs, args.half_load_seconds)
        )
    except BenchError as exc:
        raise CliError(str(exc), EXIT_REFUSED) from None
    print_report(report, out.as_json)
    return EXIT_OK


# --- the parser -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="perk",
        description="perkchain node and client",
        parents=[json_parent()],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    add_init_parser(commands)
    add_genesis_parser(commands)
    add_node_parser(commands)
    add_devnet_parser(commands)
    add_wallet_parsers(commands)
    add_chain_parsers(commands)
    add_bench_parser(commands)
    add_audit_parser(commands)
    add_replay_parser(commands)
    return parser


def add_init_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("init", help="create a node home", parents=[json_parent()])
    p.add_argument("--home", required=True, metavar="DIR")
    p.add_argument("--name", help="node name (default: the folder's name)")
    p.add_argument("--kind", choices=("validator", "auditor"), default="validator")
    p.add_argument("--api-port", type=port_number, default=ApiSection.port)
    p.add_argument("--p2p-port", type=port_number, default=P2PSection.port)
    p.set_defaults(handler=init_home)


def add_genesis_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "genesis", help="write a genesis.json", parents=[json_parent()]
    )
    p.add_argument("--out", required=True, metavar="FILE")
    p.add_argument("--force", action="store_true", help="replace an existing FILE")
    p.add_argument("--chain-id", required=True, metavar="ID")
    p.add_argument(
        "--validator", action="append", required=True, metavar="NAME=ADDRESS"
    )
    p.add_argument("--admin", action="append", required=True, metavar="ADDRESS")
    p.add_argument("--merchant", action="append", metavar="ADDRESS:NAME:RATE:CAP")
    p.add_argument(
        "--transfers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="allow customer-to-customer transfers (default: allowed)",
    )
    p.add_argument("--utc-offset-minutes", type=int, default=0, metavar="M")
    p.add_argument("--time-ms", type=non_negative_int, metavar="T")
    p.add_argument("--devnet", action="store_true", help="mark a development chain")
    p.set_defaults(handler=make_genesis)


def add_node_parser(commands: argparse._SubParsersAction) -> None:
    node = commands.add_parser("node", help="run a node")
    sub = node.add_subparsers(dest="node_command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("run", help="run a node in the foreground")
    p.add_argument("--home", required=True, metavar="DIR")
    p.set_defaults(handler=run_node)


def add_devnet_parser(commands: argparse._SubParsersAction) -> None:
    devnet = commands.add_parser(
        "devnet", help="a local network", parents=[json_parent()]
    )
    sub = devnet.add_subparsers(dest="devnet_command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser("up", help="create or restart it", parents=[json_parent()])
    p.add_argument("--home", required=True, metavar="DIR")
    p.add_argument(
        "--validators", type=positive_int, default=DEFAULT_VALIDATORS, metavar="N"
    )
    p.add_argument(
        "--auditors", type=non_negative_int, default=DEFAULT_AUDITORS, metavar="M"
    )
    p.add_argument("--chain-id", default="perk-devnet-1", metavar="ID")
    p.add_argument(
        "--timeout", type=positive_float, default=30.0, metavar="S",
        help="how long to wait for every node's API (default: %(default)s)",
    )  # fmt: skip
    p.set_defaults(handler=devnet_up)

    p = sub.add_parser("status", help="its nodes", parents=[json_parent()])
    p.add_argument("--home", required=True, metavar="DIR")
    p.set_defaults(handler=devnet_status)

    p = sub.add_parser("down", help="stop its nodes", parents=[json_parent()])
    p.add_argument("--home", required=True, metavar="DIR")
    p.add_argument(
        "--timeout", type=positive_float, default=10.0, metavar="S",
        help="wait before SIGKILL (default: %(default)s)",
    )  # fmt: skip
    p.set_defaults(handler=devnet_down)

    p = sub.add_parser(
        "time",
        help="move the devnet's shared clock forward (time travel)",
        parents=[json_parent()],
    )
    p.add_argument("--home", required=True, metavar="DIR")
    moves = p.add_mutually_exclusive_group(required=True)
    moves.add_argument(
        "--set-ms",
        type=non_negative_int,
        metavar="MS",
        help="stop the clock at this Unix time in milliseconds",
    )
    moves.add_argument(
        "--advance",
        type=positive_float,
        metavar="S",
        help="move the clock this many seconds forward",
    )
    moves.add_argument("--show", action="store_true", help="print the clock")
    p.set_defaults(handler=devnet_time)  # fmt: skip


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="benchmarks", parents=[json_parent()])
    sub = bench.add_subparsers(dest="bench_command", metavar="COMMAND")
    sub.required = True
    p = sub.add_parser(
        "ledger", help="ledger throughput on this machine", parents=[json_parent()]
    )
    p.add_argument("--txs", type=positive_int, default=100_000, metavar="N")
    p.add_argument("--block-size", type=positive_int, default=1000, metavar="B")
    p.set_defaults(handler=bench_ledger)
    for name, validators, auditors, default_txs, text in (
        ("node", 1, 0, 60_000, "one validator process, load over HTTP"),
        ("devnet", 4, 1, 20_000, "four validators and an auditor, load over HTTP"),
    ):
        p = sub.add_parser(name, help=text, parents=[json_parent()])
        p.add_argument("--txs", type=positive_int, default=default_txs, metavar="N")
        p.add_argument("--half-load-seconds", type=float, default=10.0, metavar="S")
        p.set_defaults(handler=bench_network, validators=validators, auditors=auditors)


# --- running a command ----------------------------------------------------------------


def run(argv: list[str] | None = None) -> int:
    """Parse `argv`, run the command, and turn expected failures into exit codes."""
    args = build_parser().parse_args(argv)
    out = Output(getattr(args, "json", False))
    try:
        return args.handler(args, out)
    except CliError as exc:
        out.error(exc.message, **exc.fields)
        return exc.exit_code
    except NodeUnreachable as exc:
        out.error(str(exc))
        return EXIT_UNREACHABLE
    except ApiError as exc:
        out.error(describe_api_error(exc), **problem_fields(exc))
        # A node that is busy or rate limiting is, for a script, one to retry
        # later, like one that cannot be reached.
        busy = isinstance(exc, Unavailable | TooManyRequests)
        return EXIT_UNREACHABLE if busy else EXIT_REFUSED
    except (ConfigError, GenesisError, AddressError, KeystoreError) as exc:
        out.error(str(exc))
        return EXIT_USAGE
    except OSError as exc:
        # A file or folder named on the command line that cannot be used.
        where = f"{exc.filename}: " if exc.filename else ""
        out.error(f"{where}{exc.strerror or exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130


def describe_api_error(exc: ApiError) -> str:
    text = f"{exc.code} (HTTP {exc.status})"
    if exc.detail:
        text += f": {exc.detail}"
    if exc.retry_after is not None:
        text += f"; retry after {exc.retry_after:g}s"
    return text


def problem_fields(exc: ApiError) -> dict:
    """The problem's machine-readable fields, for --json error output."""
    fields = {"code": exc.code, "status": exc.status}
    if isinstance(exc.body, dict):
        for key, value in exc.body.items():
            if key not in ("type", "title", "detail"):
                fields.setdefault(key, value)
    if exc.retry_after is not None:
        fields["retry_after"] = exc.retry_after
    return fields


def main(argv: list[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
