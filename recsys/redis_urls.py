"""Redis URLs: which logical databases of one Redis the project uses, and how each client spells them.

REDIS_URL's database (its path, ``/N``, or ``?db=N`` for a Unix socket; 0 when it names none) holds
Celery's queues and the fold-in bookkeeping; the next one the cache, the one after the task results.
So two deployments, or a test run per pytest-xdist worker, share one Redis by choosing databases
three apart. Pure functions of strings: settings and the test plugin read them before Django starts.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

CACHE_OFFSET = 1  # the cache's database, counted from REDIS_URL's
RESULTS_OFFSET = 2  # Celery's task results
DATABASES_USED = 3  # queues, cache, results


def redis_base_db(url: str) -> int:
    """The database REDIS_URL names: ``redis://h:6379/4`` is 4, ``unix:///r.sock?db=4`` is 4, else 0."""
    parts = urlsplit(url)
    if url.startswith("unix://"):
        return int(parse_qs(parts.query).get("db", ["0"])[-1])
    path = parts.path.strip("/")
    return int(path) if path else 0


def redis_db_url(url: str, db: int) -> str:
    """The same Redis server, another logical database (cache apart from the Celery queues)."""
    if url.startswith("unix://"):
        return f"{url.split('?', 1)[0]}?db={db}"
    parts = urlsplit(url)
    return parts._replace(path=f"/{db}").geturl()


def celery_redis_url(url: str, db: int, *, scheme: str = "redis") -> str:
    """Kombu and Celery spell a Unix socket ``<scheme>+socket://`` with the database as virtual_host."""
    if url.startswith("unix://"):
        return f"{scheme}+socket://{url.removeprefix('unix://').split('?', 1)[0]}?virtual_host={db}"
    return redis_db_url(url, db)
