"""The broker transport: every Celery connection uses it, and its channels keep their connection
parameters after Celery collected the connection (what a Redis outage with tasks in flight does)."""

from __future__ import annotations

from django.conf import settings

from recsys.broker import Transport
from recsys.celery import app


def test_celery_connects_to_the_broker_through_the_recsys_transport():
    with app.connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)


def test_a_channel_builds_its_pool_after_its_connection_was_collected():
    with app.connection_for_write() as connection:
        channel = connection.channel()
        assert channel.client.ping()
        before = channel._connparams()

        connection.collect()  # Celery's first step when the broker goes away: transport.client is None

        after = channel._connparams()
    assert (after["db"], after.get("path"), after.get("host")) == (before["db"], before.get("path"), before.get("host"))
    assert settings.CELERY_BROKER_TRANSPORT == "recsysredis"
