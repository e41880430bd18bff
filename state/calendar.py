"""The program calendar: days, months and years in the program's time zone.

Daily caps, end-of-month expiry and per-day counters all need to know which
day a block time falls on. The program states one fixed offset from UTC in
minutes (genesis `program.utc_offset_minutes`); there are no daylight-saving
rules, so the mapping from block time to program day is a pure integer
function that every validator computes alike. Days are half-open
[start, start + 86,400) in that zone.

Civil dates use the proleptic Gregorian calendar (days_from_civil and
civil_from_days follow Howard Hinnant's integer algorithms).
"""

from __future__ import annotations

from enum import IntEnum

SECONDS_PER_DAY = 86_400


class ExpiryPolicy(IntEnum):
    """When coins stop counting; see expiry_time."""

    NEVER = 0
    DAYS = 1  # at the end of the Nth program day after the day they count
    END_OF_MONTH = 2  # at the end of the program month in which they count
    END_OF_YEAR = 3  # at the end of the program year in which they count


def program_day(now_s: int, offset_minutes: int) -> int:
    """Days since 1970-01-01 in the program zone, rounded down."""
    return (now_s + offset_minutes * 60) // SECONDS_PER_DAY


def day_start(day: int, offset_minutes: int) -> int:
    """The block time (UTC seconds) at which program day `day` begins."""
    return day * SECONDS_PER_DAY - offset_minutes * 60


def days_from_civil(year: int, month: int, day: int) -> int:
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146_097 + doe - 719_468


def civil_from_days(days: int) -> tuple[int, int, int]:
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


def first_day_of_next_month(day: int) -> int:
    year, month, _ = civil_from_days(day)
    if month == 12:
        return days_from_civil(year + 1, 1, 1)
    return days_from_civil(year, month + 1, 1)


def first_day_of_next_year(day: int) -> int:
    year, _, _ = civil_from_days(day)
    return days_from_civil(year + 1, 1, 1)


def expiry_time(policy: int, days: int, available_s: int, offset_minutes: int) -> int:
    """When coins that become spendable at `available_s` expire; 0 is never.

    Expiry always falls on a program midnight, so coins earned on one day by
    one issuer share a single lot and a single index entry, and an expiry
    time is exact to the second: a lot with expires_at T counts at T - 1 and
    is gone at T.
    """
    if policy == ExpiryPolicy.NEVER:
        return 0
    today = program_day(available_s, offset_minutes)
    if policy == ExpiryPolicy.DAYS:
        return day_start(today + days + 1, offset_minutes)
    if policy == ExpiryPolicy.END_OF_MONTH:
        return day_start(first_day_of_next_month(today), offset_minutes)
    return day_start(first_day_of_next_year(today), offset_minutes)
