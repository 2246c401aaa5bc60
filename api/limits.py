"""Concurrent expensive requests per API key and in total: slots in Redis, per process while Redis is away."""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from rest_framework.exceptions import Throttled
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from recsys import redis_store
from recsys.addresses import client_address
from recsys.models import ApiKey
from recsys.rates import parse_rate

RETRY_AFTER_SECONDS = 1  # expensive requests end within the serving time limit (2 s)
# A slot is freed when its request ends; one whose process died is freed when this runs out.
LEASE_WITHOUT_DEADLINE_SECONDS = 60
_SLOTS_ATTRIBUTE = "recsys_expensive_slots"

# Takes a slot in the key's set and the global one, or neither: 0 taken, 1 key full, 2 all full.
# Members score their expiry (Redis' own clock, so web hosts' clocks do not matter).
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[2])
for _, name in ipairs(KEYS) do redis.call('ZREMRANGEBYSCORE', name, '-inf', now) end
local limits = {tonumber(ARGV[3]), tonumber(ARGV[4])}
for i, name in ipairs(KEYS) do
    if limits[i] > 0 and redis.call('ZCARD', name) >= limits[i] then return i end
end
for _, name in ipairs(KEYS) do
    redis.call('ZADD', name, now + lease, ARGV[1])
    redis.call('EXPIRE', name, math.ceil(lease) + 1)
end
return 0
"""


class ExpensiveRequestsLimited(Throttled):
    """429: this key, or all keys together, already run as many expensive requests as allowed."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail=detail)
        self.wait: float | None = RETRY_AFTER_SECONDS  # Throttled would add its wait to the message


@dataclass(frozen=True)
class Slot:
    token: str
    key_id: int
    in_redis: bool


class ExpensiveRequestThrottle(BaseThrottle):
    """Takes a slot for a request to an expensive view (one whose ``expensive`` attribute is true,
    or returns true for the request); ExpensiveRequestMiddleware frees it when the request ends.
    A view's ``admit(request)``, if it has one, refuses malformed input first (two Redis round
    trips saved on each refused request)."""

    def allow_request(self, request: Request, view: Any) -> bool:
        key = request.auth
        if not isinstance(key, ApiKey) or not _expensive(view, request):
            return True
        admit = getattr(view, "admit", None)
        if admit is not None:  # malformed input is refused (400) without taking a slot
            admit(request)
        slot = slot_acquire(key_id=key.pk)
        held = getattr(request._request, _SLOTS_ATTRIBUTE, [])
        setattr(request._request, _SLOTS_ATTRIBUTE, [*held, slot])
        return True


class ExpensiveRequestMiddleware:
    """Frees the slots a request took, however it ended; and keeps the penalty box: a caller (an
    Authorization header from an address) answered 429 on an API path, or refused as malformed
    (400) there more often than RECSYS_MALFORMED_REQUEST_RATE, is answered 429 on that path by
    this process until its Retry-After has passed, before any database, Redis or DRF work."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        place = _penalty_place(request)
        if place is not None:
            wait = penalty_box.wait(place)
            if wait > 0:
                return _boxed(wait)
        try:
            response = self.get_response(request)
        finally:
            for slot in getattr(request, _SLOTS_ATTRIBUTE, ()):
                slot_release(slot=slot)
        if place is not None and response.status_code in (400, 429):
            penalty_box.record(place, response)
        return response


def slot_acquire(*, key_id: int) -> Slot:
    """A slot for one expensive request of this key; raises ExpensiveRequestsLimited when the key's
    or the global limit is reached."""
    per_key, total = settings.RECSYS_EXPENSIVE_CONCURRENCY_PER_KEY, settings.RECSYS_EXPENSIVE_CONCURRENCY_TOTAL
    token = uuid.uuid4().hex
    arguments = (*_names(key_id), token, _lease(), per_key, total)
    try:
        full = redis_store.run(lambda client: client.eval(_ACQUIRE, 2, *arguments))
        in_redis = True
    except redis_store.RedisUnavailable:  # limit this process alone rather than not at all
        full = _local.acquire(key_id, per_key, total)
        in_redis = False
    if full:
        raise _limited(per_key if full == 1 else total, "this API key" if full == 1 else "all API keys together")
    return Slot(token, key_id, in_redis)


def slot_release(*, slot: Slot) -> None:
    if not slot.in_redis:
        _local.release(slot.key_id)
        return
    try:
        redis_store.run(lambda client: _remove(client, slot))
    except redis_store.RedisUnavailable:
        pass  # the slot's lease frees it


def _remove(client: Any, slot: Slot) -> None:
    with client.pipeline(transaction=False) as pipe:
        for name in _names(slot.key_id):
            pipe.zrem(name, slot.token)
        pipe.execute()


def _names(key_id: int) -> tuple[str, str]:
    return redis_store.key(f"expensive:key:{key_id}"), redis_store.key("expensive:all")


def _lease() -> float:
    limit_ms = settings.RECSYS_SERVING_STATEMENT_TIMEOUT_MS
    return 2 * limit_ms / 1000 + 1 if limit_ms else LEASE_WITHOUT_DEADLINE_SECONDS


def _expensive(view: Any, request: Request) -> bool:
    expensive = getattr(view, "expensive", False)
    return bool(expensive(request) if callable(expensive) else expensive)


def _limited(limit: int, whom: str) -> ExpensiveRequestsLimited:
    return ExpensiveRequestsLimited(
        f"at most {limit} expensive requests (search, duplicates, popular over a custom window) run at "
        f"once for {whom}; retry after the ones in flight finish"
    )


class _LocalSlots:
    """The same limits counted in this process alone, while Redis is away."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: Counter[int | None] = Counter()  # per key id; None counts them all

    def acquire(self, key_id: int, per_key: int, total: int) -> int:
        with self._lock:
            if per_key and self._held[key_id] >= per_key:
                return 1
            if total and self._held[None] >= total:
                return 2
            self._held[key_id] += 1
            self._held[None] += 1
            return 0

    def release(self, key_id: int) -> None:
        with self._lock:
            self._held[key_id] -= 1
            self._held[None] -= 1


_local = _LocalSlots()


# ---- the penalty box ----------------------------------------------------------------------------

API_PREFIX = "/api/"
PENALTY_MAX_SECONDS = 60.0  # a longer Retry-After (an hourly rate) is held this long, then asked again
Place = tuple[int, str]  # (hash of the Authorization header and client address, path)


def _penalty_place(request: HttpRequest) -> Place | None:
    """(caller, path): the caller is the Authorization header from the client's address, as an
    invalid key's 429 is its address's (api.throttling) and a valid key's its own."""
    authorization = request.META.get("HTTP_AUTHORIZATION")
    if not authorization or not settings.RECSYS_PENALTY_BOX or not request.path_info.startswith(API_PREFIX):
        return None
    return hash((authorization, client_address(request))), request.path_info


def _boxed(wait: float) -> HttpResponse:
    # Here, not at the top: api.exceptions imports DRF's views, whose settings import this module.
    from api.exceptions import error_response

    seconds = max(1, math.ceil(wait))
    response = error_response(
        429,
        "rate_limited",
        "this API key was refused on this path moments ago, from this address (429, or too many "
        "malformed requests); retry after Retry-After",
        {"retry_after": seconds},
    )
    response["Retry-After"] = str(seconds)
    return response


class PenaltyBox:
    """Places (caller, path) refused lately, each until a deadline, and the 400s of each place in
    the current window. Per process and in memory, so that a refusal costs nothing shared; bounded
    in size (past MAX_PLACES it starts over, which frees every place early, never holds one late)."""

    MAX_PLACES = 10_000

    def __init__(self) -> None:
        self._until: dict[Place, float] = {}
        self._malformed: dict[Place, tuple[int, int]] = {}  # place → (window, 400s in it)
        self._lock = threading.Lock()

    def wait(self, place: Place) -> float:
        """Seconds ``place`` stays refused (0: not refused)."""
        until = self._until.get(place)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            self._until.pop(place, None)
        return max(left, 0.0)

    def hold(self, place: Place, seconds: float) -> None:
        with self._lock:
            if len(self._until) >= self.MAX_PLACES:
                self._until.clear()
            self._until[place] = time.monotonic() + min(seconds, PENALTY_MAX_SECONDS)

    def record(self, place: Place, response: HttpResponse) -> None:
        """A 429 holds the place for its Retry-After; a 400 counts toward the malformed-request rate."""
        if response.status_code == 429:
            self.hold(place, _retry_after(response))
            return
        rate = parse_rate(settings.RECSYS_MALFORMED_REQUEST_RATE)
        now = time.time()
        window = int(now // rate.seconds)
        with self._lock:
            if len(self._malformed) >= self.MAX_PLACES:
                self._malformed.clear()
            seen_window, count = self._malformed.get(place, (window, 0))
            count = count + 1 if seen_window == window else 1
            self._malformed[place] = (window, count)
        if count >= rate.requests:
            self.hold(place, (window + 1) * rate.seconds - now)

    def clear(self) -> None:
        with self._lock:
            self._until.clear()
            self._malformed.clear()


def _retry_after(response: HttpResponse) -> float:
    try:
        return max(0.0, float(response.get("Retry-After") or 0))
    except ValueError:  # an HTTP date: not what this API sends
        return 0.0


penalty_box = PenaltyBox()
