"""WSGI entry point for gunicorn."""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable
from typing import Any

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings")

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def chunked_bodies(app: WsgiApp) -> WsgiApp:
    """Hand Django a chunked request body with its length.

    gunicorn decodes ``Transfer-Encoding: chunked`` and says so (``wsgi.input_terminated``), but
    Django reads a body only as far as ``CONTENT_LENGTH``, which a chunked request lacks: the body
    was read as empty and silently ignored (a PUT of an item answered 201 with empty fields). So
    the body is read here, at most one byte past the configured limit (so that the API's guard
    answers 413 for a larger one, as for a declared length), and passed on with its length."""
    from django.conf import settings

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if chunked and not environ.get("CONTENT_LENGTH") and environ.get("wsgi.input_terminated"):
            body = environ["wsgi.input"].read(settings.RECSYS_MAX_BODY_BYTES + 1)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return app(environ, start_response)

    return wrapped


application = chunked_bodies(get_wsgi_application())
