"""The admin site's middleware, skipped by API requests: sessions, users, messages, common redirects.

An API request authenticates with its key (api.authentication), holds no session or cookie and
renders no template, so these layers did nothing for it but cost ~0.1 ms of CPU each request
(bench/serve_profile.py). Each class here is Django's own, passed straight through for paths
under ``API_PREFIX``; the admin, the API's docs and schema pages and everything else get them whole.
CSRF stays Django's own (its deploy check looks for it by name; DRF's views are exempt anyway).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib.auth.middleware import AuthenticationMiddleware as _AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware as _MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware as _SessionMiddleware
from django.http import HttpRequest, HttpResponse
from django.middleware.common import CommonMiddleware as _CommonMiddleware

# The versioned API only: /api/docs/ is an HTML page and keeps the site's stack.
API_PREFIX = "/api/v1/"


def is_api_request(request: HttpRequest) -> bool:
    return request.path_info.startswith(API_PREFIX)


def site_only(middleware: type[Any]) -> type[Any]:
    """``middleware`` for every path but the API's, which go straight to the next layer."""

    class SiteOnly(middleware):  # type: ignore[misc, valid-type]
        def __call__(self, request: HttpRequest) -> HttpResponse:
            if is_api_request(request):
                return self.get_response(request)  # type: ignore[no-any-return]
            return super().__call__(request)  # type: ignore[no-any-return]

    if hasattr(middleware, "process_view"):  # Django calls it apart from the chain

        def process_view(
            self: Any, request: HttpRequest, view: Callable[..., Any], args: Any, kwargs: Any
        ) -> HttpResponse | None:
            if is_api_request(request):
                return None
            return middleware.process_view(self, request, view, args, kwargs)  # type: ignore[no-any-return]

        SiteOnly.process_view = process_view  # type: ignore[attr-defined]
    SiteOnly.__name__ = SiteOnly.__qualname__ = middleware.__name__
    SiteOnly.__doc__ = f"{middleware.__module__}.{middleware.__name__}, skipped under {API_PREFIX}."
    return SiteOnly


SessionMiddleware = site_only(_SessionMiddleware)
CommonMiddleware = site_only(_CommonMiddleware)
AuthenticationMiddleware = site_only(_AuthenticationMiddleware)
MessageMiddleware = site_only(_MessageMiddleware)
