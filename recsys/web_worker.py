"""gunicorn's workers as recsys runs them: a deadline for a client's request head and for each read
of its body, and a close that waits on a client only while its request body is unread.

``SyncWorker`` (the default: a connection per request, one at a time per process) and
``ThreadWorker`` (``GUNICORN_WORKER=threads``: gunicorn's threaded worker, HTTP keep-alive, a few
threads per process) apply the same deadlines and close."""

from __future__ import annotations

import errno
import json
import socket
import struct
import time
from typing import Any

from gunicorn import util
from gunicorn.http.body import ChunkedReader, LengthReader
from gunicorn.workers import gthread, sync

from recsys.env import env_float

# A sync worker serves one connection at a time, and gunicorn reads a request with no deadline of
# its own: two connections that sent nothing (or half a request line) held both workers of a test
# server for 60 s, until gunicorn's worker timeout killed them (tests/integration/test_web_close.py).
# A client gets HEAD_TIMEOUT seconds to send its request line and headers (one packet for any real
# client), then READ_TIMEOUT seconds for each read of its body (never for writing the answer), and a
# minimum average rate after that (BODY_MIN_RATE). This bounds what one slow connection costs, not
# many: an Internet-facing deployment belongs behind a buffering proxy (README, "Running it elsewhere").
HEAD_TIMEOUT_SECONDS = env_float("GUNICORN_HEAD_TIMEOUT", 5.0, minimum=0.1)
READ_TIMEOUT_SECONDS = env_float("GUNICORN_READ_TIMEOUT", 10.0, minimum=0.1)
# Past READ_TIMEOUT seconds from the connection's start, a request must have arrived at this many
# bytes a second on average (Apache's mod_reqtimeout MinRate, 500 by default there): a per-read
# deadline alone lets a body trickle in a byte every few seconds, and chunked bodies are read before
# the key is checked (recsys.wsgi). So such a trickle costs a worker about 2 × READ_TIMEOUT at most.
BODY_MIN_RATE = env_float("GUNICORN_BODY_MIN_RATE", 500.0, minimum=1.0)
# A request head longer than this is refused (nginx's default limit is 32 KiB): its end could not be
# seen without reading it, and gunicorn would read the rest without the deadline.
HEAD_MAX_BYTES = 65536
HEAD_POLL_SECONDS = 0.01  # how often a partly sent head is looked at again
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
HEAD_TOO_LARGE = b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

# gunicorn (24+) closes every connection by half-closing it and then reading until the client
# closes its side, for up to 2 s (util.close_graceful, RFC 9112 section 9.6). A sync worker serves
# nothing else meanwhile, so a client that reads its answer and keeps the socket open held a worker
# for 2 s. The lingering matters only when the request's body was not read whole (an answer given
# before it: a 401, a 413): closing with unread bytes, or before bytes still in flight arrive (after
# a 100 Continue, or over a slow link), sends RST, which can destroy the answer before the client has
# read it. So ``close_answered`` lingers as gunicorn does only then, and otherwise drops what is
# already waiting (pipelined bytes) and closes.
LINGER_SECONDS = 2.0  # gunicorn's
LINGER_MAX_BYTES = 65536  # gunicorn's
DRAIN_QUIET_SECONDS = 0.05  # a request that could not be parsed: bytes that keep coming are drained


class _Connection:
    """What the worker knows of the connection it is serving (one at a time) when it closes it."""

    body_unread = False


_connection = _Connection()


class SyncWorker(sync.SyncWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's sync worker with deadlines for reading a request (see HEAD_TIMEOUT_SECONDS)."""

    def accept(self, listener: socket.socket) -> None:
        client, addr = listener.accept()
        util.close_on_exec(client)
        _connection.body_unread = False
        # TLS: the head is encrypted and read after the handshake; gunicorn's own reads apply.
        if not self.cfg.is_ssl:
            # Below gunicorn's timeout: nothing tells the arbiter this worker is alive meanwhile.
            problem = request_head_problem(client, min(HEAD_TIMEOUT_SECONDS, self.timeout / 2))
            if problem is not None:
                peer = addr[0] if isinstance(addr, tuple) else addr  # a unix socket's peer is ""
                self.log.info("%s from %r: no whole request head in time or size", problem[9:12].decode(), peer)
                _answer_and_close(client, problem)
                return
        client.setblocking(True)
        read_timeout_set(client, READ_TIMEOUT_SECONDS)
        self.handle(listener, client if self.cfg.is_ssl else PacedSocket(client), addr)

    def handle_request(self, listener: socket.socket, req: Any, client: socket.socket, addr: Any) -> None:
        try:
            super().handle_request(listener, req, client, addr)
        finally:
            _connection.body_unread = not body_read_whole(req)


class ThreadWorker(gthread.ThreadWorker):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's threaded worker (keep-alive connections wait in the process's poller, requests run
    on a pool of threads) with the sync worker's deadlines: a whole request head within
    HEAD_TIMEOUT_SECONDS of a thread taking the connection (408; 431 past HEAD_MAX_BYTES), each read
    of the body within READ_TIMEOUT_SECONDS and the minimum rate, and a close that lingers only while
    a request body is unread, on the request's thread, never on the poller's loop. A slow client
    holds one thread at most that long, as it holds a sync worker. (gunicorn's own threaded worker
    reads a head with no deadline, and its loop keeps telling the arbiter that the process is alive,
    so ``timeout`` never freed a thread held by a slow head or body.)"""

    def accept(self, listener: socket.socket) -> None:
        try:
            client, addr = listener.accept()
        except OSError as error:
            if error.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        util.close_on_exec(client)
        client.setblocking(True)
        read_timeout_set(client, READ_TIMEOUT_SECONDS)  # TLS too: its records are read from this socket
        self.enqueue_req(_ThreadConnection(self.cfg, client, addr, listener.getsockname()))

    def handle(self, conn: _ThreadConnection) -> Any:
        """On a pool thread: the head's deadline, then gunicorn's handling, then (when the connection
        is not kept) the close, here."""
        if not self.cfg.is_ssl:
            raw = conn.raw
            problem = request_head_problem(raw, min(HEAD_TIMEOUT_SECONDS, self.timeout / 2), already=conn.buffered())
            raw.setblocking(True)
            if problem is not None:
                peer = conn.client[0] if isinstance(conn.client, tuple) else conn.client
                self.log.info("%s from %r: no whole request head in time or size", problem[9:12].decode(), peer)
                _answer_and_close(raw, problem, body_unread=False)
                conn.closed_here = True
                return False
            conn.paced.restart()
        conn.body_unread = False
        kept = super().handle(conn)
        if kept is False and not conn.closed_here:
            close_answered(conn.sock, body_unread=conn.body_unread)
            conn.closed_here = True
        return kept

    def handle_request(self, req: Any, conn: _ThreadConnection) -> bool:
        try:
            return bool(super().handle_request(req, conn))
        finally:
            conn.body_unread = not body_read_whole(req)


class _ThreadConnection(gthread.TConn):  # type: ignore[misc]  # gunicorn has no type hints
    """gunicorn's connection of the threaded worker, reading through a PacedSocket (restarted for each
    request: a kept connection's idle time between requests is not the request's), closed on its
    request's thread (``closed_here``) rather than on the poller's loop."""

    def __init__(self, cfg: Any, sock: socket.socket, client: Any, server: Any) -> None:
        self.raw = sock
        self.paced = PacedSocket(sock)
        self.body_unread = False
        self.closed_here = False
        super().__init__(cfg, sock if cfg.is_ssl else self.paced, client, server)

    def buffered(self) -> bytes:
        """What the parser already read past the previous request (a pipelined head, or part of one)."""
        return bytes(self.parser.unreader.buf.getvalue()) if self.parser is not None else b""

    def close(self, graceful: bool = False) -> None:
        if not self.closed_here:
            self.closed_here = True
            super().close(graceful=False)  # a kept connection that timed out, or a worker stopping


class PacedSocket:
    """A client socket whose reads fail (EAGAIN, as a read past its deadline does) once the request
    has taken longer than READ_TIMEOUT_SECONDS plus a second for each BODY_MIN_RATE bytes received;
    everything else is the socket's own."""

    def __init__(self, sock: socket.socket, grace: float | None = None, min_rate: float | None = None) -> None:
        self._sock, self._started, self._received = sock, time.monotonic(), 0
        self._grace = READ_TIMEOUT_SECONDS if grace is None else grace
        self._min_rate = BODY_MIN_RATE if min_rate is None else min_rate

    def restart(self) -> None:
        """A new request on the same connection: its time and bytes count from now."""
        self._started, self._received = time.monotonic(), 0

    def recv(self, size: int, flags: int = 0) -> bytes:
        data = self._sock.recv(size, flags)
        self._received += len(data)
        if data and time.monotonic() - self._started > self._grace + self._received / self._min_rate:
            raise BlockingIOError(errno.EAGAIN, "the request arrives too slowly")
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def request_head_problem(sock: socket.socket, timeout: float, already: bytes = b"") -> bytes | None:
    """None when the client sent its whole request head within ``timeout`` seconds (or closed: gunicorn
    then sees it), looking without reading (``MSG_PEEK``) so that gunicorn's parser reads it all;
    else the answer to give instead: 408 (not in time), 431 (longer than HEAD_MAX_BYTES). ``already``:
    the start of the head that the parser has read already (a kept connection's pipelined bytes)."""
    if b"\r\n\r\n" in already:
        return None
    deadline = time.monotonic() + timeout
    try:
        while True:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = already + sock.recv(HEAD_MAX_BYTES, socket.MSG_PEEK)  # waits for the first bytes
            if len(data) == len(already) or b"\r\n\r\n" in data:
                return None
            if len(data) >= HEAD_MAX_BYTES:
                return HEAD_TOO_LARGE
            if time.monotonic() >= deadline:
                return REQUEST_TIMEOUT
            time.sleep(HEAD_POLL_SECONDS)  # a peek returns at once while bytes wait: look again later
    except OSError:  # the deadline passed with nothing (a timeout is an OSError), or the client is gone
        return REQUEST_TIMEOUT


def read_timeout_set(sock: socket.socket, seconds: float) -> None:
    """A deadline for each read of a blocking socket and none for its writes (``SO_RCVTIMEO``; a
    Python timeout would also cut an answer that a slow client takes long to read). A read past it
    fails with EAGAIN (``BlockingIOError``)."""
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6)))


def body_read_whole(req: Any) -> bool:
    """Whether the application read the request's body to its end (gunicorn's readers)."""
    body = getattr(req, "body", None)
    if body is None or body.failed:
        return body is None
    reader = body.reader
    if isinstance(reader, LengthReader):
        return bool(reader.length == 0)
    if isinstance(reader, ChunkedReader):
        return reader.parser is None
    return False  # read to the end of the connection (no length): not known


def close_answered(
    sock: socket.socket,
    timeout: float = LINGER_SECONDS,
    max_drain: int = LINGER_MAX_BYTES,
    *,
    body_unread: bool | None = None,
) -> None:
    """Close a client connection after its answer: FIN first; when the request's body was not read
    whole, read and drop what the client still sends, until it closes (up to ``timeout`` seconds and
    ``max_drain`` bytes), so that closing does not reset the answer; otherwise drop what is already
    waiting and close at once. ``body_unread``: the connection's own (ThreadWorker), else the sync
    worker's connection of the moment."""
    unread = _connection.body_unread if body_unread is None else body_unread
    try:
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            return
        _drain(sock, time.monotonic() + timeout, max_drain, until_closed=unread)
    finally:
        if body_unread is None:
            _connection.body_unread = False
        try:
            sock.close()
        except OSError:
            pass


def _drain(sock: socket.socket, deadline: float, max_drain: int, *, until_closed: bool) -> None:
    """Read and drop the client's bytes: until it closes (``until_closed``), else those already
    waiting and whatever follows within DRAIN_QUIET_SECONDS of the last (a request gunicorn could not
    parse); within ``deadline`` and ``max_drain`` bytes either way."""
    drained = 0
    try:
        if not until_closed:
            sock.setblocking(False)  # a socket with a timeout would wait that long for readable bytes
            data = sock.recv(4096)  # nothing waiting: EAGAIN
            drained = len(data)
            if not data:
                return
        while drained < max_drain:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            sock.settimeout(remaining if until_closed else min(DRAIN_QUIET_SECONDS, remaining))
            data = sock.recv(4096)
            if not data:
                return
            drained += len(data)
    except OSError:  # nothing waiting, quiet long enough (a timeout is an OSError), or gone
        return


def _answer_and_close(sock: socket.socket, answer: bytes, body_unread: bool | None = None) -> None:
    try:
        sock.settimeout(1.0)
        sock.sendall(answer)
    except OSError:
        pass
    close_answered(sock, body_unread=body_unread)


# gunicorn's own refusals (a request it cannot parse, a URL over limit_request_line, headers over its
# limits), answered before the application in gunicorn's HTML page: the API answers JSON everywhere.
PROTOCOL_ERROR_CODES = {
    400: "malformed_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "request_header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's ``util.write_error`` with the API's JSON error body instead of an HTML page."""
    from api.exceptions import error_body  # the application is loaded by the time gunicorn refuses

    body = json.dumps(error_body(PROTOCOL_ERROR_CODES.get(status_int, "malformed_request"), mesg)).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)
