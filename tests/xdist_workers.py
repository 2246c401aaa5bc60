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


def worker_redis_url(url: str, worker: str) -> str:
    """REDIS_URL for xdist worker ``gwN``: the databases ``3 N`` further on (Redis has 16 by default: 5 workers)."""
    return redis_db_url(url, redis_base_db(url) + DATABASES_USED * int(worker.removeprefix("gw")))


_worker = os.environ.get("PYTEST_XDIST_WORKER")
if _worker and os.environ.get("REDIS_URL") and "RECSYS_XDIST_REDIS_URL" not in os.environ:
    os.environ["RECSYS_XDIST_REDIS_URL"] = os.environ["REDIS_URL"] = worker_redis_url(os.environ["REDIS_URL"], _worker)
