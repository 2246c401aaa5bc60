"""Request bodies as a real gunicorn hands them over: a chunked body (no Content-Length) is read,
not silently taken for empty, and is held to the same size limit as a declared one."""

from __future__ import annotations

import http.client
import json

import pytest

from recsys.api_keys import api_key_create
from tests.integration.faults import gunicorn_web

pytestmark = [pytest.mark.integration, pytest.mark.slow]
LIMIT = 4_000


@pytest.fixture
def web(live_env, tmp_path):
    env = {**live_env, "RECSYS_MAX_BODY_BYTES": str(LIMIT), "RECSYS_SEARCH_PRELOAD": "false"}
    with gunicorn_web(env, tmp_path / "web.log"):
        yield int(env["PORT"])
    assert "Traceback" not in (tmp_path / "web.log").read_text(errors="replace")


def send(port: int, key: str, method: str, path: str, chunks: list[bytes] | None = None) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    if chunks is not None:
        headers["Transfer-Encoding"] = "chunked"
    connection.request(
        method, path, body=iter(chunks) if chunks is not None else None, headers=headers, encode_chunked=True
    )
    answer = connection.getresponse()
    status, body = answer.status, json.loads(answer.read() or b"{}")
    connection.close()
    return status, body


def test_a_chunked_body_is_read_and_one_past_the_limit_is_413(web):
    _, key = api_key_create(name="chunks", scopes=["read", "write"])
    body = json.dumps({"title": "chunked title", "text": "hello"}).encode()

    # A body in three chunks and no Content-Length (before: 201 with an empty title and text)
    status, created = send(web, key, "PUT", "/api/v1/items/chunky", [body[:5], body[5:20], body[20:]])
    assert status == 201, created
    assert send(web, key, "GET", "/api/v1/items/chunky")[1]["title"] == "chunked title"

    # Past the limit, chunked as declared: 413, nothing stored
    big = json.dumps({"title": "x" * LIMIT}).encode()
    status, refused = send(web, key, "PUT", "/api/v1/items/big", [big[:100], big[100:]])
    assert status == 413 and refused["error"]["code"] == "payload_too_large"
    assert send(web, key, "GET", "/api/v1/items/big")[0] == 404


def test_a_transfer_coding_other_than_chunked_or_a_broken_chunk_is_a_json_400(web):
    _, key = api_key_create(name="codings", scopes=["read", "write"])
    # gunicorn passes "gzip, chunked" through still gzip-encoded: refused, not parsed as JSON
    connection = http.client.HTTPConnection("127.0.0.1", web, timeout=15)
    connection.putrequest("PUT", "/api/v1/items/zipped")
    for name, value in (
        ("Authorization", f"Bearer {key}"),
        ("Content-Type", "application/json"),
        ("Transfer-Encoding", "gzip, chunked"),
    ):
        connection.putheader(name, value)
    connection.endheaders(b"5\r\nhello\r\n0\r\n\r\n")
    answer = connection.getresponse()
    assert answer.status == 400 and json.loads(answer.read())["error"]["code"] == "malformed_request"
    connection.close()
    assert send(web, key, "GET", "/api/v1/items/zipped")[0] == 404


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        (b"GET /api/v1/items/" + b"x" * 9000 + b" HTTP/1.1\r\nHost: recsys\r\n\r\n", 414, "uri_too_long"),
        (b"GET /api/v1/health HTTP/1.1\r\nHost: recsys\r\nBad Header: x\r\n\r\n", 400, "malformed_request"),
    ],
)
def test_what_gunicorn_itself_refuses_is_answered_in_the_apis_json(web, request_bytes, status, code):
    import socket

    with socket.create_connection(("127.0.0.1", web), timeout=15) as sock:
        sock.sendall(request_bytes)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")

    # Before: gunicorn's HTML page (Content-Type: text/html)
    assert head.startswith(f"HTTP/1.1 {status}".encode()) and b"Content-Type: application/json" in head
    assert json.loads(body)["error"]["code"] == code
