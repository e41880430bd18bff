"""What every `perk` command shares: exit codes, errors and output.

Output is for people by default and one JSON document per command with
`--json`. Expected failures become one line on stderr and an exit code a
script can branch on:

    0  success
    1  refused by the node or the ledger (a rejected transaction, a receipt
       with a non-OK code, a query for something that does not exist)
    2  usage or configuration error (bad arguments, addresses, files)
    3  node unreachable, or unavailable after the retries it asked for
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3

DEFAULT_API = "http://127.0.0.1:8700"


class CliError(Exception):
    """An expected failure: printed as one line, exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE, **fields: Any):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
        self.fields = fields


class Output:
    """Writes results as text or JSON, and errors as one line on stderr."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json

    def emit(self, doc: Any, human: Callable[[], None] | None = None) -> None:
        if self.as_json:
            print(json.dumps(doc, sort_keys=False))
        elif human is not None:
            human()
        else:
            print_fields(doc)

    def line(self, text: str) -> None:
        """Text for people only; JSON output carries the same facts in `emit`."""
        if not self.as_json:
            print(text)

    def error(self, message: str, **fields: Any) -> None:
        if self.as_json:
            doc = {"error": message, **fields}
            print(json.dumps(doc), file=sys.stderr)
        else:
            print(f"perk: error: {message}", file=sys.stderr)


def print_fields(doc: Any, prefix: str = "") -> None:
    """Aligned `key  value` lines; nested objects flattened with dots."""
    rows = list(flatten(doc, prefix))
    if not rows:
        return
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def flatten(doc: Any, prefix: str = "") -> list[tuple[str, str]]:
    if not isinstance(doc, dict):
        return [(prefix or "value", format_value(doc))]
    rows: list[tuple[str, str]] = []
    for key, value in doc.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            rows.extend(flatten(value, name))
        else:
            rows.append((name, format_value(value)))
    return rows


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | dict):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def print_table(rows: list[dict], columns: list[str]) -> None:
    """A plain column table; missing values print as '-'."""
    cells = [[format_value(row.get(c)) for c in columns] for row in rows]
    widths = [
        max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(columns)
    ]
    print(
        "  ".join(
            c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)
        ).rstrip()
    )
    for line in cells:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


# --- shared options -------------------------------------------------------------------


def json_parent() -> argparse.ArgumentParser:
    """`--json`, accepted after the command name as well as before it."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print one JSON document instead of text",
    )
    return parent


def api_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--api",
        default=os.environ.get("PERK_API", DEFAULT_API),
        metavar="URL",
        help="node API URL (default: $PERK_API or %(default)s)",
    )
    parent.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="HTTP timeout in seconds (default: %(default)s)",
    )
    return parent


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text}")
    return value


def port_number(text: str) -> int:
    value = non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"not a port number: {text}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value
