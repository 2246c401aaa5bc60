"""Shared fixtures: API clients holding keys of given scopes, and a per-run cache namespace."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from recsys.api_keys import api_key_create


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache_namespace() -> None:
    """Tests share the embedded Redis with a running demo; give them their own key prefix."""
    settings.CACHES["default"]["KEY_PREFIX"] = f"test-{os.getpid()}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_client(db: None) -> Callable[..., APIClient]:
    """``make_client("read", "write")`` → an APIClient authenticated with a fresh key of those scopes."""

    def make(*scopes: str, rate_limit: str = "") -> APIClient:
        _, raw_key = api_key_create(name=f"test-{'-'.join(scopes)}", scopes=list(scopes), rate_limit=rate_limit)
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
        client.raw_key = raw_key  # type: ignore[attr-defined]
        return client

    return make


@pytest.fixture
def reader(make_client: Callable[..., APIClient]) -> APIClient:
    return make_client("read")


@pytest.fixture
def writer(make_client: Callable[..., APIClient]) -> APIClient:
    return make_client("read", "write")


@pytest.fixture
def admin_client_api(make_client: Callable[..., APIClient]) -> APIClient:
    return make_client("read", "write", "admin")
