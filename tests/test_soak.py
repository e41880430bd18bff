"""The soak's own arithmetic: how a budget becomes the long cases' sizes, and
that its verdict fails on any lost, conflicting or divergent count (the soak
itself runs under `make soak`, not here)."""

from __future__ import annotations

import pytest

from tests.soak import FULL_KILLS, FULL_OUTAGE_S, passed, plan_for

CLEAN = {
    "lost": 0,
    "conflicting": 0,
    "divergent": 0,
    "check_failures": [],
    "bad_input_failures": [],
}


def test_a_long_budget_runs_the_cases_at_full_size():
    plan = plan_for(60)
    assert plan.outage_s == FULL_OUTAGE_S
    assert plan.kills == FULL_KILLS


def test_a_short_budget_scales_the_cases_down_but_runs_each():
    plan = plan_for(2)
    assert 0 < plan.outage_s < FULL_OUTAGE_S
    assert 1 <= plan.kills < FULL_KILLS
    assert plan.outage_s <= 2 * 60


def test_a_clean_report_passes():
    assert passed(CLEAN)


@pytest.mark.parametrize(
    "broken",
    [
        {"lost": 1},
        {"conflicting": 1},
        {"divergent": 2},
        {"check_failures": ["no commits within 30s after kill"]},
        {"bad_input_failures": ["bad_body at v1: answered 500"]},
    ],
)
def test_any_violation_fails_the_soak(broken):
    assert not passed({**CLEAN, **broken})
