"""Served recommendation quality on MovieLens (ml-latest-small) against in-process baselines.

Ratings >= 4 are positives; each user's positives are split 80/20 at random. The train part is
ingested through the REST API, a model is trained by a real Celery worker, and every test user's
top 10 is asked from the HTTP API (gunicorn). Beside it, from the same split: popularity,
implicit's ALS with its defaults, and EASE (lambda tuned on a validation split of train).
ANN fidelity compares the served top 10 with the exact top 10 of the same stored vectors.

    python -m recsys.run exec -- python bench/quality.py
"""

from __future__ import annotations

import csv
import http.client
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import (
    MOVIELENS,
    api_key,
    celery_worker,
    drop_database,
    gunicorn,
    machine,
    scratch_database_url,
    write_section,
)

from embeddings.evaluation import (
    Split,
    holdout_split,
    popularity_recommender,
    ranking_metrics,
    scores_recommender,
)

PORT = 8766
SEED = 42


def load_positives() -> tuple[sp.csr_matrix, list[str], list[str], dict[tuple[int, int], tuple[float, int]]]:
    rows = [r for r in csv.DictReader((MOVIELENS / "ratings.csv").open()) if float(r["rating"]) >= 4]
    users = sorted({r["userId"] for r in rows}, key=int)
    items = sorted({r["movieId"] for r in rows}, key=int)
    u_index, i_index = {u: k for k, u in enumerate(users)}, {m: k for k, m in enumerate(items)}
    cells = {(u_index[r["userId"]], i_index[r["movieId"]]): (float(r["rating"]), int(r["timestamp"])) for r in rows}
    keys = np.array(list(cells))
    matrix = sp.csr_matrix((np.ones(len(keys), np.float32), (keys[:, 0], keys[:, 1])), shape=(len(users), len(items)))
    return matrix, users, items, cells


class Api:
    def __init__(self, key: str, port: int = PORT) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self, method: str, path: str, body: object = None) -> object:
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=self.headers)
        answer = self.conn.getresponse()
        payload = json.loads(answer.read())
        if answer.status >= 300:
            raise RuntimeError(f"{method} {path} -> {answer.status}: {payload}")
        return payload


def ingest(api: Api, split: Split, users: list[str], items: list[str], cells: dict) -> int:  # type: ignore[type-arg]
    titles = {r["movieId"]: r for r in csv.DictReader((MOVIELENS / "movies.csv").open())}
    rows = [{"id": m, "title": titles[m]["title"], "categories": titles[m]["genres"].split("|")} for m in items]
    for start in range(0, len(rows), 5000):
        api.call("POST", "/api/v1/items/batch", {"items": rows[start : start + 5000]})
    coo = split.train.tocoo()
    events = []
    for u, i in zip(coo.row, coo.col, strict=True):
        rating, stamp = cells[(int(u), int(i))]
        events.append(
            {
                "user": users[u],
                "item": items[i],
                "type": "rating",
                "value": rating,
                "timestamp": datetime.fromtimestamp(stamp, UTC).isoformat(),
            }
        )
    for start in range(0, len(events), 10_000):
        answer = api.call("POST", "/api/v1/interactions", {"interactions": events[start : start + 10_000]})
        assert not answer["errors"], answer["errors"][:3]  # type: ignore[index]
    return len(events)


def train(api: Api) -> dict:  # type: ignore[type-arg]
    run = api.call("POST", "/api/v1/models/train", {"kind": "collaborative"})
    version = run["training_run"]  # type: ignore[index]
    while True:
        current = next(v for v in api.call("GET", "/api/v1/models") if v["version"] == version)  # type: ignore[attr-defined]
        if current["status"] in {"active", "ready", "failed"}:
            return current
        time.sleep(1)


def served_recommender(api: Api, users: list[str], items: list[str]):  # type: ignore[no-untyped-def]
    column = {m: k for k, m in enumerate(items)}
    served: dict[int, list[str]] = {}
    strategies: dict[str, int] = {}

    def recommend(rows: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(rows), k), -1, dtype=np.int64)
        for n, row in enumerate(rows):
            answer = api.call("GET", f"/api/v1/users/{users[row]}/recommendations?limit={k}")
            ids = [item["id"] for item in answer["items"]]  # type: ignore[index]
            strategies[answer["strategy"]] = strategies.get(answer["strategy"], 0) + 1  # type: ignore[index]
            served[int(row)] = ids
            out[n, : len(ids)] = [column[i] for i in ids]
        return out

    return recommend, served, strategies


def ease_tuned(train: sp.csr_matrix) -> tuple[np.ndarray, float]:
    """EASE's closed form; lambda picked on a validation split of train, then refit on all of train."""

    def fit(x: np.ndarray, lam: float) -> np.ndarray:
        p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
        b = -p / np.diag(p)
        np.fill_diagonal(b, 0.0)
        return b

    inner = holdout_split(train, test_fraction=0.2, seed=SEED + 1)
    x_inner = inner.train.toarray().astype(np.float64)
    scores = {}
    for lam in (50.0, 100.0, 200.0, 400.0, 800.0):
        b = fit(x_inner, lam)
        scores[lam] = ranking_metrics(scores_recommender(lambda u, b=b: x_inner[u] @ b, inner.train), inner)["ndcg@10"]
    best = max(scores, key=scores.__getitem__)
    x = train.toarray().astype(np.float64)
    return x @ fit(x, best), best


def exact_fidelity(
    database_url: str,
    version: int,
    served: dict[int, list[str]],
    users: list[str],
    train: sp.csr_matrix,
    items: list[str],
) -> float:
    """Share of served top-10 slots that are in the exact top 10 of the same stored vectors."""
    import psycopg
    from pgvector.psycopg import register_vector

    with psycopg.connect(database_url) as conn:
        register_vector(conn)
        query = "SELECT o.external_id, v.embedding FROM embeddings_v{v}_{t} v JOIN recsys_{t} o ON o.id = v.{t}_id"
        item_rows = conn.execute(query.format(v=int(version), t="item")).fetchall()
        user_rows = {k: e.to_numpy() for k, e in conn.execute(query.format(v=int(version), t="user")).fetchall()}
    item_ids = [r[0] for r in item_rows]
    item_matrix = np.stack([r[1].to_numpy() for r in item_rows]).astype(np.float32)
    column = {m: k for k, m in enumerate(items)}
    matching = total = 0
    for row, ids in served.items():
        vector = user_rows.get(users[row])
        if vector is None:
            continue
        scores = item_matrix @ np.asarray(vector, dtype=np.float32)
        seen = set(train.indices[train.indptr[row] : train.indptr[row + 1]])
        ranked = [item_ids[j] for j in np.argsort(-scores) if column.get(item_ids[j], -1) not in seen][:10]
        matching += len(set(ranked) & set(ids))
        total += len(ranked)
    return matching / max(total, 1)


def main() -> None:
    if not (MOVIELENS / "ratings.csv").exists():
        sys.exit(f"{MOVIELENS} not found: the quality benchmark needs ml-latest-small")
    matrix, users, items, cells = load_positives()
    split = holdout_split(matrix, test_fraction=0.2, seed=SEED)
    url = scratch_database_url("recsys_bench_quality")
    try:
        with celery_worker(url, "quality"), gunicorn(url, PORT):
            api = Api(api_key(url))
            started = time.perf_counter()
            events = ingest(api, split, users, items, cells)
            ingest_s = time.perf_counter() - started
            version = train(api)
            recommend, served, strategies = served_recommender(api, users, items)
            started = time.perf_counter()
            served_metrics = ranking_metrics(recommend, split)
            serve_s = time.perf_counter() - started
            fidelity = exact_fidelity(url, version["version"], served, users, split.train, items)
    finally:
        drop_database(url)
    import implicit

    als = implicit.als.AlternatingLeastSquares(random_state=0, use_gpu=False)
    als.fit(split.train, show_progress=False)
    als_metrics = ranking_metrics(
        scores_recommender(lambda u: als.user_factors[u] @ als.item_factors.T, split.train), split
    )
    ease_scores, ease_lambda = ease_tuned(split.train)
    ease_metrics = ranking_metrics(scores_recommender(lambda u: ease_scores[u], split.train), split)
    pop_metrics = ranking_metrics(popularity_recommender(split.train), split)
    report(
        served_metrics,
        als_metrics,
        ease_metrics,
        pop_metrics,
        ease_lambda,
        fidelity,
        version,
        strategies,
        events,
        ingest_s,
        serve_s,
    )


def report(served, als, ease, pop, ease_lambda, fidelity, version, strategies, events, ingest_s, serve_s):  # type: ignore[no-untyped-def]
    def row(name: str, m: dict) -> str:  # type: ignore[type-arg]
        return (
            f"| {name} | {m['precision@10']:.4f} | {m['recall@10']:.4f} | {m['ndcg@10']:.4f} | {m['coverage@10']:.3f} |"
        )

    ratio_als, ratio_ease = served["ndcg@10"] / als["ndcg@10"], served["ndcg@10"] / ease["ndcg@10"]
    lines = [
        "## Recommendation quality (`bench/quality.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}; ml-latest-small, ratings ≥ 4 as positives, "
        f"per-user random 80/20 split (seed {SEED}), {int(served['users'])} test users, full ranking with train "
        f"items excluded. The served row went through the product: {events:,} train events ingested over the "
        f"API ({ingest_s:.0f} s), a training run on a real Celery worker, and one HTTP request per test user "
        f"({serve_s:.0f} s).",
        "",
        "| model | P@10 | R@10 | NDCG@10 | coverage@10 |",
        "|---|---:|---:|---:|---:|",
        row(f"**served** (v{version['version']}: {version['algorithm']}, {version['dimensions']}-d)", served),
        row("implicit ALS, defaults, in-process", als),
        row(f"EASE, λ = {ease_lambda:.0f} tuned on validation, in-process", ease),
        row("popularity", pop),
        "",
        f"Served NDCG@10 = **{ratio_als:.2f}× default ALS** (target ≥ 1.10) and **{ratio_ease:.3f}× EASE** "
        f"(target ≥ 0.98). ANN fidelity: **{fidelity:.1%}** of served top-10 slots are in the exact top 10 of the "
        f"same stored vectors (target ≥ 95%). Strategies answered: {strategies}. The training run's own "
        f"candidates on its validation split: {version['progress'].get('candidates')}; timings {version['timings']}.",
    ]
    write_section("quality", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
