"""A real gunicorn worker is not held by a client that is slow or idle: before its request (a
deadline for the head and for each read of the body) nor after its answer (no waiting for its close).
The same for the sync worker and for the threaded one (GUNICORN_WORKER=threads), whose kept-alive
connections are also served."""

from __future__ import annotations

import http.client
import socket
import threading
import time
from contextlib import contextmanager

import pytest

from recsys.api_keys import api_key_create
from tests.integration.faults import gunicorn_web

pytestmark = [pytest.mark.integration, pytest.mark.slow]
HEALTH = b"GET /api/v1/health HTTP/1.1\r\nHost: recsys\r\n\r\n"


@pytest.fixture(params=["sync", "threads"])
def one_worker(request, live_env, tmp_path):
    """One sync worker, or one threaded worker with one thread: either is held by one slow client."""
    env = {
        "GUNICORN_WORKER": request.param,
        "GUNICORN_THREADS": "1",
        "GUNICORN_READ_TIMEOUT": "1",
        "GUNICORN_BODY_MIN_RATE": "100",
    }
    with web(live_env, tmp_path, env) as port:
        yield port


@contextmanager
def web(live_env, tmp_path, env):
    """gunicorn of one process on the live environment with ``env`` and 1 s head deadlines; its port.
    Its log holds no traceback afterwards."""
    env = {**live_env, "WEB_CONCURRENCY": "1", "RECSYS_SEARCH_PRELOAD": "false", "GUNICORN_HEAD_TIMEOUT": "1", **env}
    with gunicorn_web(env, tmp_path / "web.log"):
        yield int(env["PORT"])
    assert "Traceback" not in (tmp_path / "web.log").read_text(errors="replace")


def health_seconds(port: int) -> float:
    """How long a health request takes to be answered (200)."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=90)
    connection.request("GET", "/api/v1/health")
    assert connection.getresponse().status == 200
    connection.close()
    return time.monotonic() - started


def test_clients_that_read_their_answer_and_keep_the_socket_open_do_not_stall_the_next(one_worker):
    idle = []
    for _ in range(3):  # each answered, then left open
        sock = socket.create_connection(("127.0.0.1", one_worker), timeout=10)
        sock.sendall(HEALTH)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        idle.append(sock)

    # Before, gunicorn's close waited up to 2 s for each idle client: the third one still held the
    # only worker, and the whole series took 6 s.
    assert health_seconds(one_worker) < 1.0
    for sock in idle:
        sock.close()


def test_connections_that_send_no_whole_request_head_get_408_after_the_head_deadline(one_worker):
    silent = socket.create_connection(("127.0.0.1", one_worker), timeout=30)
    half = socket.create_connection(("127.0.0.1", one_worker), timeout=30)
    half.sendall(b"GET /api/v1/health HTTP/1.1\r\n")  # the request line, never the headers
    time.sleep(0.2)

    # Before: both held the only worker until gunicorn's 60 s worker timeout killed it
    assert health_seconds(one_worker) < 5.0
    for sock in (silent, half):
        assert sock.recv(200).startswith(b"HTTP/1.1 408")
        sock.close()


def test_a_head_sent_in_pieces_is_served(one_worker):
    sock = socket.create_connection(("127.0.0.1", one_worker), timeout=10)
    for piece in (b"GET /api/v1/hea", b"lth HTTP/1.1\r\nHo", b"st: recsys\r\n\r\n"):
        sock.sendall(piece)
        time.sleep(0.2)
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    sock.close()


def put_begun(port: int, rest: bytes) -> socket.socket:
    """A connection that sent a key's item PUT up to its body's framing headers, then ``rest``."""
    _, key = api_key_create(name="slow body", scopes=["read", "write"])
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(
        b"PUT /api/v1/items/slow HTTP/1.1\r\nHost: recsys\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\n".encode()
        + rest
    )
    return sock


def test_a_body_that_stops_coming_frees_the_worker_after_the_read_deadline(one_worker):
    sock = put_begun(one_worker, b'Content-Length: 100\r\n\r\n{"title": "slo')  # 14 of the 100 bytes
    time.sleep(0.2)

    assert health_seconds(one_worker) < 5.0  # before: the worker waited for the body until killed
    answer = read_answer(sock)  # to the close: head and body may come apart
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer  # before: 500
    sock.close()


def test_a_chunked_body_that_stops_coming_is_408(one_worker):
    sock = put_begun(one_worker, b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"tit\r\n')  # one chunk, then nothing

    answer = read_answer(sock)  # before: 400 "not well framed" (the timeout taken for broken framing)
    assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer
    sock.close()
    assert health_seconds(one_worker) < 1.0


def test_an_answer_given_before_the_body_was_read_reaches_a_client_still_sending_it(one_worker):
    # Given a request refused before its body is read (a key that does not exist: 401), whose body
    # the client sends only after the answer was written (as after a 100 Continue)
    sock = socket.create_connection(("127.0.0.1", one_worker), timeout=30)
    sock.sendall(
        b"PUT /api/v1/items/late HTTP/1.1\r\nHost: recsys\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer rsk_nosuchkey\r\nContent-Length: 20000\r\n\r\n"
    )
    time.sleep(0.3)

    # When it sends the body, then reads
    for _ in range(20):
        sock.sendall(b" " * 1000)  # before: BrokenPipeError (the worker had closed: RST)
        time.sleep(0.001)

    # Then it gets the 401
    assert read_answer(sock).startswith(b"HTTP/1.1 401")
    sock.close()


def read_answer(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_body_trickled_slower_than_the_minimum_rate_is_408_after_the_grace(one_worker):
    # Given a chunked body (read before the key is checked) sent a byte every 0.5 s: each read comes
    # within the 1 s read deadline, but far below 100 bytes a second
    sock = socket.create_connection(("127.0.0.1", one_worker), timeout=30)
    sock.sendall(b"PUT /api/v1/items/trickle HTTP/1.1\r\nHost: recsys\r\nTransfer-Encoding: chunked\r\n\r\n")
    started, stop = time.monotonic(), threading.Event()

    def trickle() -> None:
        while not stop.wait(0.5):
            try:
                sock.sendall(b"1\r\nx\r\n")
            except OSError:  # the worker answered and closed
                return

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        first = sock.recv(65536)
        answered = time.monotonic() - started
    finally:
        stop.set()
        sender.join()

    # Then it is refused after the grace (1 s) and about one more read, not when the client stops
    # (before: it held the worker as long as it kept trickling)
    assert first.startswith(b"HTTP/1.1 408") and answered < 4.0, (first[:40], answered)
    sock.close()


@pytest.fixture
def threaded(live_env, tmp_path):
    with web(live_env, tmp_path, {"GUNICORN_WORKER": "threads", "GUNICORN_THREADS": "2"}) as port:
        yield port


def test_the_threaded_worker_keeps_a_connection_for_the_next_request_and_serves_others_meanwhile(threaded):
    # Given a kept-alive connection that sent two requests, and a second client holding the other
    # thread with half a request head
    kept = http.client.HTTPConnection("127.0.0.1", threaded, timeout=10)
    for _ in range(2):
        kept.request("GET", "/api/v1/health")
        answer = kept.getresponse()
        assert answer.status == 200 and answer.getheader("Connection", "").lower() != "close"
        answer.read()
    first_socket = kept.sock
    half = socket.create_connection(("127.0.0.1", threaded), timeout=30)
    half.sendall(b"GET /api/v1/health HTTP/1.1\r\n")
    time.sleep(0.2)

    # Then the kept connection is served again on the same socket while the half head waits (one thread
    # each), and the half head gets its 408 at the deadline
    kept.request("GET", "/api/v1/health")
    assert kept.getresponse().status == 200 and kept.sock is first_socket
    assert half.recv(200).startswith(b"HTTP/1.1 408")
    half.close()
    kept.close()
