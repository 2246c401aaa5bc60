"""Django's PostgreSQL backend whose per-request health check sends nothing while the connection is sound."""

from __future__ import annotations

import select

from django.db.backends.postgresql import base


class DatabaseWrapper(base.DatabaseWrapper):
    def close_if_health_check_failed(self) -> None:
        """Django checks a reused connection with ``SELECT 1`` before the first query of every
        request: a round trip per request, a sixth of an uncached recommendation's statements.
        An idle connection has nothing to read unless the server closed it (restart, idle
        timeout, a terminated backend) or sent an asynchronous message, so a socket with nothing
        to read passes at once, and only a readable one gets Django's ``SELECT 1``."""
        if self.connection is None or not self.health_check_enabled or self.health_check_done:  # type: ignore[attr-defined,has-type]
            return
        if self._nothing_to_read():
            self.health_check_done = True
            return
        super().close_if_health_check_failed()

    def _nothing_to_read(self) -> bool:
        try:
            poller = select.poll()
            poller.register(self.connection.fileno(), select.POLLIN | select.POLLPRI)
            return not poller.poll(0)
        except Exception:  # a closed or broken connection: Django's own check decides
            return False
