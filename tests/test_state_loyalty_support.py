"""Shared helpers for the loyalty tests: a genesis with program rules, program
changes, blocks at exact seconds, and the supply identity after every block."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from client.keys import Keypair
from state.changes import ChangeAction
from state.codes import Code
from state.execute import BlockResult
from state.genesis import Genesis, parse_genesis
from state.settlement import settlement, supply
from tests.state_helpers import (
    ADMIN,
    CHAIN,
    DEFAULT_MERCHANTS,
    GENESIS_MS,
    VALIDATOR,
    Chain,
    b,
)

Maker = Callable[[int], bytes]  # expires_at -> signed transaction


def loyalty_genesis(
    program: dict | None = None,
    *,
    merchants: Sequence[dict] = DEFAULT_MERCHANTS,
    admins: Iterable[Keypair] = (ADMIN,),
    genesis_time_ms: int = GENESIS_MS,
) -> Genesis:
    return parse_genesis(
        {
            "chain_id": CHAIN,
            "genesis_time_ms": genesis_time_ms,
            "validators": [{"name": "v1", "key": VALIDATOR.address}],
            "admins": [a.address for a in admins],
            "program": program or {},
            "merchants": list(merchants),
        }
    )


class LoyaltyChain(Chain):
    """A Chain that checks the supply identity after every block it commits."""

    def block(self, raws, time_ms=None) -> BlockResult:
        result = super().block(raws, time_ms)
        self.check_supply()
        return result

    def check_supply(self) -> None:
        s = supply(self.store.state_items())
        assert s.holds, s
        table = settlement(self.store.state_items())
        assert table.total("issued") == s.issued
        assert table.total("redeemed") == s.redeemed == sum(table.matrix.values())
        assert table.liability + s.redeemed + s.expired + s.clawed_back == (
            s.issued + s.debt
        )

    @property
    def now(self) -> int:
        """The time of the last block, in seconds."""
        return self.store.time_ms // 1000

    def at(self, t_s: int, *makers: Maker) -> list[Code]:
        """Commit one block at second t_s holding the given transactions."""
        return self.run([make(t_s + 600) for make in makers], t_s * 1000)

    def next(self, *makers: Maker) -> list[Code]:
        return self.at(self.now + 1, *makers)

    def balance_at(self, kp: Keypair, t_s: int) -> int:
        acc = self.account(kp)
        return 0 if acc is None else acc.balance(t_s)


def change(action: ChangeAction, args: list, deadline: int | None = None,
           signer: Keypair = ADMIN) -> Maker:  # fmt: skip
    """A proposal maker; the deadline defaults to an hour after the expiry."""
    return lambda exp: b.propose_change(
        signer, CHAIN, exp, action, args, deadline or exp + 3600
    )


def award(m: Keypair, c: Keypair, order: str, amount: int, *extra) -> Maker:
    return lambda exp: b.award_purchase(m, CHAIN, exp, c, order, amount, *extra)


def refund(m: Keypair, order: str, amount: int) -> Maker:
    return lambda exp: b.refund_purchase(m, CHAIN, exp, order, amount)


def redeem(c: Keypair, m: Keypair, amount: int, ref: str = "") -> Maker:
    return lambda exp: b.redeem(c, CHAIN, exp, m, amount, ref)


def transfer(c: Keypair, to: Keypair, amount: int, memo: str = "") -> Maker:
    return lambda exp: b.transfer(c, CHAIN, exp, to, amount, memo)


def engage(signer: Keypair, c: Keypair, kind: int, ref: str) -> Maker:
    return lambda exp: b.engagement_reward(signer, CHAIN, exp, c, kind, ref)
