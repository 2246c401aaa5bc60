"""Bearer API key authentication, with failed attempts throttled per client address."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from django.conf import settings
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from api.throttling import key_attempt_check, key_attempt_failed
from recsys.addresses import client_address
from recsys.api_keys import api_key_authenticate, api_key_touch, hash_key
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
        # META, not DRF's get_authorization_header: request.headers builds a mapping of every header
        header = request.META.get("HTTP_AUTHORIZATION", "")
        if isinstance(header, bytes):  # a test client's
            header = header.decode("latin-1")
        if not header:
            return None
        scheme, _, raw_key = header.partition(" ")
        if scheme.lower() != self.keyword.lower() or not raw_key.strip():
            raise exceptions.AuthenticationFailed("Authorization must be 'Bearer <api key>'")
        raw_key = raw_key.strip()
        if not _recently_accepted.holds(raw_key):
            key_attempt_check(address=client_address(request))
        key = api_key_authenticate(raw_key=raw_key)  # always: a revoked key is refused on its next request
        if key is None:
            key_attempt_failed(address=client_address(request))
            raise exceptions.AuthenticationFailed("invalid or revoked API key")
        _recently_accepted.add(raw_key)
        api_key_touch(key=key, every_seconds=settings.RECSYS_API_KEY_TOUCH_SECONDS)
        return ApiClient(key), key

    def authenticate_header(self, request: Request) -> str:
        return f'{self.keyword} realm="api"'


class _RecentKeys:
    """Hashes of keys this process accepted within a minute. Their requests skip the failed-attempt
    check (whoever holds a valid key is not guessing one), which saves every ordinary request a
    Redis round trip; they are still authenticated, so a revoked key is refused on its next request."""

    SECONDS = 60.0
    MAX_KEYS = 10_000

    def __init__(self) -> None:
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def holds(self, raw_key: str) -> bool:
        return self._until.get(hash_key(raw_key), 0.0) > time.monotonic()

    def add(self, raw_key: str) -> None:
        with self._lock:
            if len(self._until) >= self.MAX_KEYS:
                self._until.clear()
            self._until[hash_key(raw_key)] = time.monotonic() + self.SECONDS


_recently_accepted = _RecentKeys()
