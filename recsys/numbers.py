"""Numbers as JSON gives them: pure (no framework), shared by validation, ingestion and the ranking
stage's features."""

from __future__ import annotations

import math
from typing import TypeGuard


def finite_number(value: object) -> TypeGuard[int | float]:
    """A JSON number (not a boolean) that a float holds finitely. Python's JSON reads ``1e999`` as
    infinity and keeps integers of any length, on which ``math.isfinite`` raises and numpy's refuses."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False
