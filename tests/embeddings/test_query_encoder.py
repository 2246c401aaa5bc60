"""Each web process loads a newly active content version's query encoder off the request path."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from embeddings import content, encoders, query_encoder
from embeddings.models import ModelVersion
from embeddings.search import items_search
from embeddings.vectors import tables
from recsys.services import items_upsert

CATALOGUE = [
    {"id": f"{topic}{n}", "title": f"{topic} {word}", "text": f"all about {topic} and {word}"}
    for topic in ("telescope", "recipe")
    for n, word in enumerate(["basics", "tips", "gear", "history"])
]


@pytest.fixture
def tfidf(settings) -> None:
    # Fitted per version: nothing but a load for this very version puts its encoder in the cache.
    settings.RECSYS_CONTENT_ENCODER = "tfidf-svd"
    settings.RECSYS_CONTENT_DIMENSIONS = 4
    items_upsert(rows=CATALOGUE)


@pytest.fixture
def created(monkeypatch) -> list[str]:
    """Every encoder this process creates (a spy: the real factory still builds them)."""
    names: list[str] = []
    real = encoders.encoder_create

    def spy(**kwargs: object) -> encoders.TextEncoder:
        names.append(str(kwargs["name"]))
        return real(**kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(encoders, "encoder_create", spy)
    return names


@pytest.fixture
def watch() -> Iterator[None]:
    yield
    query_encoder.query_encoder_watch_stop()


@pytest.fixture
def version_tables_dropped() -> Iterator[None]:
    """Version tables are not Django's: a transactional test drops them before the flush."""
    yield
    for version_id in ModelVersion.objects.values_list("pk", flat=True):
        tables.tables_drop(version_id)


def build() -> ModelVersion:
    return content.content_model_build(version_id=content.content_version_create().pk)


def test_a_version_activated_after_start_is_loaded_by_the_watcher_and_no_search_loads_it(
    transactional_db, version_tables_dropped, settings, created, watch
):
    settings.RECSYS_CONTENT_ENCODER = "tfidf-svd"
    settings.RECSYS_CONTENT_DIMENSIONS = 4
    running = query_encoder.query_encoder_watch_start(interval=0.1)
    assert running.ready is None  # nothing to preload at start

    items_upsert(rows=CATALOGUE)  # the first items build and activate a first content version
    version = ModelVersion.objects.get(kind="content", status="active")
    deadline = time.monotonic() + 10
    while version.pk not in running.loaded:
        assert time.monotonic() < deadline, "the watcher never loaded the new version's encoder"
        time.sleep(0.05)
    assert created == ["tfidf-svd"]  # loaded once, by the watcher thread

    answer = items_search(query="telescope basics", mode="semantic", limit=3)

    assert answer.strategy == "semantic" and answer.model == {"kind": "content", "version": version.pk}
    assert answer.items[0].id == "telescope0"
    assert created == ["tfidf-svd"]  # the search found it loaded


def test_until_the_watcher_has_loaded_a_new_version_search_answers_from_the_one_it_loaded_before(
    db, tfidf, watch, settings
):
    settings.RECSYS_ACTIVE_VERSION_CACHE_SECONDS = 0
    running = query_encoder.query_encoder_watch_start(interval=3600)  # polled by hand below
    assert query_encoder.content_version_for_queries() is None
    first = build()
    assert query_encoder.content_version_for_queries() is None  # a first version: not ready yet

    assert query_encoder.query_encoder_poll(running) == first.pk
    second = build()

    assert query_encoder.content_version_for_queries().pk == first.pk
    assert query_encoder.query_encoder_poll(running) == second.pk
    assert query_encoder.content_version_for_queries().pk == second.pk


def test_without_a_watcher_search_uses_the_active_version_at_once(db, tfidf, settings):
    settings.RECSYS_ACTIVE_VERSION_CACHE_SECONDS = 0
    version = build()

    assert query_encoder.content_version_for_queries().pk == version.pk
