"""Domain errors; the API's exception handler maps each to its status and error code."""

from __future__ import annotations

from typing import Any


class DomainError(Exception):
    code = "error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ValidationFailed(DomainError):
    code = "validation_error"


class NotFound(DomainError):
    code = "not_found"


class UserNotFound(NotFound):
    pass


class ItemNotFound(NotFound):
    pass


class PayloadTooLarge(DomainError):
    code = "payload_too_large"


class Conflict(DomainError):
    code = "conflict"


class PermissionDenied(DomainError):
    """The caller is known but may not do this (a scope the operation needs beyond the endpoint's)."""

    code = "permission_denied"


class ModelNotReady(DomainError):
    code = "model_not_ready"


class ServiceUnavailable(DomainError):
    code = "service_unavailable"


# What a read of a request body raises once its deadline has passed (recsys.web_worker): a Python
# socket timeout, or EAGAIN from a blocking socket's SO_RCVTIMEO and from the minimum-rate check.
READ_DEADLINE_ERRORS: tuple[type[OSError], ...] = (TimeoutError, BlockingIOError)
