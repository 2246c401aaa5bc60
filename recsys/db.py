"""Database helpers shared by the ingestion paths."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from django.db import OperationalError, connection, transaction

logger = logging.getLogger(__name__)
T = TypeVar("T")
RETRYABLE = {"40P01", "40001"}  # deadlock_detected, serialization_failure
LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout ran out
QUERY_CANCELED = "57014"  # statement_timeout ran out


def sqlstate(error: Exception) -> str | None:
    """The SQLSTATE of a database error: psycopg's own, or that of the one Django wrapped (its cause)."""
    return getattr(error, "sqlstate", None) or getattr(error.__cause__, "sqlstate", None)


def lock_not_available(error: Exception) -> bool:
    """Whether a database error is a ``lock_timeout`` that ran out (a delete's bound behind a roll-up)."""
    return sqlstate(error) == LOCK_NOT_AVAILABLE


# DDL on a partitioned table (create, attach or drop a partition) locks its parent exclusively, and
# while it waits for that lock every query on the table queues behind it: behind a long reader (a
# training run's snapshot, an export) a wait without bound would stop ingestion and serving. So DDL
# waits this long at most; the beat tries again on its next run, an import a few times at once.
DDL_LOCK_TIMEOUT_MS = 1_000


@contextmanager
def ddl_lock_timeout(cursor: Any, milliseconds: int = DDL_LOCK_TIMEOUT_MS) -> Iterator[None]:
    """Bound the lock waits of the statements in the block (see DDL_LOCK_TIMEOUT_MS), then give the
    transaction back the bound it had: a plain SET LOCAL would last to the end of a caller's
    transaction. (A block that fails inside a savepoint has its setting rolled back with it.)"""
    cursor.execute("SELECT current_setting('lock_timeout')")
    before = cursor.fetchone()[0]
    cursor.execute("SELECT set_config('lock_timeout', %s, true)", [f"{milliseconds}ms"])
    yield
    cursor.execute("SELECT set_config('lock_timeout', %s, true)", [before])


def unless_locked(work: Callable[[], T], what: str) -> T | None:
    """``work()``, or None (logged) when its DDL did not get its locks within its lock timeout
    (``ddl_lock_timeout``): whoever runs it again later (the beat's next run) tries again."""
    try:
        return work()
    except Exception as error:
        if not lock_not_available(error):
            raise
        logger.warning("%s waits for a busy table; it is tried again later", what)
        return None


def query_canceled(error: Exception) -> bool:
    """Whether a database error is a ``statement_timeout`` that ran out (the serving time limit)."""
    return sqlstate(error) == QUERY_CANCELED


def atomic_with_retry(work: Callable[[], T], attempts: int = 3) -> T:
    """Run ``work`` in a transaction, retrying a deadlock with a concurrent writer.

    Writers take row locks in sorted order, so deadlocks are rare; a retry makes them harmless.
    """
    for attempt in range(attempts):
        try:
            with transaction.atomic():
                return work()
        except OperationalError as exc:
            state = sqlstate(exc)
            if state not in RETRYABLE or attempt == attempts - 1:
                raise
            logger.warning("retrying a transaction after %s (attempt %d)", state, attempt + 1)
    raise AssertionError("unreachable")


def statement_timeout_set(milliseconds: int | None) -> None:
    """Bound the statements of this connection (``None``: back to its configured default).

    Idempotent and cheap: a round trip only when the wanted value differs from the one set last on
    this connection (a new connection starts at its default; see ``statement_timeout_forget``).
    """
    if getattr(connection, "recsys_statement_timeout", None) == milliseconds:
        return
    with connection.cursor() as cursor:
        if milliseconds is None:
            cursor.execute("RESET statement_timeout")
        else:
            cursor.execute("SELECT set_config('statement_timeout', %s, false)", [f"{int(milliseconds)}ms"])
    connection.recsys_statement_timeout = milliseconds  # type: ignore[attr-defined]


def statement_timeout_forget(sender: object, connection: Any, **kwargs: object) -> None:
    """``connection_created`` receiver: a fresh connection runs at its configured default."""
    connection.recsys_statement_timeout = None
