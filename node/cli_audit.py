"""`perk audit`: verify every block, commit and root of a chain from genesis."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from node.cli_common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CliError,
    Output,
    json_parent,
)


def audit(args: argparse.Namespace, out: Output) -> int:
    from node.audit import audit_api, audit_store
    from state.genesis import load_genesis

    if (args.home is None) == (args.api is None):
        raise CliError("give exactly one of --home or --api", EXIT_USAGE)
    if args.home is not None:
        from node.config import load_config
        from state.store import Store

        home = Path(args.home)
        config = load_config(home)
        genesis = load_genesis(args.genesis or config.genesis_path)
        store = Store(config.data_dir, genesis)
        try:
            report = audit_store(genesis, store)
        finally:
            store.close()
    else:
        from client.http import AsyncClient

        if args.genesis is None:
            raise CliError(
                "--api needs --genesis: the audit trusts only it", EXIT_USAGE
            )
        genesis = load_genesis(args.genesis)

        async def run() -> object:
            async with AsyncClient(args.api, timeout=args.timeout) as api:
                return await audit_api(genesis, api)

        report = asyncio.run(run())

    doc = report.to_json()

    def human() -> None:
        verdict = "OK" if report.ok else "FAILED"
        print(f"audit {verdict}")
        for key in ("blocks", "transactions", "signatures", "commits"):
            print(f"{key:<14}{doc[key]}")
        print(f"{'replayed at':<14}{doc['tx_per_s']} tx/s")
        print(f"{'state_root':<14}{report.state_root}  (replayed)")
        if report.expected_state_root:
            same = report.expected_state_root == report.state_root
            print(
                f"{'node root':<14}{report.expected_state_root}  "
                f"({'the same' if same else 'DIFFERENT'})"
            )
        for failure in report.failures:
            print(f"failure       {failure}")

    out.emit(doc, human)
    return EXIT_OK if report.ok else EXIT_REFUSED


def add_audit_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "audit",
        help="verify a chain from genesis: hash links, commits, signatures, roots",
        parents=[json_parent()],
    )
    p.add_argument("--home", metavar="DIR", help="a stopped node's home folder")
    p.add_argument("--api", metavar="URL", help="a running node's API")
    p.add_argument("--genesis", metavar="FILE", help="the genesis to trust")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S")
    p.set_defaults(handler=audit)
