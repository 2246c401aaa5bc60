"""Recommendation ids: minted per served answer, carrying when it was served and which experiment
variant served it, so that impressions and attributed clicks need no row written at serve time."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime

# A variant's name is a slug so that it can travel inside the id (and in URLs) unescaped.
VARIANT_NAME_PATTERN = r"[a-z0-9_-]{1,32}"
RECOMMENDATION_ID_MAX_LENGTH = 80
_FUTURE_SLACK_MS = 86_400_000  # clocks of the processes that mint and read ids may differ this much
_RANDOM_BYTES = 9  # 12 url-safe characters: 72 bits, collision-free for any realistic volume
_ID_RE = re.compile(rf"r([0-9a-z]{{1,11}})\.([A-Za-z0-9_-]{{12}})(?:\.e([0-9]{{1,18}})\.({VARIANT_NAME_PATTERN}))?")


@dataclass(frozen=True)
class RecommendationRef:
    """What a recommendation id says about the answer that carried it."""

    issued_at: datetime
    experiment_id: int | None
    variant: str | None


def recommendation_id_mint(*, experiment_id: int | None = None, variant: str | None = None) -> str:
    """A new id for one served answer: ``r<ms base36>.<random>[.e<experiment>.<variant>]``."""
    if (experiment_id is None) != (variant is None):
        raise ValueError("experiment_id and variant go together")
    stamp = _base36(time.time_ns() // 1_000_000)
    value = f"r{stamp}.{secrets.token_urlsafe(_RANDOM_BYTES)}"
    if experiment_id is not None:
        if not re.fullmatch(VARIANT_NAME_PATTERN, variant or ""):
            raise ValueError(f"variant names are {VARIANT_NAME_PATTERN}")
        value += f".e{experiment_id}.{variant}"
    return value


def recommendation_id_read(value: object) -> RecommendationRef | None:
    """The parts of an id this service minted; ``None`` for anything else (a client's typo, an id
    from another system): such ids are still stored, they just attribute to no experiment."""
    if not isinstance(value, str) or len(value) > RECOMMENDATION_ID_MAX_LENGTH:
        return None
    match = _ID_RE.fullmatch(value)
    if match is None:
        return None
    stamp, _, experiment, variant = match.groups()
    millis = int(stamp, 36)
    if millis > time.time_ns() // 1_000_000 + _FUTURE_SLACK_MS:
        return None  # "issued" in the future: not minted here (and past datetime's range at the extreme)
    issued_at = datetime.fromtimestamp(millis / 1000, tz=UTC)
    return RecommendationRef(issued_at, int(experiment) if experiment else None, variant)


def _base36(number: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        number, remainder = divmod(number, 36)
        out = digits[remainder] + out
        if number == 0:
            return out
