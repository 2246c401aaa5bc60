"""Guards for /api/: refuse oversized bodies early, and never answer with an HTML error page."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.http import HttpRequest, HttpResponse

from api.exceptions import database_error, error_response, payload_too_large
from api.permissions import required_scope
from recsys.db import statement_timeout_set
from recsys.deadline import deadline_arm, deadline_begin, deadline_end, deadline_execute

logger = logging.getLogger("api")
API_PREFIX = "/api/"


class ApiGuardMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(API_PREFIX):
            if "chunked" in request.META.get("HTTP_TRANSFER_ENCODING", "").lower() and not request.META.get(
                "CONTENT_LENGTH"
            ):
                # A server that does not decode chunked bodies for the app (recsys.wsgi does it for
                # gunicorn's): Django would read the body as empty, and the request would lose it.
                return error_response(
                    400, "malformed_request", "a chunked request body needs Content-Length on this server"
                )
            too_large = self._declared_length(request) > settings.RECSYS_MAX_BODY_BYTES
            if too_large:
                return error_response(413, *payload_too_large(settings.RECSYS_MAX_BODY_BYTES))
        return self.get_response(request)

    @staticmethod
    def _declared_length(request: HttpRequest) -> int:
        try:
            return int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return 0

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not request.path.startswith(API_PREFIX):
            return None
        if isinstance(exception, (OperationalError, InterfaceError)):
            return database_unavailable(exception)
        logger.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal_error", "an unexpected error occurred; it has been logged")


def database_unavailable(exception: Exception) -> HttpResponse:
    response = error_response(503, *database_error(exception))
    response["Retry-After"] = "5"
    return response


class StatementTimeoutMiddleware:
    """Bounds the serving path: a request to a read-scope API endpoint has
    ``RECSYS_SERVING_STATEMENT_TIMEOUT_MS`` in all (gunicorn.conf.py sets 2000 for the web process),
    counted from here; each statement runs with the time left (recsys.deadline), and an answer
    ready only after the limit is a 503, so a slow request is cut rather than holding a worker or
    answering late. Ingestion, the admin, Celery workers and migrations keep the connection's
    default (``RECSYS_STATEMENT_TIMEOUT_MS``)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        deadline_begin()
        try:
            with connection.execute_wrapper(deadline_execute):
                response = self.get_response(request)
        finally:
            late = deadline_end()
        return deadline_response() if late and response.status_code < 400 else response

    def process_view(self, request: HttpRequest, view: Callable[..., Any], *args: object) -> HttpResponse | None:
        timeout = settings.RECSYS_SERVING_STATEMENT_TIMEOUT_MS
        if not timeout and getattr(connection, "recsys_statement_timeout", None) is None:
            return None
        view_class = getattr(view, "view_class", None) or getattr(view, "cls", None)
        serving = request.path.startswith(API_PREFIX) and required_scope(view_class, request.method or "") == "read"
        try:
            statement_timeout_set(timeout if serving and timeout else None)
            if serving and timeout:
                deadline_arm(milliseconds=timeout)
        except (OperationalError, InterfaceError) as exception:
            # PostgreSQL is away. A serving request answers 503 now; any other view goes on, so
            # that health can report the outage (it catches the error itself) and the rest map it
            # to 503 through the exception handler.
            return database_unavailable(exception) if serving else None
        return None


def deadline_response() -> HttpResponse:
    """The answer to a serving request that finished after its time limit (its result is late)."""
    limit = settings.RECSYS_SERVING_STATEMENT_TIMEOUT_MS
    response = error_response(
        503,
        "service_unavailable",
        f"the request took longer than the serving time limit of {limit} ms; retry shortly",
        {"limit_ms": limit},
    )
    response["Retry-After"] = "1"
    return response


def api_error_view(status_code: int, code: str, message: str) -> Callable[..., HttpResponse]:
    """Django's handler4xx/500 for /api/ paths (e.g. a bad Host header) in the JSON error format."""
    from django.views import defaults

    def view(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
        if request.path.startswith(API_PREFIX):
            return error_response(status_code, code, message)
        if status_code == 500:
            return defaults.server_error(request)
        fallback = {400: defaults.bad_request, 403: defaults.permission_denied, 404: defaults.page_not_found}
        return fallback[status_code](request, exception or Exception(message))

    return view
