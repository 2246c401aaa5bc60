"""The ranking stage end to end against PostgreSQL: trained in the run, stored with the version,
served when it wins (or when forced), explained with feature contributions."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg
import pytest
from django.urls import reverse
from psycopg import sql

from embeddings import content, services
from embeddings.learners import LearnerParams
from embeddings.models import ActiveVersion, Kind, ModelVersion, VersionArtifacts
from embeddings.recommendations import user_recommendations_list
from embeddings.serving import version_nearest_items
from embeddings.vectors.rows import Nearest, candidate_rows, category_newest_rows, vectors_of
from embeddings.vectors.search import Filters
from recsys.models import HiddenItem, Interaction, Item, User
from recsys.rules.ruleset import Boost, RuleSet, item_conditions
from recsys.services import items_upsert

pytestmark = pytest.mark.django_db


@pytest.fixture
def trained(communities, settings):
    return train(settings)


@pytest.fixture
def shallow(communities, settings):
    """The stage at depth 20: below the 24 items a user has not seen, so no search is widened."""
    settings.RECSYS_RANKING_DEPTH = 20
    return train(settings)


def train(settings):
    settings.RECSYS_CF_TUNE = False
    settings.RECSYS_RANKING = True
    settings.RECSYS_CONTENT_ENCODER = "fake"
    items_upsert(
        rows=[
            {
                "id": f"i{i}",
                "text": ("telescope stars" if i < 15 else "pasta basil") + f" {i}",
                "categories": [f"c{i % 3}"],
            }
            for i in range(30)
        ]
    )
    content.content_model_build(version_id=content.content_version_create().pk)
    version = services.collaborative_version_create(params=LearnerParams(factors=8, iterations=8))
    return services.collaborative_model_train(version_id=version.pk)


def rare_items_the_stage_holds_one_of(monkeypatch, user: str, count: int) -> list[str]:
    """``count`` items ``user`` has not seen, marked {"rare": true}, of which the stage's candidates hold
    only the first (its sources, popular, trending, co-occurring..., see a filter only when their rows
    are read): the rest of a filtered answer comes from the model's own search."""
    import embeddings.recommendations as recommendations

    rare = sorted({f"i{i}" for i in range(30)} - seen(user))[:count]
    Item.objects.filter(external_id__in=rare).update(attributes={"rare": True})
    first = Item.objects.get(external_id=rare[0])
    ranked_list = recommendations.ranked_list

    def few(stage, request, *, explain=False):
        found = ranked_list(stage, request, explain=explain)
        keep = [k for k, n in enumerate(found.neighbours) if n.item_id == first.pk]
        features = [found.features[k] for k in keep] if found.features is not None else None
        return type(found)([found.neighbours[k] for k in keep], features)

    monkeypatch.setattr(recommendations, "ranked_list", few)
    return rare


def seen(user: str) -> set[str]:
    return set(Interaction.objects.filter(user__external_id=user).values_list("item__external_id", flat=True))


def test_the_run_records_the_stage_against_the_best_source(trained):
    artifacts = VersionArtifacts.objects.get(version=trained)

    assert artifacts.ranker.startswith("tree")
    report = artifacts.ranking
    assert report["best_source"] in report["sources_ndcg@10"]
    assert trained.metrics["ranking_ndcg@10"] == report["ndcg@10"]
    assert trained.metrics["best_source_ndcg@10"] == report["best_source_ndcg@10"]
    assert report["users"] < report["min_users"] and not artifacts.ranking_used  # 40 users judge nothing


def test_forced_ranking_serves_ranked_unseen_items(trained):
    answer = user_recommendations_list(user_external_id="u1", limit=5, ranking=True)

    assert answer.strategy == "ranked" and answer.model == {"kind": "collaborative", "version": trained.pk}
    ids = [item.id for item in answer.items]
    assert len(ids) == 5 and not set(ids) & seen("u1")
    scores = [item.score for item in answer.items]
    assert scores == sorted(scores, reverse=True)
    assert sum(int(i[1:]) < 15 for i in ids) >= 4  # u1's community


def test_ranked_answers_carry_each_items_window_so_the_cache_never_serves_it_past_its_end(trained):
    # Given every item's availability window closing in an hour
    closes = datetime.now(UTC) + timedelta(hours=1)
    Item.objects.update(available_until=closes)

    answer = user_recommendations_list(user_external_id="u1", limit=5, ranking=True)

    # Then each ranked item says when (answer_through_cache computes an answer again past it)
    assert answer.strategy == "ranked" and answer.items
    assert all(item.until == pytest.approx(closes.timestamp()) for item in answer.items)


def test_a_selective_filter_still_fills_the_ranked_answer_when_enough_items_match(trained, monkeypatch):
    # Given four unseen items a filter lets through, of which the stage's candidates hold only one
    rare = rare_items_the_stage_holds_one_of(monkeypatch, "u1", 4)

    answer = user_recommendations_list(
        user_external_id="u1", limit=4, ranking=True, rules=RuleSet(filters=("attributes.rare = true",)), explain=True
    )

    # Then all four come back (it was one): the ranked one first, with its features, then the filtered search's
    assert answer.strategy == "ranked"
    assert answer.items[0].id == rare[0] and "features" in answer.items[0].reason
    assert sorted(item.id for item in answer.items) == rare


def test_ranking_off_serves_the_collaborative_model(trained):
    assert user_recommendations_list(user_external_id="u1", limit=5, ranking=False).strategy == "collaborative"


@pytest.mark.parametrize("wins", [True, False])
def test_by_default_the_stage_is_used_only_when_it_won_on_validation(trained, wins):
    VersionArtifacts.objects.filter(version=trained).update(ranking_used=wins)

    answer = user_recommendations_list(user_external_id="u2", limit=5)

    assert answer.strategy == ("ranked" if wins else "collaborative")


def test_a_version_whose_stage_lost_is_served_without_reading_the_stage(trained, monkeypatch):
    from embeddings.ranking import serving

    serving._stages.forget(trained.pk)
    serving._wins.forget(trained.pk)
    VersionArtifacts.objects.filter(version=trained).update(ranking_used=False)
    monkeypatch.setattr(serving, "_stage_read", lambda version: pytest.fail("read megabytes it does not use"))

    assert user_recommendations_list(user_external_id="u2", limit=5).strategy == "collaborative"


def test_threads_asking_for_a_stage_at_once_wait_for_one_read(monkeypatch):
    import threading
    import time

    from embeddings.ranking import serving

    reads = []

    def slow_read(version):
        reads.append(version.pk)
        time.sleep(0.3)
        return None

    monkeypatch.setattr(serving, "_stage_read", slow_read)
    version = ModelVersion(pk=987_654)
    serving._stages.forget(version.pk)
    threads = [threading.Thread(target=serving.ranking_stage, args=(version,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert reads == [version.pk]  # four threads, one read (each read its own, megabytes each)


def test_explain_gives_each_items_top_feature_contributions(trained):
    answer = user_recommendations_list(user_external_id="u3", limit=4, ranking=True, explain=True)

    assert answer.strategy == "ranked"
    for item in answer.items:
        features = item.reason["features"]
        assert 1 <= len(features) <= 3
        assert all(isinstance(f["feature"], str) and isinstance(f["contribution"], float) for f in features)
        assert "because" in item.reason


def test_ranking_respects_the_category_filter_and_exclusions(trained):
    answer = user_recommendations_list(user_external_id="u4", limit=5, ranking=True, category="c1", exclude=("i1",))

    assert answer.items and all(int(item.id[1:]) % 3 == 1 for item in answer.items)
    assert "i1" not in {item.id for item in answer.items}


def test_the_admin_version_page_shows_the_stage_against_the_best_source(trained, admin_client):
    page = admin_client.get(reverse("admin:embeddings_modelversion_change", args=[trained.pk]))

    assert page.status_code == 200
    text = page.content.decode().lower()
    assert "ranking stage" in text and "vs the best source" in text and "top features by gain" in text


def as_compared(query: np.ndarray, version: ModelVersion) -> np.ndarray:
    """A query vector as PostgreSQL compares it with ``version``'s rows: a halfvec table casts it to
    float16 first (CI runs these tests again with every version stored as halfvec)."""
    return query.astype(np.float16).astype(np.float64) if version.vector_type == "halfvec" else query


def test_candidate_scores_are_the_inner_products_of_the_stored_vectors(trained):
    # The facts statement computes the scores in PostgreSQL: the same numbers as the vectors it
    # used to ship (the user's vector and a profile against every item's rows).
    ids = list(Item.objects.values_list("pk", flat=True))
    user = User.objects.get(external_id="u1").pk
    vector = vectors_of(trained.user_table, "user_id", [user])[user]
    content_version = ActiveVersion.objects.get(kind=Kind.CONTENT).version
    content_table = content_version.item_table
    profile = np.linspace(-1.0, 1.0, len(next(iter(vectors_of(content_table, "item_id", ids).values()))))
    hidden = Item.objects.get(external_id="i4")
    Item.objects.filter(pk=hidden.pk).update(is_hidden=True)
    items_upsert(rows=[{"id": "late", "categories": ["c0"]}])  # no vector in either version yet

    rows = candidate_rows(
        ids=[*ids, Item.objects.get(external_id="late").pk],
        item_table=trained.item_table,
        vector_type=trained.vector_type,
        vector=vector,
        content=(content_table, profile.astype(np.float32)),
        category=None,
        attributes=False,
    ).rows

    collaborative, encoded = vectors_of(trained.item_table, "item_id", ids), vectors_of(content_table, "item_id", ids)
    by_id = {r[0]: r for r in rows}
    assert set(by_id) == (set(ids) - {hidden.pk}) | {Item.objects.get(external_id="late").pk}
    for item in set(ids) - {hidden.pk}:
        served_vector, served_profile = as_compared(vector, trained), as_compared(profile, content_version)
        assert by_id[item][5] == pytest.approx(float(np.dot(served_vector, collaborative[item])), rel=1e-5, abs=1e-6)
        assert by_id[item][6] == pytest.approx(float(np.dot(served_profile, encoded[item])), rel=1e-5, abs=1e-6)
    late = by_id[Item.objects.get(external_id="late").pk]
    assert late[1] == "late" and late[2] == ["c0"] and late[5] is None and late[6] is None


def test_the_facts_statements_search_finds_and_reads_what_a_separate_search_and_read_do(trained):
    # Given a user who excludes two items and hid their nearest other one, and an unavailable item
    user = User.objects.get(external_id="u1")
    vector = vectors_of(trained.user_table, "user_id", [user.pk])[user.pk]
    ids = dict(Item.objects.values_list("external_id", "pk"))
    excluded = np.array(sorted([ids["i0"], ids["i3"]]), np.int64)
    Item.objects.filter(external_id="i6").update(available_until=datetime(2020, 1, 1, tzinfo=UTC))
    hidden = version_nearest_items(trained, vector, limit=1, filters=Filters(tuple(excluded.tolist())))[0].item_id
    HiddenItem.objects.create(user=user, item_id=hidden)
    others = [ids["i1"], ids["i2"], ids["i9"]]  # what the other sources found
    for category in (None, "c0"):
        searched = version_nearest_items(
            trained, vector, limit=12, filters=Filters(tuple(excluded.tolist()), category), widen=False
        )
        read: dict[str, Any] = {
            "item_table": trained.item_table,
            "vector_type": trained.vector_type,
            "vector": vector,
            "content": None,
            "category": category,
            "attributes": True,
            "conditions": item_conditions(RuleSet(hidden_for="u1")),
        }

        # When the search runs inside the facts statement, and when it runs on its own
        merged = candidate_rows(ids=others, **read, nearest=Nearest(12, excluded))
        apart = candidate_rows(ids=[*others, *(n.item_id for n in searched)], **read)

        # Then it finds the same items with the same scores, and the facts are the same rows
        assert searched
        assert dict(zip(*merged.nearest, strict=True)) == {n.item_id: np.float32(n.score) for n in searched}
        assert not {ids["i0"], ids["i3"], ids["i6"]} & set(merged.nearest[0].tolist())
        assert sorted(merged.rows, key=lambda r: r[0]) == sorted(apart.rows, key=lambda r: r[0])
        assert hidden not in {r[0] for r in merged.rows}  # the rules drop its facts, not its search rank
        assert hidden in merged.nearest[0] or category is not None
        assert len(apart.nearest[0]) == 0


def test_each_categorys_newest_visible_items_are_read_newest_first(trained):
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(30):
        Item.objects.filter(external_id=f"i{n}").update(published_at=base + timedelta(days=n))
    Item.objects.filter(external_id="i27").update(is_hidden=True)

    rows = category_newest_rows(per_category=2)

    by_category: dict[str, list[str]] = {}
    names = dict(Item.objects.values_list("pk", "external_id"))
    for category, item, at in rows:
        by_category.setdefault(category, []).append(names[item])
        assert at == (base + timedelta(days=int(names[item][1:]))).timestamp()
    assert by_category == {"c0": ["i24", "i21"], "c1": ["i28", "i25"], "c2": ["i29", "i26"]}


def test_a_ranked_request_searches_once_and_reads_every_candidate_in_one_statement(shallow, monkeypatch, settings):
    settings.RECSYS_ANSWER_CACHE_SECONDS = 0
    statements: list[str] = []
    execute = psycopg.Cursor.execute

    def recorded(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        text = query.as_string(cursor) if isinstance(query, sql.Composable) else str(query)
        if "SAVEPOINT" not in text:
            statements.append(text)
        return execute(cursor, query, *args, **kwargs)

    user_recommendations_list(user_external_id="u1", limit=5, ranking=True)  # the stage, the versions, settings
    monkeypatch.setattr(psycopg.Cursor, "execute", recorded)
    answer = user_recommendations_list(user_external_id="u1", limit=5, ranking=True)

    assert answer.strategy == "ranked" and len(answer.items) == 5
    searches = [s for s in statements if f'"{shallow.item_table}" v' in s and "ORDER BY v.embedding" in s]
    facts = [s for s in statements if "i.id = ANY(" in s]
    assert len(searches) == 1 and facts == searches, statements  # the search runs in the facts statement
    assert not [s for s in statements if "unnest(i.categories)" in s]  # the categories come from the state
    # the user's state, the content profile's vectors, the content search, the collaborative search and facts
    assert len(statements) == 4, statements


def test_a_version_whose_state_predates_this_code_is_served_without_the_stage(trained):
    old = io.BytesIO()
    np.savez(old, item_ids=np.arange(3))  # no format key: stored by an earlier run
    VersionArtifacts.objects.filter(version=trained).update(ranking_state=old.getvalue())

    answer = user_recommendations_list(user_external_id="u1", limit=5, ranking=True)

    assert answer.strategy == "collaborative" and len(answer.items) == 5


def test_a_version_whose_ranker_has_other_features_than_this_code_is_served_without_the_stage(trained):
    # Before: the ranker was loaded and LightGBM's feature count check raised on every request (500)
    artifacts = VersionArtifacts.objects.get(version=trained)
    artifacts.ranking = {**artifacts.ranking, "features": artifacts.ranking["features"][:-1]}
    artifacts.save(update_fields=["ranking"])

    answer = user_recommendations_list(user_external_id="u1", limit=5, ranking=True)

    assert answer.strategy == "collaborative" and len(answer.items) == 5


def test_switching_ranking_off_stops_serving_a_stage_that_won(trained, settings):
    settings.RECSYS_ANSWER_CACHE_SECONDS = 0
    VersionArtifacts.objects.filter(version=trained).update(ranking_used=True)
    assert user_recommendations_list(user_external_id="u2", limit=5).strategy == "ranked"

    settings.RECSYS_RANKING = False  # before: read at training only, so a won stage went on being served

    assert user_recommendations_list(user_external_id="u2", limit=5).strategy == "collaborative"
    assert user_recommendations_list(user_external_id="u2", limit=5, ranking=True).strategy == "ranked"


def test_a_boost_weighs_ranked_items_and_the_filtered_searchs_alike(trained, monkeypatch):
    # Given a selective filter that leaves the stage one candidate, topped up from the model's search
    rare = rare_items_the_stage_holds_one_of(monkeypatch, "u1", 6)

    def asked(boost: str) -> list[Any]:
        rules = RuleSet(filters=("attributes.rare = true",), boosts=(Boost(boost, 1.5),))
        answer = user_recommendations_list(user_external_id="u1", limit=6, ranking=True, rules=rules)
        assert answer.strategy == "ranked"
        return answer.items

    # A boost that matches nothing keeps the ranked item first and the search's after it, on one
    # positive scale (before: the ranker's scores and inner products sorted together)
    plain = asked('id = "no-such-item"')
    assert plain[0].id == rare[0] and sorted(i.id for i in plain) == rare
    assert all(i.score > 0 for i in plain) and [i.score for i in plain] == sorted(
        (i.score for i in plain), reverse=True
    )
    # ×1.5 lifts the search's second item (0.95² of the ranked one's score) above the ranked one
    lifted = asked(f'id = "{plain[2].id}"')
    assert [i.id for i in lifted[:3]] == [plain[2].id, plain[0].id, plain[1].id]


def test_candidates_unknown_to_the_state_get_the_facts_training_gave_items_without_interactions():
    import scipy.sparse as sp

    from embeddings.ranking.offline import ranking_state_build
    from embeddings.ranking.serving import facts_from_rows
    from embeddings.ranking.sources import Candidates

    state = ranking_state_build(sp.csr_matrix(np.ones((2, 1), np.float32)), None, np.array([7]), reference=0.0)
    candidates = Candidates(np.array([7, 9]), np.zeros((2, 6), np.float32), np.zeros((2, 6), np.float32))
    rows = [(7, "a", [], 1.0, None, 0.5, None, None), (9, "b", [], 2.0, None, 0.4, None, None)]

    _, _, facts = facts_from_rows(state, (), candidates, rows, {})

    # offline an item with no interactions has popularity 0 and trend (0 + 1) / (0 + 1) (before: NaN)
    assert facts.popularity.tolist() == [100.0, 0.0] and facts.trend[1] == 1.0


def test_the_stage_sees_candidates_on_the_clock_and_content_space_it_was_trained_on(trained, monkeypatch, settings):
    from dataclasses import replace

    from embeddings.ranking import serving

    settings.RECSYS_ANSWER_CACHE_SECONDS = 0
    report = VersionArtifacts.objects.get(version=trained).ranking
    content_version = ActiveVersion.objects.get(kind=Kind.CONTENT).version_id
    assert report["content_version"] == content_version and report["clock_offset_seconds"] >= 0
    stage = serving.ranking_stage(trained)
    built: list[Any] = []
    build = serving.features_build

    def recording(candidates, facts, **kwargs):
        built.append(({int(i): k for k, i in enumerate(candidates.items)}, facts))
        return build(candidates, facts, **kwargs)

    monkeypatch.setattr(serving, "features_build", recording)
    searched: list[Any] = []
    nearest = serving.version_nearest_items
    monkeypatch.setattr(serving, "version_nearest_items", lambda *a, **kw: searched.append(a) or nearest(*a, **kw))

    for offset, version in ((0.0, content_version), (10 * 86_400.0, -1)):
        serving._stages.forget(trained.pk)
        trained_as = replace(stage, clock_offset=offset, content_version=version)
        monkeypatch.setattr(serving, "_stage_read", lambda v, s=trained_as: s)
        user_recommendations_list(user_external_id="u1", limit=5, ranking=True)

    # ten days less of age when the run's data ended ten days before it read them (replayed data)
    (first, now), (second, shifted) = built
    common = sorted(set(first) & set(second))
    assert common
    ages = np.array([[now.age_days[first[i]], shifted.age_days[second[i]]] for i in common])
    assert np.allclose(ages[:, 0] - 10, ages[:, 1], atol=0.01)
    # a stage trained on another content version searches no content (its features read as without a profile)
    assert len(searched) == 1 and np.isnan(shifted.content_similarity).all()


def test_a_stage_stored_before_its_content_version_was_recorded_reads_any(trained):
    # Versions trained before the record: their stage keeps its content features after the upgrade
    from embeddings.ranking.serving import Stage

    stage = Stage(None, None, True, 50, (), None, 0.0, content_checked=False)  # type: ignore[arg-type]
    assert stage.reads_content(7) and not Stage(None, None, True, 50, (), 3).reads_content(7)  # type: ignore[arg-type]
