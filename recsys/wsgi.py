"""WSGI entry point for gunicorn."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any

from django.core.wsgi import get_wsgi_application

from recsys.errors import READ_DEADLINE_ERRORS

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def chunked_bodies(app: WsgiApp) -> WsgiApp:
    """Hand Django a chunked request body with its length.

    gunicorn decodes ``Transfer-Encoding: chunked`` and says so (``wsgi.input_terminated``), but
    Django reads a body only as far as ``CONTENT_LENGTH``, which a chunked request lacks: the body
    was read as empty and silently ignored (a PUT of an item answered 201 with empty fields). So
    the body is read here, at most one byte past the configured limit, and passed on with its
    length; a larger one is 413, a transfer coding other than chunked (gunicorn passes ``gzip``
    through still encoded) or broken chunk framing 400, in the API's JSON error format."""
    from django.conf import settings

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        codings = [c.strip().lower() for c in environ.get("HTTP_TRANSFER_ENCODING", "").split(",") if c.strip()]
        if not codings or environ.get("CONTENT_LENGTH") or not environ.get("wsgi.input_terminated"):
            return app(environ, start_response)
        if codings != ["chunked"]:
            return _error(start_response, 400, "malformed_request", "the only transfer coding accepted is chunked")
        limit = settings.RECSYS_MAX_BODY_BYTES
        try:
            body = environ["wsgi.input"].read(limit + 1)
        except READ_DEADLINE_ERRORS:  # the body stopped coming
            return _error(start_response, 408, "request_timeout", "the request body stopped arriving")
        except Exception:  # gunicorn's errors for broken chunk framing
            return _error(start_response, 400, "malformed_request", "the chunked body is not well framed")
        if len(body) > limit:
            from api.exceptions import payload_too_large

            return _error(start_response, 413, *payload_too_large(limit))
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        return app(environ, start_response)

    return wrapped


def _error(
    start_response: Callable[..., Any], status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> list[bytes]:
    """The API's JSON error answered before Django (``api.exceptions.error_body``)."""
    from api.exceptions import error_body

    body = json.dumps(error_body(code, message, details)).encode()
    start_response(
        f"{status} {HTTPStatus(status).phrase}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Connection", "close")],
    )
    return [body]


application = chunked_bodies(get_wsgi_application())
