"""How the operator admin writes times: compact moments in lists, and messages without raw timestamps."""

from __future__ import annotations

import re
from datetime import datetime

from django.utils import timezone

# str() of an aware datetime, as domain messages carry it: "2026-12-03 22:48:22.116288+00:00".
RAW_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[+-]\d{2}:\d{2}|Z)")


def moment(value: datetime | None, *, now: datetime | None = None) -> str:
    """A moment to the second, in the site's time zone, without the date when it is today."""
    if value is None:
        return "—"
    local, today = timezone.localtime(value), timezone.localtime(now or timezone.now()).date()
    return local.strftime("%H:%M:%S" if local.date() == today else "%Y-%m-%d %H:%M")


def relative(value: datetime, *, now: datetime | None = None) -> str:
    """ "in 4 min", "2 h ago", "just now"."""
    seconds = (value - (now or timezone.now())).total_seconds()
    size = abs(seconds)
    if size < 60:
        return "just now" if size < 5 else (f"in {size:.0f} s" if seconds > 0 else f"{size:.0f} s ago")
    amount = (
        f"{size / 60:.0f} min"
        if size < 3600
        else (f"{size / 3600:.0f} h" if size < 172_800 else f"{size / 86_400:.0f} days")
    )
    return f"in {amount}" if seconds > 0 else f"{amount} ago"


def timestamps_humanized(text: str, *, now: datetime | None = None) -> str:
    """``text`` with each raw timestamp written as "22:48:22 UTC (in 4 min)"."""

    def written(match: re.Match[str]) -> str:
        value = datetime.fromisoformat(match.group(0).replace("Z", "+00:00"))
        zone = timezone.localtime(value).strftime("%Z")
        return f"{moment(value, now=now)} {zone} ({relative(value, now=now)})"

    return RAW_TIMESTAMP.sub(written, text)
