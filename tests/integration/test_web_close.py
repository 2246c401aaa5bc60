"""A real gunicorn worker is free for the next client as soon as it has written an answer, whatever
the client does with its socket afterwards."""

from __future__ import annotations

import http.client
import socket
import time

import pytest

from tests.integration.faults import gunicorn_web

pytestmark = [pytest.mark.integration, pytest.mark.slow]
HEALTH = b"GET /api/v1/health HTTP/1.1\r\nHost: recsys\r\n\r\n"


@pytest.fixture
def one_worker(live_env, tmp_path):
    env = {**live_env, "WEB_CONCURRENCY": "1", "RECSYS_SEARCH_PRELOAD": "false"}
    with gunicorn_web(env, tmp_path / "web.log"):
        yield int(env["PORT"])


def test_clients_that_read_their_answer_and_keep_the_socket_open_do_not_stall_the_next(one_worker):
    idle = []
    for _ in range(3):  # each answered, then left open
        sock = socket.create_connection(("127.0.0.1", one_worker), timeout=10)
        sock.sendall(HEALTH)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        idle.append(sock)

    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", one_worker, timeout=10)
    connection.request("GET", "/api/v1/health")
    status = connection.getresponse().status

    # Before, gunicorn's close waited up to 2 s for each idle client: the third one still held the
    # only worker, and the whole series took 6 s.
    assert status == 200 and time.monotonic() - started < 1.0
    for sock in idle:
        sock.close()
