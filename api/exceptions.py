"""One place that turns every failure under /api/ into the JSON error body of API.md."""

from __future__ import annotations

import logging
import math
from typing import Any

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation
from django.db import DatabaseError, InterfaceError, OperationalError
from django.http import Http404, JsonResponse, UnreadablePostError
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from recsys.db import lock_not_available, query_canceled
from recsys.errors import (
    READ_DEADLINE_ERRORS,
    Conflict,
    DomainError,
    ModelNotReady,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServiceUnavailable,
)

logger = logging.getLogger(__name__)

_DOMAIN_STATUS: dict[type[DomainError], int] = {
    NotFound: status.HTTP_404_NOT_FOUND,
    PermissionDenied: status.HTTP_403_FORBIDDEN,
    PayloadTooLarge: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    Conflict: status.HTTP_409_CONFLICT,
    ModelNotReady: status.HTTP_409_CONFLICT,
    ServiceUnavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
}
_DRF_CODES = {
    exceptions.ParseError: "malformed_request",
    exceptions.ValidationError: "validation_error",
    exceptions.NotAuthenticated: "not_authenticated",
    exceptions.AuthenticationFailed: "authentication_failed",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "rate_limited",
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


def error_response(status_code: int, code: str, message: str, details: dict[str, Any] | None = None) -> JsonResponse:
    return JsonResponse(error_body(code, message, details), status=status_code)


def payload_too_large(limit: int) -> tuple[str, str, dict[str, Any]]:
    """The 413's code, message and details for a body past ``limit`` bytes."""
    return "payload_too_large", f"request bodies are limited to {limit} bytes", {"max_bytes": limit}


def database_error(exc: Exception) -> tuple[str, str]:
    """The error code and message for a database that is away or a statement that took too long."""
    if query_canceled(exc):
        logger.warning("statement timeout: %s", exc)
        return "service_unavailable", "the query took longer than the serving time limit; retry shortly"
    if lock_not_available(exc):
        logger.warning("lock timeout: %s", exc)
        return "service_unavailable", "the data is being reorganised (partition maintenance); retry shortly"
    logger.error("database unavailable: %s", exc)
    return "service_unavailable", "the database is unavailable; retry shortly"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, DomainError):
        code = next((s for cls, s in _DOMAIN_STATUS.items() if isinstance(exc, cls)), 400)
        retry = {"Retry-After": "5"} if code == 503 else None  # as for the database's 503 below
        return Response(error_body(exc.code, exc.message, exc.details), status=code, headers=retry)
    if isinstance(exc, RequestDataTooBig):
        return Response(error_body("payload_too_large", "request body is too large"), status=413)
    if isinstance(exc, SuspiciousOperation):  # e.g. TooManyFieldsSent: over 1,000 query parameters
        logging.getLogger(f"django.security.{type(exc).__name__}").warning("%s", exc)
        return Response(error_body("malformed_request", "the request is malformed"), status=400)
    if isinstance(exc, UnreadablePostError):  # the client stopped sending (recsys.web_worker's deadline) or left
        if _timed_out(exc):
            return Response(error_body("request_timeout", "the request body stopped arriving"), status=408)
        return Response(error_body("malformed_request", "the request body could not be read"), status=400)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    if isinstance(exc, (OperationalError, InterfaceError)):
        return Response(error_body(*database_error(exc)), status=503, headers={"Retry-After": "5"})
    if isinstance(exc, DatabaseError):
        return None  # a bug, not bad input: let the middleware log it and answer 500
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    return _api_exception_response(exc, response)


def _timed_out(exc: BaseException) -> bool:
    """Whether a read deadline is among the causes (Django wraps a read's OSError, and a read through
    DRF's request is wrapped twice)."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, READ_DEADLINE_ERRORS):
            return True
        cause = cause.__cause__
    return False


def _api_exception_response(exc: exceptions.APIException, response: Response) -> Response:
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    details: dict[str, Any] = {}
    if isinstance(exc, exceptions.ValidationError):
        details = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        message = "the request is not valid"
    else:
        message = str(exc.detail)
    wait = getattr(exc, "wait", None)
    if isinstance(exc, exceptions.Throttled) and wait is not None:
        response["Retry-After"] = str(max(1, math.ceil(wait)))
        details = {"retry_after_seconds": max(1, math.ceil(wait))}
        # DRF's own Throttled is the per-key limit; subclasses (failed key attempts, too many expensive
        # requests at once) say what they limit.
        message = "rate limit exceeded for this API key" if type(exc) is exceptions.Throttled else str(exc.detail)
    response.data = error_body(code, message, details)
    return response
