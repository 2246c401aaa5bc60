"""A serving request's time budget: every SQL statement runs with the time the request has left."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from recsys.errors import ServiceUnavailable

# Re-arm the statement timeout only once the request has spent this much more of its budget than the
# timeout set last, so a fast request costs no round trip beyond the one that set its full budget;
# a statement may then run at most this long past the deadline.
REARM_SLACK_MS = 100


class DeadlineExceeded(ServiceUnavailable):
    """The request spent its serving time limit before this statement could start."""


@dataclass
class Deadline:
    started: float  # time.monotonic() when the request reached the application
    milliseconds: int | None = None  # None: not a serving request (no budget)
    lifted: bool = False  # the view chose to go past the budget (an answer computed once, then cached)

    def remaining_ms(self) -> float:
        return (self.milliseconds or 0) - (time.monotonic() - self.started) * 1000


_current: ContextVar[Deadline | None] = ContextVar("recsys_deadline", default=None)


def deadline_begin() -> None:
    """The request starts now; its budget (if it is a serving request) is set by ``deadline_arm``."""
    _current.set(Deadline(started=time.monotonic()))


def deadline_arm(*, milliseconds: int) -> None:
    """Bound the rest of this request to ``milliseconds`` after ``deadline_begin``."""
    deadline = _current.get()
    if deadline is not None:
        deadline.milliseconds = milliseconds


def deadline_lift() -> None:
    """Let the rest of this request run past its budget: for work that is rare, bounded by a
    timeout of its own, and cached for the requests that follow (e.g. popular over a new window)."""
    deadline = _current.get()
    if deadline is not None:
        deadline.lifted = True


def deadline_end() -> bool:
    """Forget this request's budget; True when it had one and went past it."""
    deadline = _current.get()
    _current.set(None)
    return deadline is not None and _armed(deadline) and deadline.remaining_ms() <= 0


def deadline_running() -> bool:
    """Whether this request's statements are bounded by a serving deadline now."""
    deadline = _current.get()
    return deadline is not None and _armed(deadline)


def deadline_execute(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]) -> Any:
    """Django execute wrapper: refuse a statement once the budget is spent, and cut each one at the
    time left (statement_timeout, re-armed as the budget runs down)."""
    deadline = _current.get()
    if deadline is None or not _armed(deadline):
        return execute(sql, params, many, context)
    remaining = int(deadline.remaining_ms())
    if remaining <= 0:
        raise DeadlineExceeded(
            f"the request took longer than the serving time limit of {deadline.milliseconds} ms; retry shortly",
            details={"limit_ms": deadline.milliseconds},
        )
    connection = context["connection"]
    armed = getattr(connection, "recsys_statement_timeout", None)
    if not armed or armed > remaining + REARM_SLACK_MS:
        _statement_timeout_arm(connection, remaining)
    return execute(sql, params, many, context)


def deadline_connection_arm(connection: Any) -> None:
    """Bound another connection this request reads from (a read replica) as its primary connection
    is bounded: by the time left in a serving request, else by the connection's default (a
    persistent connection may still carry a short timeout from an earlier request)."""
    deadline = _current.get()
    with connection.wrap_database_errors:  # a broken connection raises Django's error, as queries do
        if deadline is not None and _armed(deadline):
            connection.ensure_connection()
            _statement_timeout_arm(connection, max(int(deadline.remaining_ms()), 1))
        elif getattr(connection, "recsys_statement_timeout", None) is not None:
            connection.ensure_connection()
            with connection.connection.cursor() as cursor:
                cursor.execute("RESET statement_timeout")
            connection.recsys_statement_timeout = None


def _armed(deadline: Deadline) -> bool:
    return bool(deadline.milliseconds) and not deadline.lifted


def _statement_timeout_arm(connection: Any, milliseconds: int) -> None:
    # On the driver's connection, beneath Django's execute wrappers: this statement is not bounded
    # itself. Recorded where recsys.db.statement_timeout_set looks, so the next request re-arms.
    with connection.connection.cursor() as cursor:
        cursor.execute("SELECT set_config('statement_timeout', %s, false)", [f"{milliseconds}ms"])
    connection.recsys_statement_timeout = milliseconds
