"""How a web worker closes a client's connection once the answer is written."""

from __future__ import annotations

import socket
import time

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
        data = sock.recv(4096, socket.MSG_DONTWAIT)
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
