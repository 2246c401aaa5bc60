"""Expensive requests per API key and in total: how many run at once (slots) and how much of the
machine's time they take (a budget of seconds per second); in Redis, per process while Redis is away."""

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

# Debt of a time budget (a hash: debt, at) after it has drained at ``rate`` seconds per second.
_DEBT = """
local function debt(name, rate, now)
    local v = redis.call('HMGET', name, 'debt', 'at')
    if rate <= 0 or not v[1] then return 0 end
    return math.max(0, tonumber(v[1]) - (now - tonumber(v[2])) * rate)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""
# KEYS: the key's slots, all slots, the key's budget, the global budget. ARGV: token, lease, the
# two concurrency limits, the two budget rates, the burst. Takes a slot in both sets, or neither:
# {0} taken, {1} key full, {2} all full, {3, wait ms} key's budget spent, {4, wait ms} all spent.
# Slot members score their expiry (Redis' own clock, so web hosts' clocks do not matter).
_ACQUIRE = (
    _DEBT
    + """
local lease = tonumber(ARGV[2])
local burst = tonumber(ARGV[7])
for i = 1, 2 do redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now) end
local limits = {tonumber(ARGV[3]), tonumber(ARGV[4])}
for i = 1, 2 do
    if limits[i] > 0 and redis.call('ZCARD', KEYS[i]) >= limits[i] then return {i} end
end
local rates = {tonumber(ARGV[5]), tonumber(ARGV[6])}
for i = 1, 2 do
    local owed = debt(KEYS[2 + i], rates[i], now)
    if rates[i] > 0 and owed >= burst then
        return {2 + i, math.ceil((owed - burst) / rates[i] * 1000)}
    end
end
for i = 1, 2 do
    redis.call('ZADD', KEYS[i], now + lease, ARGV[1])
    redis.call('EXPIRE', KEYS[i], math.ceil(lease) + 1)
end
return {0}
"""
)
# KEYS as above. ARGV: token, the seconds the request held its slot, the two rates. Frees the slot
# and charges both budgets.
_RELEASE = (
    _DEBT
    + """
local spent = tonumber(ARGV[2])
local rates = {tonumber(ARGV[3]), tonumber(ARGV[4])}
for i = 1, 2 do redis.call('ZREM', KEYS[i], ARGV[1]) end
for i = 1, 2 do
    if rates[i] > 0 then
        local owed = debt(KEYS[2 + i], rates[i], now) + spent
        redis.call('HSET', KEYS[2 + i], 'debt', tostring(owed), 'at', tostring(now))
        redis.call('EXPIRE', KEYS[2 + i], math.ceil(owed / rates[i]) + 1)
    end
end
return 0
"""
)


class ExpensiveRequestsLimited(Throttled):
    """429: this key, or all keys together, already run as many expensive requests as allowed, or
    have spent their time budget."""

    def __init__(self, detail: str, wait: float = RETRY_AFTER_SECONDS) -> None:
        super().__init__(detail=detail)
        self.wait: float | None = max(RETRY_AFTER_SECONDS, wait)  # Throttled would add its wait to the message


@dataclass(frozen=True)
class Slot:
    token: str
    key_id: int
    in_redis: bool
    started: float  # time.monotonic() when taken: the time it is held is charged to the budgets


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
            retry = penalty_box.retry_after(place)
            if retry > 0:
                return _boxed(retry)
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
    or the global limit is reached, or the key's or everyone's time budget is spent. A budget that
    Redis said is spent is refused by this process, without Redis, for as long as Redis said."""
    limits = _Limits.now()
    asked = time.monotonic()
    spent = _spent.refused(key_id, asked)
    if spent is not None:
        code, wait = spent
        raise _limited(code, limits, wait)
    token = uuid.uuid4().hex
    arguments = (*_names(key_id), token, _lease(), limits.per_key, limits.total, *limits.rates, limits.burst)
    try:
        code, *wait_ms = redis_store.run(lambda client: client.eval(_ACQUIRE, 4, *arguments))
        in_redis = True
    except redis_store.RedisUnavailable:  # limit this process alone rather than not at all
        code, *wait_ms = _local.acquire(key_id, limits)
        in_redis = False
    if code:
        wait = wait_ms[0] / 1000 if wait_ms else RETRY_AFTER_SECONDS
        if in_redis and code in (3, 4):
            _spent.remember(code, key_id, asked + wait)
        raise _limited(code, limits, wait)
    return Slot(token, key_id, in_redis, time.monotonic())


def slot_release(*, slot: Slot) -> None:
    """Frees the slot and charges the time it was held to the key's and the global budget."""
    spent = time.monotonic() - slot.started
    rates = _Limits.now().rates
    if not slot.in_redis:
        _local.release(slot.key_id, spent, rates)
        return
    arguments = (*_names(slot.key_id), slot.token, spent, *rates)
    try:
        redis_store.run(lambda client: client.eval(_RELEASE, 4, *arguments))
    except redis_store.RedisUnavailable:
        pass  # the slot's lease frees it; the time goes uncharged


@dataclass(frozen=True)
class _Limits:
    per_key: int  # requests at once; 0: no limit
    total: int
    rates: tuple[float, float]  # budget: seconds of expensive work per second, per key and in total; 0: none
    burst: float  # seconds that may be spent at once before the rates apply

    @classmethod
    def now(cls) -> _Limits:
        return cls(
            settings.RECSYS_EXPENSIVE_CONCURRENCY_PER_KEY,
            settings.RECSYS_EXPENSIVE_CONCURRENCY_TOTAL,
            (settings.RECSYS_EXPENSIVE_SHARE_PER_KEY, settings.RECSYS_EXPENSIVE_SHARE_TOTAL),
            settings.RECSYS_EXPENSIVE_BURST_SECONDS,
        )


def _names(key_id: int) -> tuple[str, str, str, str]:
    """The key's slots, all slots, the key's budget, the global budget."""
    return (
        redis_store.key(f"expensive:key:{key_id}"),
        redis_store.key("expensive:all"),
        redis_store.key(f"expensive:spent:key:{key_id}"),
        redis_store.key("expensive:spent:all"),
    )


def _lease() -> float:
    limit_ms = settings.RECSYS_SERVING_STATEMENT_TIMEOUT_MS
    return 2 * limit_ms / 1000 + 1 if limit_ms else LEASE_WITHOUT_DEADLINE_SECONDS


def _expensive(view: Any, request: Request) -> bool:
    expensive = getattr(view, "expensive", False)
    return bool(expensive(request) if callable(expensive) else expensive)


def _limited(code: int, limits: _Limits, wait: float) -> ExpensiveRequestsLimited:
    whom = "this API key" if code in (1, 3) else "all API keys together"
    if code in (1, 2):
        return ExpensiveRequestsLimited(
            f"at most {limits.per_key if code == 1 else limits.total} expensive requests (search, duplicates, "
            f"popular over a custom window) run at once for {whom}; retry after the ones in flight finish"
        )
    rate = limits.rates[0 if code == 3 else 1]
    return ExpensiveRequestsLimited(
        f"expensive requests (search, duplicates, popular over a custom window) of {whom} have used their "
        f"time budget ({rate:g} s per second); retry after Retry-After",
        wait,
    )


class _LocalSlots:
    """The same limits and budgets counted in this process alone, while Redis is away."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: Counter[int | None] = Counter()  # per key id; None counts them all
        self._debt: dict[int | None, tuple[float, float]] = {}  # per key id, None for all: (debt, at)

    def acquire(self, key_id: int, limits: _Limits) -> tuple[int, ...]:
        with self._lock:
            if limits.per_key and self._held[key_id] >= limits.per_key:
                return (1,)
            if limits.total and self._held[None] >= limits.total:
                return (2,)
            for code, (whom, rate) in enumerate(zip((key_id, None), limits.rates, strict=True), start=3):
                owed = self._owed(whom, rate)
                if rate > 0 and owed >= limits.burst:
                    return code, math.ceil((owed - limits.burst) / rate * 1000)
            self._held[key_id] += 1
            self._held[None] += 1
            return (0,)

    def release(self, key_id: int, spent: float, rates: tuple[float, float]) -> None:
        with self._lock:
            self._held[key_id] -= 1
            self._held[None] -= 1
            if len(self._debt) >= PenaltyBox.MAX_PLACES:
                self._debt.clear()  # forgets debts: refuses less, never more
            for whom, rate in zip((key_id, None), rates, strict=True):
                if rate > 0:
                    self._debt[whom] = (self._owed(whom, rate) + spent, time.monotonic())

    def budgets_clear(self) -> None:
        with self._lock:
            self._debt.clear()

    def _owed(self, whom: int | None, rate: float) -> float:
        debt, at = self._debt.get(whom, (0.0, 0.0))
        return max(0.0, debt - (time.monotonic() - at) * rate) if rate > 0 else 0.0


_local = _LocalSlots()


class _SpentBudgets:
    """Budgets Redis said are spent, each until the instant it said they drain, so that a key
    flooding expensive requests past its budget (or everyone's) costs this process no Redis round
    trip per refusal. Exact, not a guess: a budget's debt only drains with time, and requests
    that end meanwhile add to it, so Redis would refuse it all that time too (unless it lost the
    debt). Slots are not remembered: one frees whenever a request ends. Bounded like the penalty
    box."""

    def __init__(self) -> None:
        self._until: dict[int | None, float] = {}  # key id, or None for all keys: time.monotonic()

    def refused(self, key_id: int, now: float) -> tuple[int, float] | None:
        """(code, seconds left) of a budget of this key's known to be spent now, the key's first as
        in _ACQUIRE; None: ask Redis."""
        for code, whom in ((3, key_id), (4, None)):
            left = self._until.get(whom, 0.0) - now
            if left > 0:
                return code, left
        return None

    def remember(self, code: int, key_id: int, until: float) -> None:
        if len(self._until) >= PenaltyBox.MAX_PLACES:
            self._until.clear()  # forgets: asks Redis sooner, never refuses longer
        self._until[None if code == 4 else key_id] = until

    def clear(self) -> None:
        self._until.clear()


_spent = _SpentBudgets()


def local_budgets_clear() -> None:
    """Forget the time this process charged while Redis was away, and the budgets it knows are
    spent (tests share one process)."""
    _local.budgets_clear()
    _spent.clear()


# ---- the penalty box ----------------------------------------------------------------------------

API_PREFIX = "/api/"
# A longer Retry-After (an hourly rate) is held this long, then asked again (a raised rate takes effect
# within it); the boxed answers meanwhile say the refusal's own Retry-After, counted down.
PENALTY_MAX_SECONDS = 60.0
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
    # Django's "Too Many Requests" warning was logged for the refusal that boxed the caller; one
    # per boxed request as well would make a flood cost a log line each (a fifth of its CPU here).
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


class PenaltyBox:
    """Places (caller, path) refused lately, each until a deadline, and the 400s of each place in
    the current window. Per process and in memory, so that a refusal costs nothing shared; bounded
    in size (past MAX_PLACES it starts over, which frees every place early, never holds one late)."""

    MAX_PLACES = 10_000

    def __init__(self) -> None:
        self._until: dict[Place, tuple[float, float]] = {}  # place → (held until, its Retry-After until)
        self._malformed: dict[Place, tuple[int, int]] = {}  # place → (window, 400s in it)
        self._lock = threading.Lock()

    def retry_after(self, place: Place) -> float:
        """While ``place`` is held, the seconds until the refusal that boxed it said to retry (past
        the hold, for a long one); 0 when it is not held."""
        until = self._until.get(place)
        if until is None:
            return 0.0
        now = time.monotonic()
        if until[0] <= now:
            with self._lock:  # not a hold another thread of this process made meanwhile
                if self._until.get(place) == until:
                    del self._until[place]
            return 0.0
        return until[1] - now

    def hold(self, place: Place, seconds: float) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._until) >= self.MAX_PLACES:
                self._until.clear()
            self._until[place] = (now + min(seconds, PENALTY_MAX_SECONDS), now + seconds)

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
