"""What business rules add to a request: the same uncached requests with and without a filter, a boost
and a saved scenario, interleaved in one process (in-process WSGI calls, as gunicorn makes them).

    python -m recsys.run exec -- python bench/rules.py                       # ml-latest-small, scratch database
    python -m recsys.run exec -- python bench/rules.py --database recsys_bench_serve_100000_10000000
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil
from common import MOVIELENS, database_recreate, database_url, drop_database, machine, manage, write_section
from serve_profile import backend_process, caller, cpu, setup

NAME = "recsys_bench_rules"
FILTER = "attributes.in_stock = true"
BOOST = 'categories CONTAINS "Comedy":1.5'
SCENARIO = {
    "filter": 'NOT categories CONTAINS "Horror"',
    "boost": [{"expression": "attributes.price < 20", "factor": 1.2}],
    "buries": [],
}
# Every item gets a price and a stock flag (two in three in stock): the attributes the rules read.
ATTRIBUTES = (
    "UPDATE recsys_item SET attributes = attributes || jsonb_build_object('price', id % 100, 'in_stock', id % 3 <> 0)"
)


def variants(base: str) -> dict[str, str]:
    joiner = "&" if "?" in base else "?"
    return {
        "none": base,
        "filter": f"{base}{joiner}filter={quote(FILTER)}",
        "boost": f"{base}{joiner}boost={quote(BOOST)}",
        "scenario": f"{base}{joiner}scenario=home",
        "all": f"{base}{joiner}filter={quote(FILTER)}&boost={quote(BOOST)}&scenario=home",
    }


def prepare(url: str | None) -> str:
    """A database with MovieLens, attributes and a trained model (scratch unless ``url`` is kept)."""
    if url is None:
        url = database_recreate(NAME)
        manage(url, "import_movielens", str(MOVIELENS), "--no-progress")
    return url


def train_if_needed() -> None:
    from embeddings import services
    from embeddings.selectors import active_version

    if active_version(kind="collaborative") is None:
        version = services.collaborative_version_create()
        services.collaborative_model_train(version_id=version.pk)


def run(paths: dict[str, list[str]], call) -> dict[str, dict[str, float]]:  # type: ignore[no-untyped-def]
    """Each user's variants one after another in a shuffled order: the load drifts alike for all."""
    backend, me = backend_process(), psutil.Process()
    wall: dict[str, list[float]] = {name: [] for name in paths}
    spent: dict[str, list[float]] = {name: [0.0, 0.0] for name in paths}
    names = list(paths)
    for k in range(len(paths["none"])):
        random.shuffle(names)
        for name in names:
            web, pg = cpu(me), cpu(backend)
            started = time.perf_counter()
            status, body = call(paths[name][k])
            wall[name].append(time.perf_counter() - started)
            spent[name][0] += cpu(me) - web
            spent[name][1] += cpu(backend) - pg
            assert status == 200, (status, body[:300])
    if backend_process().pid != backend.pid:
        raise RuntimeError("the database connection was replaced during the measurement")
    n = len(paths["none"])
    return {
        name: {
            "p50": statistics.median(wall[name]) * 1000,
            "p90": sorted(wall[name])[int(n * 0.9)] * 1000,
            "web_cpu": spent[name][0] / n * 1000,
            "pg_cpu": spent[name][1] / n * 1000,
        }
        for name in paths
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--database", help="a kept benchmark database (attributes are added to its items)")
    parser.add_argument("--requests", type=int, default=1000, help="per endpoint and variant")
    parser.add_argument("--keep", action="store_true", help=f"keep the scratch database {NAME}")
    args = parser.parse_args()
    url = prepare(database_url(args.database) if args.database else None)
    try:
        os.environ.update(RECSYS_CF_TUNE="false", DATABASE_CONN_MAX_AGE="36000")  # one backend throughout
        setup(args.database or NAME)
        results, dataset = measure_all(args.requests)
    finally:
        if not args.database and not args.keep:
            drop_database(url)
    report(results, dataset, args)


def measure_all(requests: int) -> tuple[dict[str, dict[str, dict[str, float]]], str]:
    from django.db import connection

    from recsys.api_keys import api_key_create
    from recsys.models import Interaction, Item, User
    from recsys.rules.scenarios import scenario_put

    with connection.cursor() as cursor:
        cursor.execute(ATTRIBUTES)
        # As after any bulk load: without statistics (a server with autovacuum off) the planner
        # guesses the availability window's conditions keep 7% of the items and prefers a sequential
        # scan to the HNSW index for deeper limits (seen at 3 × limit on PostgreSQL 15 + pgvector 0.8).
        cursor.execute("ANALYZE recsys_item")
    train_if_needed()
    scenario_put(name="home", body=SCENARIO)
    _, key = api_key_create(name="rules-bench", scopes=["read"], rate_limit="1000000/min")
    users = list(User.objects.order_by("?").values_list("external_id", flat=True)[:requests])
    items = list(Item.objects.order_by("?").values_list("external_id", flat=True)[:requests])
    endpoints = {
        "personalised": [variants(f"/api/v1/users/{u}/recommendations?limit=10") for u in users],
        "similar": [variants(f"/api/v1/items/{quote(i, safe='')}/similar?limit=10") for i in items],
    }
    call = caller(key)
    results = {}
    for endpoint, rows in endpoints.items():
        paths = {name: [row[name] for row in rows] for name in rows[0]}
        for name in paths:  # warm: imports, prepared statements, the scenario and version caches
            for path in paths[name][:50]:
                call(path)
        results[endpoint] = run(paths, call)
    with connection.cursor() as cursor:
        cursor.execute("SELECT current_setting('server_version'), extversion FROM pg_extension WHERE extname='vector'")
        server, pgvector = cursor.fetchone()
    engine = f"PostgreSQL {server.split()[0]} with pgvector {pgvector}"
    return results, f"{engine}; {Item.objects.count():,} items, {Interaction.objects.count():,} interactions"


def report(results, dataset, args) -> None:  # type: ignore[no-untyped-def]
    lines = [
        f"## Business rules: what a filter, a boost and a scenario add, {dataset.split(';')[0]} (`bench/rules.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()} (shared with other work: read the ratios and the "
        f"differences, not the absolute times); {dataset}; uncached answers (RECSYS_ANSWER_CACHE_SECONDS=0), "
        f"in-process WSGI calls, the five variants of each request interleaved in a shuffled order, "
        f"{args.requests} per variant. Filter `{FILTER}`, boost `{BOOST}`, scenario `home` = filter "
        f"`{SCENARIO['filter']}` + boost `attributes.price < 20` × 1.2; `all` = the three together.",
        "",
        "| endpoint | rules | p50 ms | p50 added ms | p90 ms | CPU per request ms (web + PostgreSQL) | CPU added ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for endpoint, variants_ in results.items():
        base = variants_["none"]
        for name, r in variants_.items():
            cpu_total = r["web_cpu"] + r["pg_cpu"]
            lines.append(
                f"| {endpoint} | {name} | {r['p50']:.2f} | {r['p50'] - base['p50']:+.2f} | {r['p90']:.2f} | "
                f"{r['web_cpu']:.2f} + {r['pg_cpu']:.2f} = {cpu_total:.2f} | "
                f"{cpu_total - base['web_cpu'] - base['pg_cpu']:+.2f} |"
            )
    body = "\n".join(lines)
    print(body)
    write_section("rules-" + dataset.split(";")[0].split()[-1], body)  # one section per pgvector version


if __name__ == "__main__":
    main()
