"""Rate strings such as ``600/min``: one parser for the settings, API keys and the throttles."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

PERIODS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
RATE_HELP = "a count per period such as '600/min' (periods: s, min, hour, day)"


class InvalidRate(ValueError):
    """Not a rate string; the message says what one looks like."""


class Rate(NamedTuple):
    requests: int
    seconds: int


@lru_cache(maxsize=256)  # a handful of distinct strings per process; the throttles parse per request
def parse_rate(rate: str) -> Rate:
    """``'600/min'`` → Rate(600, 60); raises InvalidRate for anything else (``'0/min'`` included)."""
    count, _, period = rate.partition("/")
    seconds = PERIODS.get(period.strip().lower())
    if seconds is None or not count.strip().isdigit() or int(count) < 1:
        raise InvalidRate(f"rate limit must be {RATE_HELP}, got {rate!r}")
    return Rate(int(count), seconds)
