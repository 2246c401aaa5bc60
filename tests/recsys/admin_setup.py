"""Data for the admin tests: two topics of items, users who each like one topic, and trained models."""

from __future__ import annotations

from embeddings import content, services
from embeddings.learners import LearnerParams
from embeddings.models import ModelVersion
from recsys.services import interactions_ingest, items_upsert

COOKING = ["pasta", "garlic", "basil", "tomato", "oven", "sauce", "dough", "soup"]
SKY = ["telescope", "comet", "planet", "galaxy", "orbit", "nebula", "lunar", "eclipse"]


def catalogue_store() -> None:
    """cooking0..7 and sky0..7, with text and a category each."""
    items = []
    for topic, words in (("cooking", COOKING), ("sky", SKY)):
        for n in range(8):
            text = " ".join(words[(n + k) % 8] for k in range(4))
            title = f"{words[n].capitalize()} and {words[(n + 1) % 8]}"
            items.append({"id": f"{topic}{n}", "title": title, "text": text, "categories": [topic]})
    items_upsert(rows=items)


def interactions_store() -> None:
    """u0..u5 like cooking, u6..u11 like sky (two thirds of their topic's items each)."""
    rows = []
    for user in range(12):
        topic = "cooking" if user < 6 else "sky"
        for n in range(8):
            if (user + n) % 3:
                rows.append({"user": f"u{user}", "item": f"{topic}{n}", "type": "purchase"})
    assert not interactions_ingest(rows=rows).errors


def collaborative_train(regularization: float = 10.0) -> ModelVersion:
    # EASE: exact on a catalogue this small, so the two topics come out cleanly apart.
    params = LearnerParams(algorithm="ease", factors=8, regularization=regularization)
    version = services.collaborative_version_create(params=params)
    return services.collaborative_model_train(version_id=version.pk)


def content_build() -> ModelVersion:
    version = content.content_version_create()
    return content.content_model_build(version_id=version.pk)


def models_trained(settings: object) -> tuple[ModelVersion, ModelVersion]:
    """(collaborative, content), both active, on the fake deterministic text encoder."""
    settings.RECSYS_CONTENT_ENCODER = "fake"  # type: ignore[attr-defined]
    settings.RECSYS_CF_TUNE = False  # type: ignore[attr-defined]
    catalogue_store()
    interactions_store()
    built = content_build()
    return collaborative_train(), built
