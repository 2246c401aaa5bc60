"""gunicorn settings: sync workers (recsys.web_worker) sized by WEB_CONCURRENCY (default 2 x cores + 1), or
threaded ones with keep-alive (GUNICORN_WORKER=threads: a process per core, GUNICORN_THREADS threads each)."""

from __future__ import annotations

import multiprocessing
import os

import gunicorn.util

from recsys.web_worker import close_answered, write_json_error

# gunicorn's sync worker with deadlines for reading a request (GUNICORN_HEAD_TIMEOUT, 5 s, for the
# request line and headers; GUNICORN_READ_TIMEOUT, 10 s, for each read of the body): without them
# a connection that sends nothing holds a worker until `timeout` kills it (recsys/web_worker.py).
# GUNICORN_WORKER=threads: gunicorn's threaded worker with the same deadlines (recsys.web_worker.ThreadWorker),
# GUNICORN_THREADS threads in each of WEB_CONCURRENCY processes (default: one per core), and HTTP
# keep-alive for GUNICORN_KEEPALIVE seconds: behind a load balancer that keeps its connections to the
# backends open, each request skips a TCP handshake and close, and fewer, busier processes keep their
# caches warm (BENCHMARKS.md, Hot path, seventh pass). Each thread holds its own database connection.
WORKER = os.environ.get("GUNICORN_WORKER", "sync").strip().lower()
if WORKER not in {"sync", "threads"}:
    raise SystemExit(f"GUNICORN_WORKER={WORKER!r}: sync (the default) or threads")
if WORKER == "threads":  # (threads > 1 with the sync class would make gunicorn pick its own threaded worker)
    worker_class = "recsys.web_worker.ThreadWorker"
    threads = int(os.environ.get("GUNICORN_THREADS", "4"))
    keepalive = int(os.environ.get("GUNICORN_KEEPALIVE", "5"))
    default_workers = multiprocessing.cpu_count()
else:
    worker_class = "recsys.web_worker.SyncWorker"
    default_workers = multiprocessing.cpu_count() * 2 + 1  # gunicorn's advice for sync workers
# gunicorn's workers close each connection through gunicorn.util.close_graceful, which waits up to
# 2 s for the client to close first: an idle client would hold a sync worker that long. Ours
# lingers only while unread request bytes keep arriving (recsys/web_worker.py).
gunicorn.util.close_graceful = close_answered
# gunicorn's own refusals (a URL over limit_request_line: 414, headers it cannot parse: 400) were an
# HTML page; the API's clients get its JSON error body.
gunicorn.util.write_error = write_json_error

workers = int(os.environ.get("WEB_CONCURRENCY", default_workers))
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = 20
# Recycle workers now and then so that a slow leak cannot grow without bound.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "20000"))
max_requests_jitter = max_requests // 10
# Load Django once in the master and fork workers from it: a replaced worker (max_requests, or a
# crash) then starts in ~0.01 s of CPU instead of 0.7-1.3 s of imports and app loading, which under
# a flood of cheap requests (the search attack's refusals recycle each worker every minute or two)
# was the slowest rounds' extra cost (bench/attack.py). Nothing connects at import (connections,
# Redis clients and the key-change subscription are opened per process, after the fork). A HUP
# then restarts workers with the code the master loaded: restart the master to deploy new code.
preload_app = os.environ.get("GUNICORN_PRELOAD", "true").lower() in {"1", "true", "yes", "on"}
# gunicorn's largest request line (default 4094): long exclude= lists fit, and a longer line is
# refused by gunicorn itself (414, not JSON) before it costs the application anything.
limit_request_line = 8190
# gunicorn 25.1+ opens a control socket for `gunicornc` at one path per user ($XDG_RUNTIME_DIR or
# ~/.gunicorn/gunicorn.ctl), which every master on the host then takes from the one before (tests,
# benchmarks, a second deployment), and the first to stop removes it for all. Off unless a path of
# the deployment's own is given.
if os.environ.get("GUNICORN_CONTROL_SOCKET"):
    control_socket = os.environ["GUNICORN_CONTROL_SOCKET"]
else:
    control_socket_disable = True
accesslog = os.environ.get("GUNICORN_ACCESS_LOG") or None
errorlog = "-"
# The web process bounds its serving queries (read-scope API requests; see
# api.middleware.StatementTimeoutMiddleware); workers and migrations do not read this file.
os.environ.setdefault("RECSYS_SERVING_STATEMENT_TIMEOUT_MS", "2000")


def post_worker_init(worker):  # type: ignore[no-untyped-def]
    """Load the search query encoder (seconds for MiniLM) before this worker takes requests, and
    again off the request path whenever a new content version becomes active, so no search waits
    for it; RECSYS_SEARCH_PRELOAD=false saves its memory (~400 MB more per worker with MiniLM)
    where semantic search is not used (the first search then loads it)."""
    if os.environ.get("RECSYS_SEARCH_PRELOAD", "true").lower() not in {"1", "true", "yes", "on"}:
        return
    try:
        from django.db import close_old_connections

        from embeddings.query_encoder import query_encoder_watch_start

        query_encoder_watch_start()
        close_old_connections()
    except Exception:  # a missing model or database must not keep the worker from serving
        worker.log.warning("could not preload the search query encoder", exc_info=True)
