"""Each web process's search query encoder, loaded when a content version becomes active.

A model such as MiniLM takes seconds to load. A web process started before any content version
existed found nothing to preload, so its first semantic search used to pay for the load. Now a
watcher thread notices a newly active content version (one indexed read of the pointer every
second) and loads its encoder off the request path; until it has, search keeps answering from
the version it loaded before (or, for a first version, as if none were active yet).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection

from embeddings.content import version_encoder
from embeddings.encoders import encoder_learns
from embeddings.models import ActiveVersion, Kind, ModelVersion
from embeddings.serving import active

logger = logging.getLogger(__name__)
WARM_UP_TEXT = "warm up"  # one encode after loading: the first real query then runs at full speed


@dataclass
class Watch:
    """What this process's watcher has loaded; ``ready`` is the newest version it loaded."""

    interval: float
    stop: threading.Event = field(default_factory=threading.Event)
    loaded: set[int] = field(default_factory=set)
    ready: ModelVersion | None = None
    thread: threading.Thread | None = None


_watch: Watch | None = None


def query_encoder_watch_start(*, interval: float | None = None) -> Watch:
    """Load the active content version's query encoder now (if any), then watch for new ones from
    a daemon thread; gunicorn calls it once per worker before the worker takes requests."""
    global _watch
    if _watch is not None:
        return _watch
    default = max(0.5, settings.RECSYS_ACTIVE_VERSION_CACHE_SECONDS / 2)
    watch = Watch(interval=interval if interval is not None else default)
    try:
        query_encoder_poll(watch)
    except Exception:  # a missing model or database must not keep the worker from serving
        logger.warning("could not preload the search query encoder", exc_info=True)
    watch.thread = threading.Thread(target=_run, args=(watch,), name="query-encoder-watch", daemon=True)
    watch.thread.start()
    _watch = watch
    return watch


def query_encoder_watch_stop() -> None:
    global _watch
    watch, _watch = _watch, None
    if watch is not None and watch.thread is not None:
        watch.stop.set()
        watch.thread.join(timeout=30)


def _run(watch: Watch) -> None:
    try:
        while not watch.stop.wait(watch.interval):
            try:
                query_encoder_poll(watch)
            except Exception:  # the database away or a model that fails to load: try again later
                logger.warning("could not load the search query encoder", exc_info=True)
                connection.close()
    finally:
        connection.close()  # this thread's own connection


def query_encoder_poll(watch: Watch) -> int | None:
    """One look at the content pointer; loads the encoder of a version not loaded yet. Returns
    the version loaded by this call, if any."""
    version_id = ActiveVersion.objects.filter(kind=Kind.CONTENT).values_list("version_id", flat=True).first()
    if version_id is None or version_id in watch.loaded:
        return None
    # Its state (megabytes for TF-IDF) is read by the encoder's load, not kept on the watch's copy.
    version = ModelVersion.objects.defer("encoder_state", "item_gram", "centroids").get(pk=version_id)
    started = time.perf_counter()
    version_encoder(version, for_queries=True).encode([WARM_UP_TEXT])
    watch.loaded.add(version.pk)
    watch.ready = version
    logger.info("search query encoder of content v%s loaded in %.1f s", version.pk, time.perf_counter() - started)
    return version.pk


def content_version_for_queries() -> ModelVersion | None:
    """The content version search answers from: the active one; in a process whose watcher loads
    encoders, the active one once its encoder is loaded (until then the version loaded before)."""
    content = active(Kind.CONTENT)
    watch = _watch
    if content is None or watch is None or content.pk in watch.loaded:
        return content
    ready = watch.ready
    if ready is not None and ready.params == content.params and not encoder_learns(content.params["encoder"]):
        return content  # the same pretrained model with the same settings: its encoder is loaded
    # The previous version's vectors are kept for rollback (unless only one version is kept).
    return ready if ready is not None and settings.RECSYS_KEEP_VERSIONS > 1 else None
