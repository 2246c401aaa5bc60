"""Database helpers shared by the ingestion paths."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from django.db import OperationalError, transaction

logger = logging.getLogger(__name__)
T = TypeVar("T")
RETRYABLE = {"40P01", "40001"}  # deadlock_detected, serialization_failure


def atomic_with_retry(work: Callable[[], T], attempts: int = 3) -> T:
    """Run ``work`` in a transaction, retrying a deadlock with a concurrent writer.

    Writers take row locks in sorted order, so deadlocks are rare; a retry makes them harmless.
    """
    for attempt in range(attempts):
        try:
            with transaction.atomic():
                return work()
        except OperationalError as exc:
            sqlstate = getattr(exc.__cause__, "sqlstate", None)
            if sqlstate not in RETRYABLE or attempt == attempts - 1:
                raise
            logger.warning("retrying a transaction after %s (attempt %d)", sqlstate, attempt + 1)
    raise AssertionError("unreachable")
