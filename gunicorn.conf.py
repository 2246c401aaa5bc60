"""gunicorn settings: sync workers sized by WEB_CONCURRENCY (default 2 x cores + 1)."""

from __future__ import annotations

import multiprocessing
import os

workers = int(os.environ.get("WEB_CONCURRENCY", multiprocessing.cpu_count() * 2 + 1))
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 20
# Recycle workers now and then so that a slow leak cannot grow without bound.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "20000"))
max_requests_jitter = max_requests // 10
# gunicorn's largest request line (default 4094): long exclude= lists fit, and a longer line is
# refused by gunicorn itself (414, not JSON) before it costs the application anything.
limit_request_line = 8190
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
# The web process bounds its serving queries (read-scope API requests; see
# api.middleware.StatementTimeoutMiddleware); workers and migrations do not read this file.
os.environ.setdefault("RECSYS_SERVING_STATEMENT_TIMEOUT_MS", "2000")
