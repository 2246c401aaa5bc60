"""Hot recommendation answers in Redis, per user or item, with token-based invalidation.

An answer is stored with the tokens current when its computation *started*: the owner's token
(replaced when that user sends interactions or gets a new vector) and the global token (replaced
on a model switch or a catalogue change). A read is a hit only while both tokens are unchanged,
so an answer computed from data that changed meanwhile can be written but is never served.
Each answer also carries the time it was written and is not served after RECSYS_ANSWER_CACHE_SECONDS,
so that an invalidation lost while Redis was away costs at most that (the hash's own expiry, renewed
by every write to it, does not bound a single entry's age).
Without Redis every request is computed; nothing else changes.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict
from typing import Any

from django.conf import settings
from django.db import transaction

from recsys import redis_store

GLOBAL = "answers-token:*"


def _keys(owner: str) -> tuple[str, str, str]:
    return (
        redis_store.key(f"answers:{owner}"),
        redis_store.key(f"answers-token:{owner}"),
        redis_store.key(GLOBAL),
    )


def answer_cached(*, owner: str, variant: str, compute: Callable[[], Any], decode: Callable[[dict], Any]) -> Any:
    """``compute()``'s answer for ``owner`` (e.g. ``user:42``) and ``variant`` (its parameters),
    from Redis when still valid. Answers are dataclasses, stored as JSON; ``decode`` rebuilds one."""
    ttl = settings.RECSYS_ANSWER_CACHE_SECONDS
    if ttl <= 0:
        return compute()
    answers, owner_token, global_token = _keys(owner)
    variant = _field(variant)
    try:
        stored, *tokens = redis_store.run(lambda client: _read(client, answers, variant, owner_token, global_token))
    except redis_store.RedisUnavailable:
        return compute()
    tokens = [t.decode() if t else "" for t in tokens]
    if stored is not None:
        entry = json.loads(stored)
        if entry["tokens"] == tokens and time.time() - entry.get("at", 0.0) <= ttl:
            return decode(entry["answer"])
    answer = compute()
    entry_json = json.dumps({"tokens": tokens, "at": round(time.time(), 3), "answer": asdict(answer)})
    try:
        redis_store.run(lambda client: _write(client, answers, variant, entry_json, ttl))
    except redis_store.RedisUnavailable:
        pass
    return answer


def _read(client: Any, answers: str, variant: str, owner_token: str, global_token: str) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        pipe.hget(answers, variant)
        pipe.get(owner_token)
        pipe.get(global_token)
        return pipe.execute()  # type: ignore[no-any-return]


# An owner's answers are one hash, a field per variant (limit, category, filters, boosts...), and stale
# fields are only ever replaced, not removed: a caller sending a new filter text on every request grew
# one hot item's hash by a field a request, without end, for as long as the requests kept renewing its
# expiry. Fields are named by a digest of the variant (a rule's text can be kilobytes), and a hash that
# passes MAX_VARIANTS fields starts over with the one being written (the others are computed again).
MAX_VARIANTS = 32
_WRITE_SCRIPT = """
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
if redis.call("HLEN", KEYS[1]) > tonumber(ARGV[4]) then
    redis.call("DEL", KEYS[1])
    redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
end
redis.call("EXPIRE", KEYS[1], ARGV[3])
return 1
"""


def _field(variant: str) -> str:
    return hashlib.blake2b(variant.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _write(client: Any, answers: str, variant: str, entry: str, ttl: int) -> None:
    client.eval(_WRITE_SCRIPT, 1, answers, variant, entry, ttl, MAX_VARIANTS)


def answers_invalidate(*, owners: Iterable[str]) -> None:
    """New tokens for these owners (after the current transaction commits): their answers go stale."""
    owners = list(owners)
    if owners and settings.RECSYS_ANSWER_CACHE_SECONDS > 0:
        transaction.on_commit(lambda: _renew(redis_store.keys(f"answers-token:{owner}" for owner in owners)))


def answers_invalidate_all() -> None:
    """A new global token: every cached answer goes stale (model switch, catalogue change). With
    read replicas, again once the slowest one served may have replayed the change: a request that
    read the new token but a lagging replica's old rows would otherwise cache an answer without the
    change (a hidden item) under the new token."""
    if settings.RECSYS_ANSWER_CACHE_SECONDS > 0:
        transaction.on_commit(_renew_global)


def _renew_global() -> None:
    _renew([redis_store.key(GLOBAL)], expire=False)
    if settings.DATABASE_REPLICA_URLS:
        _renew_global_later(settings.RECSYS_READ_YOUR_WRITES_SECONDS)


# One pending second renewal per process, pushed back by each change: a burst of catalogue writes
# starts one timer, which renews once the last of them may have been replayed.
_later_lock = threading.Lock()
_later: dict[str, Any] = {"due": 0.0, "timer": None, "key": None}


def _renew_global_later(delay: float) -> None:
    with _later_lock:
        _later["due"] = time.monotonic() + delay
        _later["key"] = redis_store.key(GLOBAL)  # named here: its namespace is this context's
        if _later["timer"] is None:
            _later["timer"] = _timer(delay)


def _timer(delay: float) -> threading.Timer:
    timer = threading.Timer(delay, _renew_global_due)
    timer.daemon = True
    timer.start()
    return timer


def _renew_global_due() -> None:
    with _later_lock:
        left = _later["due"] - time.monotonic()
        if left > 0:  # a later change pushed it back
            _later["timer"] = _timer(left)
            return
        _later["timer"], key = None, _later["key"]
    _renew([key], expire=False)


# Sets every key given to the token (ARGV[1]), with a TTL in seconds unless ARGV[2] is "0": one command
# for an ingest batch's thousand users (a pipeline of a thousand SETs cost the web process ~60 ms of CPU
# per batch, more than the rest of the request).
_RENEW_SCRIPT = """
for _, key in ipairs(KEYS) do
    if ARGV[2] == "0" then redis.call("SET", key, ARGV[1]) else redis.call("SET", key, ARGV[1], "EX", ARGV[2]) end
end
return #KEYS
"""


def _renew(tokens: list[str], *, expire: bool = True) -> None:
    # Tokens outlive the answers they guard; one that expired reads as "" and matches no answer
    # stored under a real token, so expiry can only cause a miss, never a stale hit. One new random
    # value serves every key of the call: what matters is that each key's value changes.
    ttl = settings.RECSYS_ANSWER_CACHE_SECONDS + 60 if expire else 0

    def renew(client: Any) -> None:
        client.eval(_RENEW_SCRIPT, len(tokens), *tokens, secrets.token_hex(8), ttl)

    try:
        redis_store.run(renew)
    except redis_store.RedisUnavailable:
        pass  # answers cached before the outage are not served past their age limit
