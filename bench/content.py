"""Content embeddings on MovieLens (ml-latest-small): cold-start quality, item-to-item agreement,
encoding throughput through the worker, and search latency.

(a) Cold start: 10% of the movies are held out of everything the users "had" before; each user's
    content profile (recency-weighted mean of the content vectors of their other positives, as
    the product computes it) ranks the held-out movies, scored by NDCG@10 against the positives
    they really gave them; popularity (of the held-out movies over the other users) and random
    rank the same candidates.
(b) Item to item: recall@10 of each movie's content neighbours against its top 10 neighbours by
    co-rating (Jaccard over the users who rated both), for MiniLM and TF-IDF+SVD, beside random.
(c) Throughput: a content version built by a real Celery worker from the imported catalogue,
    items per second of encoding and of the whole build, per encoder.
(d) Search latency p50/p99 per mode through the HTTP API (gunicorn), on the catalogue of (c) and,
    with ``--search-items N``, on a generated catalogue of N items.

    python -m recsys.run exec -- python bench/content.py [--search-items 100000]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
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
    database_recreate,
    database_url,
    drop_database,
    gunicorn,
    machine,
    manage,
    tree_rss_mb,
    write_section,
)
from quality import Api

PORT = 8768
SEED = 42
ENCODERS = ("minilm", "tfidf-svd")
QUERIES = [
    "space adventure with robots",
    "romantic comedy in paris",
    "animated movie for children",
    "dark crime thriller",
    "world war two drama",
    "zombie horror",
    "superhero action",
    "documentary about music",
    "time travel",
    "high school musical",
]


def movie_texts() -> tuple[list[str], list[str]]:
    """Movie ids and their text as the importer builds it: title, genres, then tags."""
    from embeddings.encoders import item_text

    tags: dict[str, list[str]] = defaultdict(list)
    for row in csv.DictReader((MOVIELENS / "tags.csv").open()):
        tags[row["movieId"]].append(row["tag"])
    ids, texts = [], []
    for row in csv.DictReader((MOVIELENS / "movies.csv").open()):
        genres = [] if row["genres"] == "(no genres listed)" else row["genres"].split("|")
        ids.append(row["movieId"])
        texts.append(
            item_text(title=row["title"], text=", ".join(dict.fromkeys(tags[row["movieId"]])), categories=genres)
        )
    return ids, texts


def ratings(movie_ids: list[str]) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(users × movies) positives (rating ≥ 4) and their timestamps."""
    column = {m: k for k, m in enumerate(movie_ids)}
    rows = list(csv.DictReader((MOVIELENS / "ratings.csv").open()))
    users = {u: k for k, u in enumerate(sorted({r["userId"] for r in rows}, key=int))}
    positive = [r for r in rows if float(r["rating"]) >= 4 and r["movieId"] in column]
    shape = (len(users), len(movie_ids))
    user_idx = [users[r["userId"]] for r in positive]
    item_idx = [column[r["movieId"]] for r in positive]
    matrix = sp.csr_matrix((np.ones(len(positive), np.float32), (user_idx, item_idx)), shape=shape)
    stamps = sp.csr_matrix(([float(r["timestamp"]) for r in positive], (user_idx, item_idx)), shape=shape)
    return matrix, stamps


def encode(name: str, texts: list[str]) -> tuple[np.ndarray, float]:
    from embeddings.encoders import encoder_create

    encoder = encoder_create(name=name, dimensions=256) if name == "tfidf-svd" else encoder_create(name=name)
    started = time.perf_counter()
    encoder.fit(texts)
    vectors = encoder.encode(texts)
    return vectors, time.perf_counter() - started


def ndcg_at_10(ranked: np.ndarray, relevant: set[int]) -> float:
    discounts = 1.0 / np.log2(np.arange(2, 12))
    hits = np.array([int(i) in relevant for i in ranked[:10]], dtype=float)
    ideal = discounts[: min(len(relevant), 10)].sum()
    return float((hits * discounts[: len(hits)]).sum() / ideal)


@dataclass(frozen=True)
class ColdUser:
    """A user who liked some held-out items: their items, timestamps, which are warm, and the
    held-out items they liked (as positions in ``cold``)."""

    row: int
    items: np.ndarray
    when: np.ndarray
    warm: np.ndarray
    relevant: set[int]


def cold_users(
    matrix: sp.csr_matrix, stamps: sp.csr_matrix, cold: np.ndarray, is_cold: np.ndarray
) -> Iterator[ColdUser]:
    """The users the cold-start protocol scores: with a held-out positive and a warm one."""
    for user in range(matrix.shape[0]):
        items = matrix.indices[matrix.indptr[user] : matrix.indptr[user + 1]]
        liked_cold = set(items[is_cold[items]].tolist())
        relevant = {k for k, i in enumerate(cold.tolist()) if i in liked_cold}
        warm = ~is_cold[items]
        if relevant and warm.any():
            when = stamps.data[stamps.indptr[user] : stamps.indptr[user + 1]]
            yield ColdUser(user, items, when, warm, relevant)


def cold_start(vectors: dict[str, np.ndarray], matrix: sp.csr_matrix, stamps: sp.csr_matrix) -> dict[str, float]:
    rng = np.random.default_rng(SEED)
    n_items = matrix.shape[1]
    cold = np.sort(rng.choice(n_items, size=n_items // 10, replace=False))
    is_cold = np.zeros(n_items, bool)
    is_cold[cold] = True
    half_life = 30 * 86_400.0
    scores: dict[str, list[float]] = defaultdict(list)
    cold_counts = np.asarray(matrix[:, cold].sum(axis=0)).ravel()
    for user in cold_users(matrix, stamps, cold, is_cold):
        items, when, warm, relevant = user.items, user.when, user.warm, user.relevant
        for name, vecs in vectors.items():
            weights = np.exp2(-(when[warm].max() - when[warm]) / half_life)
            profile = (weights[:, None] * vecs[items[warm]]).sum(axis=0)
            scores[name].append(ndcg_at_10(np.argsort(-(vecs[cold] @ profile)), relevant))
        own = np.isin(cold, items).astype(float)  # leave this user's own ratings out of popularity
        scores["popularity"].append(ndcg_at_10(np.argsort(-(cold_counts - own), kind="stable"), relevant))
        scores["random"].append(ndcg_at_10(rng.permutation(len(cold)), relevant))
    return {name: float(np.mean(values)) for name, values in scores.items()} | {"users": len(scores["random"])}


def item_agreement(vectors: dict[str, np.ndarray], matrix: sp.csr_matrix, min_raters: int = 20) -> dict[str, float]:
    binary = (matrix > 0).astype(np.float32).tocsc()
    raters = np.asarray(binary.sum(axis=0)).ravel()
    eligible = np.flatnonzero(raters >= min_raters)
    co = (binary.T @ binary).toarray()
    union = raters[:, None] + raters[None, :] - co
    jaccard = np.divide(co, union, out=np.zeros_like(co), where=union > 0)
    rng = np.random.default_rng(SEED)
    recalls: dict[str, list[float]] = defaultdict(list)
    for item in eligible:
        row = jaccard[item].copy()
        row[item] = -1
        truth = set(np.argsort(-row)[:10].tolist())
        for name, vecs in vectors.items():
            sims = vecs @ vecs[item]
            sims[item] = -np.inf
            recalls[name].append(len(truth & set(np.argsort(-sims)[:10].tolist())) / 10)
        others = np.delete(np.arange(matrix.shape[1]), item)
        recalls["random"].append(len(truth & set(rng.choice(others, 10, replace=False).tolist())) / 10)
    return {name: float(np.mean(v)) for name, v in recalls.items()} | {"items": len(eligible)}


def build_through_worker(url: str, encoder: str, *, build: bool = True) -> dict:  # type: ignore[type-arg]
    """POST /models/train {"kind": "content"} to a server and worker configured with ``encoder``
    (or, with ``build=False``, use the content version already active), then measure search."""
    extra = {"RECSYS_CONTENT_ENCODER": encoder, "RECSYS_CONTENT_SWEEP_SECONDS": "3600"}
    with celery_worker(url, f"content-{encoder}", env=extra), gunicorn(url, PORT, env=extra) as master:
        api = Api(api_key(url), PORT)
        if build:
            run = api.call("POST", "/api/v1/models/train", {"kind": "content"})
        else:
            run = {"training_run": api.call("GET", "/api/v1/models?kind=content")[0]["version"]}  # type: ignore[index]
        started = time.perf_counter()
        while True:
            version = next(
                v for v in api.call("GET", "/api/v1/models?kind=content") if v["version"] == run["training_run"]
            )  # type: ignore[attr-defined, index]
            if version["status"] in {"active", "ready", "failed"}:
                break
            time.sleep(0.5)
        if build:
            version["wall_s"] = time.perf_counter() - started
        version["search"] = search_latency(api) if version["status"] == "active" else {}
        version["web_rss_mb"] = tree_rss_mb(master)
        version["web_workers"] = len(master.children())
    return version  # type: ignore[no-any-return]


def search_latency(api: Api, rounds: int = 20) -> dict[str, dict[str, float]]:
    # Each gunicorn worker loads the query encoder when it starts or, for a content version that
    # became active after it started (as here), on its first search: warm every worker first.
    for _ in range(40):
        api.call("GET", "/api/v1/search?q=warm+up&mode=semantic")
    latencies: dict[str, list[float]] = defaultdict(list)
    for mode in ("semantic", "keyword", "hybrid"):
        for _ in range(rounds):
            for query in QUERIES:
                started = time.perf_counter()
                api.call("GET", f"/api/v1/search?q={query.replace(' ', '+')}&mode={mode}&limit=10")
                latencies[mode].append(time.perf_counter() - started)
    return {
        mode: {"p50": statistics.median(v) * 1000, "p99": sorted(v)[int(len(v) * 0.99)] * 1000}
        for mode, v in latencies.items()
    }


def content_ready(url: str) -> bool:
    """Whether a kept catalogue already has an active content version (``--reuse``)."""
    import psycopg

    try:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT 1 FROM embeddings_activeversion WHERE kind = 'content'").fetchone()
            return row is not None
    except psycopg.Error:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--search-items", type=int, default=0, help="also measure search on N generated items")
    parser.add_argument("--reuse", action="store_true", help="keep the generated search catalogue for the next run")
    args = parser.parse_args()
    if not (MOVIELENS / "movies.csv").exists():
        sys.exit(f"{MOVIELENS} not found: the content benchmark needs ml-latest-small")
    movie_ids, texts = movie_texts()
    matrix, stamps = ratings(movie_ids)
    vectors, seconds = {}, {}
    for name in ENCODERS:
        vectors[name], seconds[name] = encode(name, texts)
    cold = cold_start(vectors, matrix, stamps)
    agreement = item_agreement(vectors, matrix)
    builds = {}
    for encoder in ENCODERS:
        url = database_recreate("recsys_bench_content")
        try:
            manage(url, "import_movielens", str(MOVIELENS), "--no-progress")
            builds[encoder] = build_through_worker(url, encoder)
        finally:
            drop_database(url)
    generated = None
    if args.search_items:
        name = f"recsys_bench_content_search_{args.search_items}"
        url = database_url(name)
        reused = args.reuse and content_ready(url)
        if not reused:
            url = database_recreate(name)
            generate = ["--items", str(args.search_items), "--users", "1000", "--interactions", "10000"]
            manage(url, "generate_demo_data", *generate, "--no-progress")
        try:
            generated = build_through_worker(url, "minilm", build=not reused)
        finally:
            if not args.reuse:
                drop_database(url)
    report(len(texts), seconds, cold, agreement, builds, generated, args.search_items)


def report(n_items, seconds, cold, agreement, builds, generated, search_items) -> None:  # type: ignore[no-untyped-def]
    lines = [
        "## Content embeddings (`bench/content.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}; ml-latest-small, {n_items:,} movies, text = title, "
        "genres and tags.",
        "",
        f"**(a) Cold start.** 10% of the movies held out; {cold['users']} users with positives among them; each "
        "user's content profile (recency-weighted, half-life 30 days) ranks the held-out movies:",
        "",
        "| ranking of held-out movies | NDCG@10 |",
        "|---|---:|",
        *[f"| {name} | {cold[name]:.4f} |" for name in (*ENCODERS, "popularity", "random")],
        "",
        "Popularity here counts the held-out movies' positives from all *other* users: an oracle a real cold "
        "start does not have (those movies have no interactions yet), shown as the upper reference.",
        "",
        f"**(b) Item to item.** Recall@10 of content neighbours against the top 10 by co-rating (Jaccard), over "
        f"{agreement['items']:,} movies with ≥ 20 raters:",
        "",
        "| neighbours | recall@10 |",
        "|---|---:|",
        *[f"| {name} | {agreement[name]:.4f} |" for name in (*ENCODERS, "random")],
        "",
        "**(c) Encoding throughput.** In-process (fit + encode of all movies) and end to end through a real Celery "
        'worker (`POST /models/train {"kind": "content"}`: read items, fit, encode, cluster, COPY, HNSW):',
        "",
        "| encoder | in-process items/s | worker: encode items/s | worker: whole build | timings |",
        "|---|---:|---:|---:|---|",
    ]
    for name in ENCODERS:
        build = builds[name]
        lines.append(
            f"| {name} | {n_items / seconds[name]:,.0f} | {build['metrics'].get('items_per_second', 0):,.0f} | "
            f"{build['wall_s']:.1f} s ({build['counts'].get('items', 0) / build['wall_s']:,.0f} items/s) | "
            f"{build['timings']} |"
        )
    lines += [
        "",
        "**(d) Search latency** through the HTTP API (gunicorn as deployed, each worker loads the query encoder at "
        "start; one client, 10 queries × 20 rounds per mode):",
        "",
    ]
    lines += ["| catalogue | mode | p50 | p99 |", "|---|---|---:|---:|"]
    catalogues = [(f"ml-latest-small, {name}", builds[name]) for name in ENCODERS]
    if generated:
        catalogues.append((f"generated {search_items:,} items, minilm", generated))
    for label, build in catalogues:
        for mode, figures in build["search"].items():
            lines.append(f"| {label} | {mode} | {figures['p50']:.1f} ms | {figures['p99']:.1f} ms |")
    lines += [
        "",
        "Web memory after the search runs (gunicorn master + workers, RSS, query encoder loaded in each worker): "
        + "; ".join(f"{label}: {b['web_rss_mb']:,.0f} MiB for {b['web_workers']} workers" for label, b in catalogues)
        + ".",
    ]
    write_section("content", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
