"""Determinism guard: the ledger (state/) reads no clock, randomness or
environment.

Every validator must compute the same state from the same blocks. Block time
is the only time the ledger may read; anything else (the wall clock, the
process environment, random numbers, the host's time zone) would let two
honest validators diverge. This test reads the source of every module in
state/ and fails on any import or call that could reach one of them.
Multi-process tests add the other half: every devnet node runs with its own
PYTHONHASHSEED and TZ (node.devnet), so hidden dependence on either shows up
as nodes that disagree.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

STATE = Path(__file__).resolve().parent.parent / "state"

# Modules the ledger must never import.
FORBIDDEN_MODULES = {
    "time", "datetime", "random", "secrets", "os", "uuid", "zoneinfo", "socket",
    "threading", "asyncio", "locale",
}  # fmt: skip
# Names that would reach the same things without an import of their own.
FORBIDDEN_CALLS = {"getenv", "environ", "urandom", "now", "utcnow", "time_ns"}


def ledger_modules() -> list[Path]:
    return sorted(STATE.glob("*.py"))


# The store, the signature cache and the encoder are not ledger rules: the
# store opens files (os.makedirs), the cache takes a lock shared with verify
# threads, and the encoder keeps one msgpack packer per thread.
NOT_RULES = {"store.py": {"os"}, "tx.py": {"threading"}, "codec.py": {"threading"}}


def forbidden_uses(source: str, allowed: set[str] = frozenset()) -> list[str]:
    """Forbidden modules imported and forbidden attributes used in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [(node.module or "").split(".")[0]]
        else:
            names = []
        found += [n for n in names if n in FORBIDDEN_MODULES and n not in allowed]
        if isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_CALLS:
            found.append(node.attr)
    return sorted(set(found))


@pytest.mark.parametrize("path", ledger_modules(), ids=lambda p: p.name)
def test_ledger_module_reads_no_clock_randomness_or_environment(path: Path):
    found = forbidden_uses(path.read_text(), NOT_RULES.get(path.name, set()))
    assert not found, f"{path.name} reaches {found}"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import time\nx = time.time()\n", ["time"]),
        ("from datetime import datetime\nx = datetime.now()\n", ["datetime", "now"]),
        ("import os\nseed = os.environ['SEED']\n", ["environ", "os"]),
        ("def f(rng):\n    return rng.urandom(4)\n", ["urandom"]),
        ("def f(account):\n    return account.today\n", []),
    ],
)
def test_the_guard_catches_clock_environment_and_randomness(source, expected):
    assert forbidden_uses(source) == expected
