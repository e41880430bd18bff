"""`perk replay`: the main job, real retail purchases through a local network."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from node.cli_common import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    CliError,
    Output,
    json_parent,
    positive_int,
)


def replay(args: argparse.Namespace, out: Output) -> int:
    from tqdm import tqdm

    from node.replay import ReplayError
    from node.replay import replay as run_replay

    bar = None

    def progress_factory(total_rows: int):
        nonlocal bar
        bar = tqdm(
            total=total_rows,
            desc="rows used",
            unit="rows",
            # Piped to a file, a bar is hundreds of carriage returns on one line.
            disable=args.quiet or not sys.stderr.isatty(),
            file=sys.stderr,
            dynamic_ncols=True,
        )

        def advance(rows: int, height: int, tx_per_s: float) -> None:
            bar.set_postfix(height=height, tx_per_s=round(tx_per_s), refresh=False)
            bar.update(rows)

        return advance

    try:
        report = asyncio.run(
            run_replay(Path(args.home), args.limit, args.keep, progress_factory)
        )
    except ReplayError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    finally:
        if bar is not None:
            bar.close()

    def human() -> None:
        print_report(report)

    out.emit(report, human)
    return EXIT_OK if report["audit_ok"] else EXIT_REFUSED


def print_report(r: dict) -> None:
    print("replay of the UCI Online Retail data")
    print(f"  rows read        {r['rows_read']:>10,}   used {r['rows_used']:,}")
    for reason, n in r["rows_skipped"].items():
        print(f"    skipped {reason:<22}{n:>10,}")
    print(
        f"  invoices         {r['invoices']:>10,}   sales {r['sales']:,}, "
        f"cancellations {r['cancellations']:,} (unmatched {r['unmatched_refunds']:,})"
    )
    committed, ok = r["committed"], r["committed_ok"]
    print(f"  transactions     {committed:>10,}   committed, ok {ok:,}")
    for kind, n in r["by_kind"].items():
        print(f"    {kind:<30}{n:>10,}")
    for code, n in r["failed_by_code"].items():
        print(f"    failed {code:<23}{n:>10,}")
    print(f"  coins issued     {r['coins_issued']:>10,}")
    print(f"  coins redeemed   {r['coins_redeemed']:>10,}")
    print(f"  coins clawed back {r['coins_clawed_back']:>9,}")
    print(f"  coins expired    {r['coins_expired']:>10,}")
    print(f"  coins outstanding {r['coins_outstanding']:>9,}   (net of customer debt)")
    print("  top merchants: coins issued, redeemed there; settlement in pence")
    print("  (net above zero: the company owes the merchant; below: the merchant owes)")
    print(f"    {'':<18}{'issued':>12}{'redeemed':>12}{'fee':>12}{'reimbursed':>12}"
          f"{'net':>12}")  # fmt: skip
    for m in r["top_merchants"]:
        print(
            f"    {m['merchant']:<18}{m['issued']:>12,}{m['redeemed_at']:>12,}"
            f"{m['fee_pence']:>12,}{m['reimbursement_pence']:>12,}"
            f"{m['net_pence']:>12,}"
        )
    print(
        f"  throughput       {r['tx_per_s']:>10,} tx/s over {r['seconds']} s, "
        f"{r['height']} blocks"
    )
    print(f"  latency          p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms")
    a = r["audit"]
    verdict = "OK" if r["audit_ok"] else "FAILED"
    print(
        f"  audit (auditor)  {verdict}: {a['blocks']:,} blocks, "
        f"{a['transactions']:,} txs, {a['signatures']:,} signatures verified"
    )
    agree = (
        f"the same on all {r['nodes']} nodes"
        if r["state_roots_agree"]
        else "NODES DISAGREE"
    )
    print(f"  state root       {r['state_root']} ({agree})")
    for failure in a["failures"]:
        print(f"    failure: {failure}")


def add_replay_parser(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "replay",
        help="replay real retail purchases through a local devnet",
        parents=[json_parent()],
    )
    p.add_argument(
        "--home",
        default="devnet",
        metavar="DIR",
        help="devnet folder, replaced (default: %(default)s)",
    )
    p.add_argument(
        "--limit", type=positive_int, metavar="N", help="replay only the first N rows"
    )
    p.add_argument(
        "--keep", action="store_true", help="leave the network running at the end"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=replay)  # fmt: skip
