"""Served recommendation quality on several data sets against in-process peers of the same run.

Each data set is a binary relevance matrix (who liked what) and the events a client would send
for it: ml-latest-small's ratings >= 4 sent as `rating` events with the rating as value, the same
positives sent with value 5 (every weight ×5: a tuning grid in absolute units misses there), the
same positives as `view` events (binarised), and generated data with planted taste groups. Each
user's positives are split 80/20 at random. The train part is ingested through the REST API, a
model is trained by a real Celery worker, and every test user's top 10 is asked from the HTTP API
(gunicorn). Beside it, from the same split: popularity, implicit's ALS with its defaults, and
full EASE on the binary matrix with λ tuned on a validation split of train. ANN fidelity compares
the served top 10 with the exact top 10 of the same stored vectors.

    python -m recsys.run exec -- python bench/quality.py [--only NAME ...]
    python -m recsys.run exec -- python bench/quality.py --movielens ../ml-100k   # a set nobody tuned on
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import (
    MOVIELENS,
    api_key,
    celery_worker,
    database_recreate,
    drop_database,
    gunicorn,
    machine,
    write_section,
)

from embeddings.evaluation import (
    Split,
    holdout_split,
    popularity_recommender,
    ranking_metrics,
    scores_recommender,
)

PORT = int(os.environ.get("BENCH_PORT", "0")) or 8766  # the machine is shared: another bench may hold 8766
SEED = 42
EASE_GRID = (10.0, 25.0, 50.0, 100.0, 200.0, 400.0, 800.0, 1600.0, 3200.0)


@dataclass
class DataSet:
    """A binary relevance matrix, the items' rows for the API, and the event sent per positive."""

    name: str
    description: str
    matrix: sp.csr_matrix
    users: list[str]
    items: list[str]
    item_rows: list[dict[str, Any]]
    event: Callable[[int, int], dict[str, Any]]
    peers: dict[str, Any] = field(default_factory=dict)


def movielens_read(folder: Path) -> tuple[list[dict[str, str]], dict[str, dict[str, str]]]:
    """Ratings (userId, movieId, rating, timestamp) and movies (movieId -> title, genres) of a
    MovieLens folder: the CSV format of ml-latest(-small), ml-20m and later, or ml-100k's
    ``u.data`` and ``u.item``."""
    if (folder / "ratings.csv").exists():
        ratings = list(csv.DictReader((folder / "ratings.csv").open()))
        return ratings, {r["movieId"]: r for r in csv.DictReader((folder / "movies.csv").open())}
    fields = ("userId", "movieId", "rating", "timestamp")
    ratings = [
        dict(zip(fields, line.split("\t"), strict=True)) for line in (folder / "u.data").read_text().split("\n") if line
    ]
    genres = [line.split("|")[0] for line in (folder / "u.genre").read_text(encoding="latin-1").split("\n") if line]
    movies = {}
    for line in (folder / "u.item").read_text(encoding="latin-1").split("\n"):
        if line:
            cells = line.split("|")
            flags = cells[-len(genres) :]
            names = [g for g, flag in zip(genres, flags, strict=True) if flag == "1" and g != "unknown"]
            movies[cells[0]] = {
                "movieId": cells[0],
                "title": cells[1],
                "genres": "|".join(names) or "(no genres listed)",
            }
    return ratings, movies


def movielens_sets(folder: Path = MOVIELENS, name: str = "ml") -> list[DataSet]:
    """The positives (ratings >= 4) of a MovieLens folder, as three data sets: ``{name}-ratings``,
    ``{name}-x5`` and ``{name}-binary``."""
    ratings, movies = movielens_read(folder)
    rows = [r for r in ratings if float(r["rating"]) >= 4]
    users = sorted({r["userId"] for r in rows}, key=int)
    items = sorted({r["movieId"] for r in rows}, key=int)
    u_index, i_index = {u: k for k, u in enumerate(users)}, {m: k for k, m in enumerate(items)}
    cells = {(u_index[r["userId"]], i_index[r["movieId"]]): (float(r["rating"]), int(r["timestamp"])) for r in rows}
    keys = np.array(list(cells))
    matrix = sp.csr_matrix((np.ones(len(keys), np.float32), (keys[:, 0], keys[:, 1])), shape=(len(users), len(items)))
    item_rows = [{"id": m, "title": movies[m]["title"], "categories": movies[m]["genres"].split("|")} for m in items]
    source = "ml-latest-small" if folder == MOVIELENS else f"{folder.name} ({folder})"

    def stamp(u: int, i: int) -> str:
        return datetime.fromtimestamp(cells[(u, i)][1], UTC).isoformat()

    shared: dict[str, Any] = {}  # the three sets have the same positives: the peers are computed once
    common = {"matrix": matrix, "users": users, "items": items, "item_rows": item_rows, "peers": shared}
    return [
        DataSet(
            f"{name}-ratings",
            f"{source}, ratings ≥ 4 sent as `rating` events valued 4-5",
            event=lambda u, i: {"type": "rating", "value": cells[(u, i)][0], "timestamp": stamp(u, i)},
            **common,
        ),
        DataSet(
            f"{name}-x5",
            "the same positives, every one a `rating` of 5 (all weights ×5)",
            event=lambda u, i: {"type": "rating", "value": 5.0, "timestamp": stamp(u, i)},
            **common,
        ),
        DataSet(
            f"{name}-binary",
            "the same positives as `view` events (weight 1: binarised)",
            event=lambda u, i: {"type": "view", "timestamp": stamp(u, i)},
            **common,
        ),
    ]


def generated_set(users: int = 1500, items: int = 1200, groups: int = 30, seed: int = 7) -> DataSet:
    """Planted structure: each user belongs to a taste group and likes items of it (popularity-skewed
    within the group), plus 10% of their items drawn from the whole catalogue."""
    rng = np.random.default_rng(seed)
    group_of_item = rng.integers(0, groups, items)
    appeal = rng.pareto(1.5, items) + 1.0
    rows, cols = [], []
    for user in range(users):
        group = user % groups
        own = np.flatnonzero(group_of_item == group)
        size = int(rng.integers(8, 40))
        liked = set(rng.choice(own, size=min(size, len(own)), replace=False, p=appeal[own] / appeal[own].sum()))
        liked |= set(rng.choice(items, size=max(1, size // 10), replace=False))
        rows += [user] * len(liked)
        cols += sorted(liked)
    matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(users, items))
    item_ids = [f"g{i}" for i in range(items)]
    item_rows = [
        {"id": item_ids[i], "title": f"item {i}", "categories": [f"group-{group_of_item[i]}"]} for i in range(items)
    ]
    base = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    return DataSet(
        "generated",
        f"generated: {users:,} users in {groups} planted taste groups, {items:,} items, `purchase` events",
        matrix,
        [f"u{u}" for u in range(users)],
        item_ids,
        item_rows,
        lambda u, i: {"type": "purchase", "timestamp": datetime.fromtimestamp(base + u * 60 + i, UTC).isoformat()},
    )


class Api:
    def __init__(self, key: str, port: int = PORT) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: object = None) -> Any:
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=self.headers)
        answer = self.conn.getresponse()
        payload = json.loads(answer.read())
        if answer.status >= 300:
            raise RuntimeError(f"{method} {path} -> {answer.status}: {payload}")
        return payload


def ingest(api: Api, data: DataSet, split: Split) -> int:
    for start in range(0, len(data.item_rows), 5000):
        api.call("POST", "/api/v1/items/batch", {"items": data.item_rows[start : start + 5000]})
    coo = split.train.tocoo()
    events = [
        {"user": data.users[u], "item": data.items[i], **data.event(int(u), int(i))}
        for u, i in zip(coo.row, coo.col, strict=True)
    ]
    for start in range(0, len(events), 10_000):
        answer = api.call("POST", "/api/v1/interactions", {"interactions": events[start : start + 10_000]})
        assert not answer["errors"], answer["errors"][:3]
    return len(events)


def train(api: Api) -> dict[str, Any]:
    run = api.call("POST", "/api/v1/models/train", {"kind": "collaborative"})
    version = run["training_run"]
    while True:
        current = next(v for v in api.call("GET", "/api/v1/models") if v["version"] == version)
        if current["status"] in {"active", "ready", "failed"}:
            return current  # type: ignore[no-any-return]
        time.sleep(1)


def served_recommender(api: Api, users: list[str], items: list[str]):  # type: ignore[no-untyped-def]
    column = {m: k for k, m in enumerate(items)}
    served: dict[int, list[str]] = {}
    strategies: dict[str, int] = {}

    def recommend(rows: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(rows), k), -1, dtype=np.int64)
        for n, row in enumerate(rows):
            answer = api.call("GET", f"/api/v1/users/{users[row]}/recommendations?limit={k}")
            ids = [item["id"] for item in answer["items"]]
            strategies[answer["strategy"]] = strategies.get(answer["strategy"], 0) + 1
            served[int(row)] = ids
            out[n, : len(ids)] = [column[i] for i in ids]
        return out

    return recommend, served, strategies


def ease_tuned(train: sp.csr_matrix) -> tuple[np.ndarray, float]:
    """Full EASE on the binary matrix; λ picked on a validation split of train from a wide grid
    (the best point must be interior), then refit on all of train.

    One eigendecomposition G = Q diag(e) Qᵀ per matrix serves every λ: P = Q diag(1 / (e + λ)) Qᵀ,
    and X B = X - (X P) diag(1 / diag P) needs only the scored users' rows of X Q.
    """

    def scorer(x: sp.csr_matrix) -> Callable[[float], Callable[[np.ndarray], np.ndarray]]:
        dense = x.toarray().astype(np.float64)
        e, q = np.linalg.eigh(dense.T @ dense)
        xq = dense @ q

        def at(lam: float) -> Callable[[np.ndarray], np.ndarray]:
            inverse = 1.0 / (e + lam)
            diag_p = (q**2) @ inverse
            return lambda users: dense[users] - ((xq[users] * inverse) @ q.T) / diag_p

        return at

    inner = holdout_split(train, test_fraction=0.2, seed=SEED + 1)
    inner_at = scorer(inner.train)
    scores = {
        lam: ranking_metrics(scores_recommender(inner_at(lam), inner.train), inner)["ndcg@10"] for lam in EASE_GRID
    }
    best = max(scores, key=scores.__getitem__)
    users = np.arange(train.shape[0])
    return scorer(train)(best)(users), best


def peers(data: DataSet, split: Split) -> dict[str, Any]:
    if data.peers:
        return data.peers
    import implicit

    als = implicit.als.AlternatingLeastSquares(random_state=0, use_gpu=False)
    als.fit(split.train, show_progress=False)
    data.peers["als"] = ranking_metrics(
        scores_recommender(lambda u: als.user_factors[u] @ als.item_factors.T, split.train), split
    )
    ease_scores, data.peers["ease_lambda"] = ease_tuned(split.train)
    data.peers["ease"] = ranking_metrics(scores_recommender(lambda u: ease_scores[u], split.train), split)
    data.peers["popularity"] = ranking_metrics(popularity_recommender(split.train), split)
    return data.peers


def stored_exact(
    database_url: str,
    version: int,
    served: dict[int, list[str]],
    data: DataSet,
    split: Split,
) -> dict[str, Any]:
    """What the stored vectors give without the ANN: the share of served top-10 slots that are in
    the exact top 10 of the same vectors (ANN fidelity), and the exact ranking's metrics with the
    mapped (cold) item rows and without them, on the same test users."""
    import psycopg
    from pgvector.psycopg import register_vector

    with psycopg.connect(database_url) as conn:
        register_vector(conn)
        query = (
            "SELECT o.external_id, v.embedding{extra} FROM embeddings_v{v}_{t} v JOIN recsys_{t} o ON o.id = v.{t}_id"
        )
        item_rows = conn.execute(query.format(v=int(version), t="item", extra=", v.mapped")).fetchall()
        user_rows = {
            k: e.to_numpy() for k, e in conn.execute(query.format(v=int(version), t="user", extra="")).fetchall()
        }
        ef_search = conn.execute("SELECT ef_search FROM embeddings_modelversion WHERE id = %s", [version]).fetchone()[0]
    column = {m: k for k, m in enumerate(data.items)}
    n_items = len(data.items)
    d = len(item_rows[0][1].to_numpy())
    items = np.zeros((n_items, d), np.float32)
    stored, mapped = np.zeros(n_items, bool), np.zeros(n_items, bool)
    for external_id, vector, is_mapped in item_rows:
        items[column[external_id]], stored[column[external_id]] = vector.to_numpy(), True
        mapped[column[external_id]] = is_mapped
    users = np.zeros((len(data.users), d), np.float32)
    for row, external_id in enumerate(data.users):
        if external_id in user_rows:
            users[row] = user_rows[external_id]

    def exact(keep: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        def score(rows: np.ndarray) -> np.ndarray:
            scores = users[rows] @ items.T
            scores[:, ~keep] = -np.inf
            return scores

        return score

    with_mapped = scores_recommender(exact(stored), split.train)
    rows = np.array(sorted(served))
    top = with_mapped(rows, 10)
    exact_ids = [{data.items[j] for j in ranked if j >= 0} for ranked in top]
    matches = np.array([len(ids & set(served[int(row)])) for row, ids in zip(rows, exact_ids, strict=True)])
    total = int((top >= 0).sum())
    # by how many train items the user has (quartiles): what a search that skips seen items misses
    history = np.diff(split.train.indptr)[rows]
    edges = np.quantile(history, [0.25, 0.5, 0.75])
    quartile = np.searchsorted(edges, history, side="right")
    by_history = {
        f"{int(history[quartile == q].min())}-{int(history[quartile == q].max())}": float(
            matches[quartile == q].sum() / max(int((top[quartile == q] >= 0).sum()), 1)
        )
        for q in range(4)
        if (quartile == q).any()
    }
    return {
        "fidelity": float(matches.sum()) / max(total, 1),
        "fidelity_by_history": by_history,
        "ef_search": ef_search,
        "exact": ranking_metrics(with_mapped, split),
        "exact_unmapped": ranking_metrics(scores_recommender(exact(stored & ~mapped), split.train), split),
        "mapped": int(mapped.sum()),
    }


def ranking_report(database_url: str, version: int) -> dict[str, Any]:
    """The ranking stage's validation report that the run stored with the version."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT ranking, ranking_used FROM embeddings_versionartifacts WHERE version_id = %s", [version]
        ).fetchone()
    return {**(row[0] or {}), "used": bool(row[1])} if row else {}


def ranking_lines(report: dict[str, Any]) -> list[str]:
    """The stage against each single source on the run's validation users (2-fold cross-fitted)."""
    if not report:
        return ["The run trained no ranking stage.", ""]
    sources = sorted(report["sources_ndcg@10"].items(), key=lambda kv: -kv[1])
    recall = report["recall@depth"]
    importances = sorted(report["importances"].items(), key=lambda kv: -kv[1])[:6]
    return [
        f"Ranking stage on the run's validation split ({report['users']} users, 2-fold cross-fitted, "
        f"{report['candidates_per_user']:.0f} candidates per user from {len(sources)} sources of depth "
        f"{report['depth']}): **ranked NDCG@10 {report['ndcg@10']:.4f}** vs the best single source "
        f"({report['best_source']}) {report['best_source_ndcg@10']:.4f}: **{report['gain']:+.1%}** (target ≥ +3%); "
        f"{'served by default' if report['used'] else 'not served by default'}.",
        "",
        "| source | NDCG@10 (validation) | recall@depth of held-out items |",
        "|---|---:|---:|",
        f"| **ranked** (LightGBM lambdarank) | {report['ndcg@10']:.4f} | {recall['union']:.3f} (union: the ceiling) |",
        *[f"| {name} | {value:.4f} | {recall[name]:.3f} |" for name, value in sources],
        "",
        "Top features by gain: " + ", ".join(f"{name} {share:.0%}" for name, share in importances) + ".",
        "",
    ]


def measure(data: DataSet) -> dict[str, Any]:
    split = holdout_split(data.matrix, test_fraction=0.2, seed=SEED)
    url = database_recreate("recsys_bench_quality")
    try:
        with celery_worker(url, "quality"), gunicorn(url, PORT):
            api = Api(api_key(url))
            started = time.perf_counter()
            events = ingest(api, data, split)
            ingest_s = time.perf_counter() - started
            started = time.perf_counter()
            version = train(api)
            train_s = time.perf_counter() - started
            recommend, served, strategies = served_recommender(api, data.users, data.items)
            started = time.perf_counter()
            served_metrics = ranking_metrics(recommend, split)
            serve_s = time.perf_counter() - started
            exact = stored_exact(url, version["version"], served, data, split)
            ranking = ranking_report(url, version["version"])
    finally:
        drop_database(url)
    return {
        "served": served_metrics,
        **peers(data, split),
        **exact,
        "ranking": ranking,
        "version": version,
        "strategies": strategies,
        "events": events,
        "seconds": {"ingest": ingest_s, "train": train_s, "serve": serve_s},
    }


def section(data: DataSet, m: dict[str, Any]) -> list[str]:
    def row(name: str, metrics: dict[str, float]) -> str:
        return (
            f"| {name} | {metrics['precision@10']:.4f} | {metrics['recall@10']:.4f} | {metrics['ndcg@10']:.4f} "
            f"| {metrics['coverage@10']:.3f} |"
        )

    version, served = m["version"], m["served"]
    params = version.get("params", {})
    prefix = "content_map_"
    content_map = {k.removeprefix(prefix): v for k, v in version["metrics"].items() if k.startswith(prefix)}
    seconds = m["seconds"]
    return [
        f"### {data.name}: {data.description}",
        "",
        f"{m['events']:,} train events over the API ({seconds['ingest']:.0f} s), training on the worker "
        f"({seconds['train']:.0f} s, timings {version['timings']}), {int(served['users'])} test users asked over HTTP "
        f"({seconds['serve']:.0f} s).",
        "",
        "| model | P@10 | R@10 | NDCG@10 | coverage@10 |",
        "|---|---:|---:|---:|---:|",
        row(f"**served** (v{version['version']}: {version['algorithm']}, {version['dimensions']}-d)", served),
        row("exact top 10 of the stored vectors (no ANN)", m["exact"]),
        row(f"the same without the {m['mapped']} mapped (cold) items", m["exact_unmapped"]),
        row("implicit ALS, defaults, in-process", m["als"]),
        row(f"EASE (full), binary matrix, λ = {m['ease_lambda']:.0f} tuned on validation", m["ease"]),
        row("popularity", m["popularity"]),
        "",
        f"Served NDCG@10 = **{served['ndcg@10'] / m['ease']['ndcg@10']:.3f}× EASE** (target ≥ 1.03) and "
        f"**{served['ndcg@10'] / m['als']['ndcg@10']:.2f}× default ALS** (target ≥ 1.10); ANN fidelity "
        f"**{m['fidelity']:.1%}** at the version's ef_search {m['ef_search']} (by users' train items: "
        + ", ".join(f"{k}: {v:.1%}" for k, v in m["fidelity_by_history"].items())
        + f"); strategies {m['strategies']}. Chosen parameters: {params}. Candidates tried on "
        f"the run's validation split: {len(version['progress'].get('candidates') or [])}. Content map: "
        f"{content_map}.",
        "",
        *ranking_lines(m["ranking"]),
    ]


# ---- weak negatives (RECSYS_IMPRESSION_NEGATIVE_WEIGHT) -------------------------------------------

SHOWN_K = 20  # simulated impressions per training user
NEGATIVE_WEIGHTS = (0.25, 0.5, 1.0, 2.0, 4.0)


def simulated_impressions(train: sp.csr_matrix, scores: Callable[[np.ndarray], np.ndarray]) -> sp.csr_matrix:
    """Per user, the ``SHOWN_K`` best-scored items outside their train items: what a service using
    ``scores`` would have shown. Chosen without looking at the test split."""
    recommend = scores_recommender(scores, train)
    users = np.arange(train.shape[0])
    shown = np.concatenate([recommend(users[k : k + 256], SHOWN_K) for k in range(0, len(users), 256)])
    rows = np.repeat(users, SHOWN_K)
    keep = shown.ravel() >= 0
    return sp.csr_matrix((np.ones(keep.sum(), np.float32), (rows[keep], shown.ravel()[keep])), shape=train.shape)


def weak_negatives_figures(data: DataSet) -> dict[str, Any]:
    """NDCG@10 of the service's ALS path (LearnerParams → learner_confidences → with_weak_negatives →
    fit) without and with simulated impressions as weak negatives, on the quality split."""
    from embeddings.interactions import InteractionMatrix, weak_negatives_build, with_weak_negatives
    from embeddings.learners import LearnerParams, fit
    from embeddings.tuning import learner_confidences

    split = holdout_split(data.matrix, test_fraction=0.2, seed=SEED)
    train = split.train
    params = LearnerParams(algorithm="als", factors=64, iterations=15, regularization=0.05, bm25=True)
    ids = InteractionMatrix(train, np.arange(train.shape[0], dtype=np.int64), np.arange(train.shape[1], dtype=np.int64))

    def ndcg(negatives: sp.csr_matrix | None) -> float:
        factors = fit(with_weak_negatives(learner_confidences(train, params), negatives, alpha=params.alpha), params)
        return ranking_metrics(scores_recommender(factors.scores, train), split)["ndcg@10"]

    baseline_factors = fit(learner_confidences(train, params), params)
    counts = np.asarray((train > 0).sum(axis=0)).ravel().astype(np.float32)
    model_top = simulated_impressions(train, baseline_factors.scores)
    sources = {
        "popular": simulated_impressions(train, lambda u: np.tile(counts, (len(u), 1))),
        "model": model_top,
        "oracle": (model_top - model_top.multiply(split.test > 0)).tocsr(),
    }
    figures: dict[str, Any] = {"off": ndcg(None), "test_hits": {}, "on": {}}
    for name, shown in sources.items():
        coo = shown.tocoo()
        figures["test_hits"][name] = float(split.test.multiply(shown).sum() / max(shown.nnz, 1))
        for weight in NEGATIVE_WEIGHTS:
            negatives = weak_negatives_build(ids, coo.row.astype(np.int64), coo.col.astype(np.int64), weight=weight)
            figures["on"][(name, weight)] = ndcg(negatives)
    return figures


def weak_negatives_section(data: DataSet, f: dict[str, Any]) -> str:
    header = "| impressions simulated as | " + " | ".join(f"w = {w:g}" for w in NEGATIVE_WEIGHTS) + " |"
    rows = [
        f"| {label} ({f['test_hits'][name]:.1%} of them are test positives) | "
        + " | ".join(f"{f['on'][(name, w)]:.4f} ({f['on'][(name, w)] / f['off']:.3f}×)" for w in NEGATIVE_WEIGHTS)
        + " |"
        for name, label in (
            ("popular", f"the {SHOWN_K} most popular unseen items"),
            ("model", f"ALS's own top {SHOWN_K}"),
            ("oracle", f"ALS's own top {SHOWN_K} less the test positives (oracle)"),
        )
    ]
    best = max(f["on"], key=lambda key: f["on"][key] if key[0] != "oracle" else -1.0)
    return "\n".join(
        [
            "## Impressions as weak negatives (`bench/quality.py --weak-negatives`)",
            "",
            f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}, in-process, on {data.name} ({data.description}) "
            f"with the quality split (80/20 per user, seed {SEED}). MovieLens has no impressions, so they are "
            f"simulated: every training user was shown {SHOWN_K} items outside their train items, either the most "
            "popular ones or the top of an ALS model fitted on train (what the service would have shown), chosen "
            "without looking at the test split; the simulation assumes the user saw all of them and used none "
            "during the training period. Shown items that are test positives (the user liked them later) are "
            "kept as negatives, as a real log would hold them, which makes this a pessimistic test. The model is "
            "the product's ALS path (BM25 confidences, 64 factors, then `with_weak_negatives`, then `fit`); "
            "evaluation masks train items only, never the impressions. A weight w gives a shown-and-ignored item "
            "preference 0 with confidence 1 + w, where ALS gives any unseen item confidence 1.",
            "",
            f"NDCG@10 with weak negatives off: **{f['off']:.4f}**. With them on, by weight (ratio to off):",
            "",
            header,
            "|---|" + "---:|" * len(NEGATIVE_WEIGHTS),
            *rows,
            "",
            f"Best honest setting: {f['on'][best] / f['off']:.3f}× at w = {best[1]:g} ({best[0]}). The oracle row "
            "drops the shown items the user liked later, which needs the test split: it is what a log of truly "
            "ignored items would give, an upper bound, not a result. The served model on these data sets is EASE "
            "(see above), which ignores weak negatives by design (in its Gram matrix two ignored items would look "
            "alike); BPR and LMF learn from positives only. The setting changes only what ALS learns, and is off "
            "by default.",
        ]
    )


def _gain(report: dict[str, Any]) -> str:
    if not report:
        return "—"
    return f"{report['ndcg@10']:.4f} vs {report['best_source_ndcg@10']:.4f} ({report['gain']:+.1%})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="data set names to run (default: all)")
    parser.add_argument(
        "--movielens",
        type=Path,
        help="instead, a MovieLens folder nobody tuned on (ml-latest's CSVs or ml-100k's u.data): its three "
        "sets are named after the folder, and written to their own section of BENCHMARKS.md",
    )
    parser.add_argument(
        "--weak-negatives", action="store_true", help="only measure impressions as weak negatives (in-process)"
    )
    args = parser.parse_args()
    os.environ.setdefault("RECSYS_RANKING", "true")  # the worker trains the ranking stage (off by default)
    if not (MOVIELENS / "ratings.csv").exists():
        sys.exit(f"{MOVIELENS} not found: the quality benchmark needs ml-latest-small")
    if args.weak_negatives:
        data = movielens_sets()[2]
        text = weak_negatives_section(data, weak_negatives_figures(data))
        write_section("quality-weak-negatives", text)
        print(text)
        return
    sets = [*movielens_sets(), generated_set()]
    extra = args.movielens.resolve().name if args.movielens else None
    if args.movielens:
        sets = movielens_sets(args.movielens.resolve(), extra)
    if args.only:
        sets = [d for d in sets if d.name in args.only]
    lines = [
        "## Recommendation quality (`bench/quality.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}. Per data set: positives split 80/20 per user "
        f"(seed {SEED}), full ranking with train items excluded; the served row went through the product "
        "(REST ingestion, a training run on a real Celery worker, one HTTP request per test user), the peers "
        "were fitted in-process on the same split in the same run.",
        "",
    ]
    summary = [
        "| data set | served NDCG@10 | × EASE (best λ, binary) | × ALS defaults | served model "
        "| ranking stage vs best source (validation) |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for data in sets:
        m = measure(data)
        lines += section(data, m)
        served = m["served"]["ndcg@10"]
        summary.append(
            f"| {data.name} | {served:.4f} | {served / m['ease']['ndcg@10']:.3f} | {served / m['als']['ndcg@10']:.2f} "
            f"| {m['version']['algorithm']} | {_gain(m['ranking'])} |"
        )
        print("\n".join(section(data, m)), flush=True)
    lines[4:4] = [*summary, ""]
    if extra:
        lines[0] = f"## Recommendation quality on {extra}, a set nobody tuned on (`bench/quality.py --movielens`)"
    write_section(f"quality-{extra}" if extra else "quality", "\n".join(lines))
    print("\n".join(summary))


if __name__ == "__main__":
    main()
