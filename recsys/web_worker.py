"""gunicorn's sync worker as recsys runs it: a deadline for a client's request head and for each
read of its body, and a close that does not wait on an idle client."""

from __future__ import annotations

import socket
import time

from gunicorn import util
from gunicorn.workers import sync

from recsys.env import env_float

# A sync worker serves one connection at a time, and gunicorn reads a request with no deadline of
# its own: two connections that sent nothing (or half a request line) held both workers of a test
# server for 60 s, until gunicorn's worker timeout killed them (tests/integration/test_web_close.py).
# A client gets HEAD_TIMEOUT seconds to send its request line and headers (one packet for any real
# client), then READ_TIMEOUT seconds for each read of its body. This bounds what one idle connection
# costs; it does not make a sync worker safe from many: an Internet-facing deployment still belongs
# behind a buffering proxy (README, "Running it elsewhere").
HEAD_TIMEOUT_SECONDS = env_float("GUNICORN_HEAD_TIMEOUT", 5.0, minimum=0.1)
READ_TIMEOUT_SECONDS = env_float("GUNICORN_READ_TIMEOUT", 10.0, minimum=0.1)
HEAD_PEEK_BYTES = 65536  # a head longer than this without its end is left to gunicorn's own limits
HEAD_POLL_SECONDS = 0.01  # how often a partly sent head is looked at again
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class SyncWorker(sync.SyncWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's sync worker with deadlines for reading a request (see HEAD_TIMEOUT_SECONDS)."""

    def accept(self, listener: socket.socket) -> None:
        client, addr = listener.accept()
        util.close_on_exec(client)
        if not request_head_wait(client, HEAD_TIMEOUT_SECONDS):
            self.log.debug("no request head from %s within %s s: 408", addr, HEAD_TIMEOUT_SECONDS)
            _answer_and_close(client, REQUEST_TIMEOUT)
            return
        client.settimeout(READ_TIMEOUT_SECONDS)  # gunicorn's own accept makes it blocking without one
        self.handle(listener, client, addr)


def request_head_wait(sock: socket.socket, timeout: float) -> bool:
    """Whether the client sent its whole request head within ``timeout`` seconds (or closed, or sent
    more than HEAD_PEEK_BYTES), looking without reading (``MSG_PEEK``) so that gunicorn's parser
    reads it all."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = sock.recv(HEAD_PEEK_BYTES, socket.MSG_PEEK)  # waits for the first bytes
            if not data or b"\r\n\r\n" in data or len(data) >= HEAD_PEEK_BYTES:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(HEAD_POLL_SECONDS)  # a peek returns at once while bytes wait: look again later
    except OSError:  # the deadline passed with nothing (a timeout is an OSError), or the client is gone
        return False


def _answer_and_close(sock: socket.socket, answer: bytes) -> None:
    try:
        sock.settimeout(1.0)
        sock.sendall(answer)
    except OSError:
        pass
    close_answered(sock)


# gunicorn (24+) closes every connection by half-closing it and then reading until the client
# closes its side, for up to 2 s (util.close_graceful, RFC 9112 section 9.6). A sync worker serves
# nothing else meanwhile, so a client that reads its answer and keeps the socket open holds a
# worker for 2 s: five such connections, with no key and well under any rate limit, stopped all
# five workers of `make serve` (tests/integration/test_web_close.py). The lingering only matters
# when request bytes are still unread (an answer given before the body was read: a 413, a refused
# chunked body): closing a socket with unread data sends RST, which can destroy the answer before
# the client has read it. So the drain below runs only when such bytes are already waiting, and
# then only while they keep arriving.
DRAIN_QUIET_SECONDS = 0.05
DRAIN_TIMEOUT_SECONDS = 1.0
DRAIN_MAX_BYTES = 65536  # gunicorn's own cap


def close_answered(
    sock: socket.socket,
    timeout: float = DRAIN_TIMEOUT_SECONDS,
    max_drain: int = DRAIN_MAX_BYTES,
) -> None:
    """Close a client connection after its answer: FIN first; read and drop request bytes that are
    still unread (while they keep coming, up to ``max_drain`` bytes or ``timeout`` seconds) so that
    closing does not reset the answer; never wait for a client that has nothing more to send."""
    try:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        _drain_unread(sock, time.monotonic() + timeout, max_drain)
    finally:
        try:
            sock.close()
        except OSError:
            pass


def _drain_unread(sock: socket.socket, deadline: float, max_drain: int) -> None:
    """Read what the client already sent beyond its request, then whatever follows within
    ``DRAIN_QUIET_SECONDS`` of the last bytes; return at once when nothing is waiting."""
    try:
        sock.setblocking(False)  # a socket with a timeout would wait that long for readable bytes
        data = sock.recv(4096)
    except OSError:  # nothing waiting (EAGAIN), or the connection is gone
        return
    drained = len(data)
    while data and drained < max_drain:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            sock.settimeout(min(DRAIN_QUIET_SECONDS, remaining))
            data = sock.recv(4096)
        except OSError:  # quiet for DRAIN_QUIET_SECONDS (a timeout is an OSError), or gone
            return
        drained += len(data)
