"""What serving paths share: the answer cache wrapper re-reads a pointer whose version vanished."""

from __future__ import annotations

import pytest

from embeddings import services
from embeddings.learners import LearnerParams
from embeddings.models import ActiveVersion, Kind, ModelVersion
from embeddings.recommendations import user_recommendations_list
from embeddings.serving import active
from embeddings.vectors import tables

pytestmark = pytest.mark.django_db
PARAMS = LearnerParams(factors=8, iterations=8)


def train() -> ModelVersion:
    return services.collaborative_model_train(version_id=services.collaborative_version_create(params=PARAMS).pk)


def test_a_version_dropped_under_a_stale_pointer_is_answered_from_the_new_one(communities, settings):
    settings.RECSYS_CF_TUNE = False
    settings.RECSYS_ANSWER_CACHE_SECONDS = 0
    settings.RECSYS_ACTIVE_VERSION_CACHE_SECONDS = 3600
    old, new = train(), train()
    ActiveVersion.objects.filter(kind=Kind.COLLABORATIVE).update(version=old)
    assert active(Kind.COLLABORATIVE).pk == old.pk  # this process now caches the old pointer

    # Another process switches back to the new version and prunes the old one's tables.
    ActiveVersion.objects.filter(kind=Kind.COLLABORATIVE).update(version=new)
    tables.tables_drop(old.pk)

    answer = user_recommendations_list(user_external_id="u1", limit=5)

    assert answer.model == {"kind": "collaborative", "version": new.pk} and len(answer.items) == 5
