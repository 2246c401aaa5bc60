"""The web worker's connection handling: a deadline for the request head, and a close that waits on
a client only while its request body is unread, so that an early answer is not reset."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from recsys import web_worker
from recsys.web_worker import HEAD_MAX_BYTES, PacedSocket, close_answered, request_head_problem

pytestmark = pytest.mark.unit
ANSWER = b"HTTP/1.1 401 Unauthorized\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}"


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
    server.sendall(ANSWER)  # the request was read whole

    started = time.monotonic()
    close_answered(server)

    assert time.monotonic() - started < 0.5  # before (gunicorn's close_graceful): 2 s
    assert read_all(client) == ANSWER  # the answer, then the server's FIN


def test_bytes_already_waiting_are_dropped_so_the_close_does_not_reset_the_answer(pair):
    server, client = pair
    client.sendall(b"x" * 40_000)  # say, what follows a request gunicorn could not parse
    time.sleep(0.1)
    server.sendall(ANSWER)

    close_answered(server)

    assert read_all(client) == ANSWER  # a plain close() resets the connection: ConnectionResetError


def test_an_answer_given_before_the_body_came_waits_for_the_body(pair, monkeypatch):
    # Given an answer written before the request's body was read (a 401 after a 100 Continue, say),
    # and a body that arrives 200 ms later
    server, client = pair
    monkeypatch.setattr(web_worker._connection, "body_unread", True)
    server.sendall(ANSWER)

    sent: list[str] = []

    def late_body() -> None:
        time.sleep(0.2)
        try:
            for _ in range(20):
                client.sendall(b"y" * 1000)
                time.sleep(0.001)
            client.shutdown(socket.SHUT_WR)
            sent.append("whole")
        except OSError as error:
            sent.append(repr(error))

    sender = threading.Thread(target=late_body)
    sender.start()
    close_answered(server)
    sender.join()

    # Then the close waited for it: the client sent its body whole and reads its answer (a close that
    # did not wait: BrokenPipeError while sending, where an HTTP client gives up before reading)
    assert sent == ["whole"]
    assert read_all(client) == ANSWER
    assert web_worker._connection.body_unread is False  # the next connection starts afresh


def test_a_whole_request_head_is_seen_at_once_and_left_for_the_parser(pair):
    server, client = pair
    head = b"GET /api/v1/health HTTP/1.1\r\nHost: recsys\r\n\r\n"
    client.sendall(head)

    assert request_head_problem(server, 1.0) is None
    assert server.recv(65536) == head  # only looked at (MSG_PEEK): still there for gunicorn


def test_a_head_that_never_ends_is_408_at_the_deadline(pair):
    server, client = pair
    client.sendall(b"GET /api/v1/health HTTP/1.1\r\n")

    started = time.monotonic()
    assert request_head_problem(server, 0.3).startswith(b"HTTP/1.1 408")
    assert 0.25 < time.monotonic() - started < 1.0


def test_a_head_longer_than_the_limit_is_431_at_once(pair):
    server, client = pair
    threading.Thread(target=client.sendall, args=(b"GET / HTTP/1.1\r\nX: " + b"a" * HEAD_MAX_BYTES,)).start()
    time.sleep(0.2)

    started = time.monotonic()
    assert request_head_problem(server, 5.0).startswith(b"HTTP/1.1 431")
    assert time.monotonic() - started < 1.0


def test_a_request_slower_than_the_minimum_rate_fails_its_next_read_after_the_grace(pair):
    # Given a grace of 0.3 s and a minimum of 100 bytes a second
    server, client = pair
    paced = PacedSocket(server, grace=0.3, min_rate=100.0)

    # When 10 bytes come at once, then 10 more after 0.5 s (0.4 s allowed for 20 bytes)
    client.sendall(b"x" * 10)
    assert paced.recv(100) == b"x" * 10
    time.sleep(0.5)
    client.sendall(b"y" * 10)

    # Then that read fails as a read past its deadline does
    with pytest.raises(BlockingIOError):
        paced.recv(100)


def test_a_request_at_the_minimum_rate_reads_on_and_the_socket_is_otherwise_its_own(pair):
    server, client = pair
    paced = PacedSocket(server, grace=0.3, min_rate=100.0)

    client.sendall(b"x" * 100)  # 100 bytes: 1.3 s allowed in all
    time.sleep(0.5)

    assert paced.recv(1000) == b"x" * 100
    assert paced.fileno() == server.fileno()


def test_a_unix_socket_client_without_a_request_head_is_408_and_logged(tmp_path, monkeypatch):
    # Given the worker on a unix socket (gunicorn -b unix:...), whose peers have no address ("")
    from types import SimpleNamespace

    from recsys.web_worker import SyncWorker

    monkeypatch.setattr(web_worker, "HEAD_TIMEOUT_SECONDS", 0.2)
    logged: list[tuple] = []
    worker = SimpleNamespace(
        cfg=SimpleNamespace(is_ssl=False), timeout=60, log=SimpleNamespace(info=lambda *a: logged.append(a))
    )
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "web.sock"))
        listener.listen()
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(tmp_path / "web.sock"))

        # When a client connects and sends nothing
        SyncWorker.accept(worker, listener)

        # Then it got 408 (before: an IndexError from the log line ended the worker)
        assert read_all(client).startswith(b"HTTP/1.1 408")
        assert logged and logged[0][1:] == ("408", "")
        client.close()


def test_a_head_the_parser_already_holds_part_of_is_whole_with_the_rest_in_the_socket(pair):
    # A kept connection: the parser read the start of the next request past the previous one
    server, client = pair
    client.sendall(b"\r\n")

    assert request_head_problem(server, 1.0, already=b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n") is None
    assert request_head_problem(server, 1.0, already=b"GET / HTTP/1.1\r\n\r\n") is None  # all of it held


def test_a_kept_connections_next_request_counts_its_time_from_its_start(pair):
    # Given a paced socket whose connection idled 0.5 s after its first request (grace 0.3 s)
    server, client = pair
    paced = PacedSocket(server, grace=0.3, min_rate=100.0)
    client.sendall(b"x")
    assert paced.recv(100) == b"x"
    time.sleep(0.5)

    # When the next request starts on it, then reads
    paced.restart()
    client.sendall(b"y" * 10)

    # Then its read is within the deadline (the idle time was not the request's)
    assert paced.recv(100) == b"y" * 10
