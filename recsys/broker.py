"""Celery's Redis transport, with channels that keep their connection parameters after a broker outage.

When Redis goes away while the worker holds unacknowledged messages (tasks running with late
acknowledgement, or waiting for their countdown), Celery collects the broker connection, which
sets its transport's ``client`` to None, and then closes the connection again. That second close
reaches the default channel, whose first close had failed on the dead socket; it rebuilds its
pool to put the held messages back, and kombu 5.7 reads the host from ``transport.client``:
``AttributeError: 'NoneType' object has no attribute 'hostname'``, which Celery treats as
unrecoverable (the worker stops consuming and exits). Here a channel remembers the parameters it
connected with, so that close fails with the connection error Celery expects and retries, and
the messages stay in Redis's unacked set until they are acknowledged or restored.

Settings select it: the broker URL's scheme is ``ALIAS`` (``recsysredis+socket://`` for a Unix
socket) and ``broker_transport`` names it for ``redis://`` URLs.
"""

from __future__ import annotations

from typing import Any

import redis
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

ALIAS = "recsysredis"


class Channel(kombu_redis.Channel):
    _known_connparams: dict[bool, dict[str, Any]] | None = None

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is not None and transport.client is not None:
            params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)
            self._known_connparams = {**(self._known_connparams or {}), asynchronous: dict(params)}
            return params
        known = (self._known_connparams or {}).get(asynchronous)
        if known is None:  # never connected: there is nothing to reconnect to
            raise redis.ConnectionError("the broker connection of this channel was closed")
        return dict(known)


class Transport(kombu_redis.Transport):
    Channel = Channel


TRANSPORT_ALIASES[ALIAS] = f"{__name__}:Transport"
