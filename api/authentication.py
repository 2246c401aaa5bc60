"""Bearer API key authentication."""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from recsys.api_keys import api_key_authenticate, api_key_touch
from recsys.models import ApiKey


@dataclass(frozen=True)
class ApiClient:
    """The caller behind a key; DRF's ``request.user``."""

    key: ApiKey
    is_authenticated: bool = True

    def __str__(self) -> str:
        return f"api-key:{self.key.prefix}"


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[ApiClient, ApiKey] | None:
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        scheme, _, raw_key = header.partition(" ")
        if scheme.lower() != self.keyword.lower() or not raw_key.strip():
            raise exceptions.AuthenticationFailed("Authorization must be 'Bearer <api key>'")
        key = api_key_authenticate(raw_key=raw_key.strip())
        if key is None:
            raise exceptions.AuthenticationFailed("invalid or revoked API key")
        api_key_touch(key=key, every_seconds=settings.RECSYS_API_KEY_TOUCH_SECONDS)
        return ApiClient(key), key

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'
