"""Closing a client connection after its answer: no waiting on an idle client, no reset answer
when the client is still sending."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from recsys.web_worker import close_answered, request_head_wait

pytestmark = pytest.mark.unit
ANSWER = b"HTTP/1.1 413 Payload Too Large\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(server side, client side) of a loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    yield server, client
    client.close()
    server.close()


def read_all(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_client_that_keeps_its_socket_open_does_not_hold_the_worker(pair):
    server, client = pair
    server.sendall(ANSWER)

    started = time.monotonic()
    close_answered(server)

    assert time.monotonic() - started < 0.5  # before (gunicorn's close_graceful): 2 s
    assert read_all(client) == ANSWER  # the answer, then the server's FIN


def test_an_answer_given_before_the_body_was_read_is_not_reset_by_the_close(pair):
    server, client = pair
    client.sendall(b"PUT /api/v1/items/x HTTP/1.1\r\nContent-Length: 40000\r\n\r\n" + b"x" * 40_000)
    time.sleep(0.1)  # the body is in the server's buffer, unread: the server answered early
    server.sendall(ANSWER)

    close_answered(server)

    assert read_all(client) == ANSWER  # a plain close() resets the connection: ConnectionResetError


def test_bytes_that_keep_coming_are_drained_until_the_client_pauses(pair):
    server, client = pair
    client.sendall(b"x" * 1000)
    time.sleep(0.05)
    server.sendall(ANSWER)

    def trickle() -> None:
        for _ in range(5):
            time.sleep(0.01)
            try:
                client.sendall(b"y" * 1000)
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    close_answered(server)
    sender.join()

    assert read_all(client) == ANSWER


def test_a_whole_request_head_is_seen_at_once_and_left_for_the_parser(pair):
    server, client = pair
    head = b"GET /api/v1/health HTTP/1.1\r\nHost: recsys\r\n\r\n"
    client.sendall(head)

    assert request_head_wait(server, 1.0)
    assert server.recv(65536) == head  # only looked at (MSG_PEEK): still there for gunicorn


def test_a_head_that_never_ends_is_given_up_at_the_deadline(pair):
    server, client = pair
    client.sendall(b"GET /api/v1/health HTTP/1.1\r\n")

    started = time.monotonic()
    assert not request_head_wait(server, 0.3)
    assert 0.25 < time.monotonic() - started < 1.0
