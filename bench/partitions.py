"""Monthly partitions everywhere (as before) against months for recent time and years before, on
ml-latest-small (22 years of history): partitions made, the import's CPU, and PostgreSQL's CPU per
uncached personalised request (bench/serve_profile.py). Same run, layouts alternated; writes BENCHMARKS.md.

    python -m recsys.run exec -- python bench/partitions.py
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import psutil
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MOVIELENS, ROOT, database_recreate, drop_database, machine, manage, postgres_cpu_seconds
from common import write_section as section_write

# RECSYS_PARTITIONS_MONTHLY_MONTHS of each layout: a window longer than the data makes every month a
# partition, which is what the code did before spans (one partition per month with rows).
LAYOUTS = {"monthly": "100000", "variable": "12"}
TRAIN = (
    "from embeddings.services import collaborative_version_create as c, collaborative_model_train as t;"
    "print(t(version_id=c().pk).status)"
)


@contextmanager
def layout_env(layout: str) -> Iterator[None]:
    os.environ["RECSYS_PARTITIONS_MONTHLY_MONTHS"] = LAYOUTS[layout]
    try:
        yield
    finally:
        del os.environ["RECSYS_PARTITIONS_MONTHLY_MONTHS"]


def imported(layout: str) -> tuple[str, dict[str, float]]:
    """A fresh database with ml-latest-small imported under ``layout``: CPU of the command and of PostgreSQL."""
    url = database_recreate(f"bench_partitions_{layout}")
    with layout_env(layout):
        server, client = postgres_cpu_seconds(url), resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        manage(url, "import_movielens", str(MOVIELENS), "--no-progress")
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with psycopg.connect(url) as conn:
        count = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'recsys_interaction'::regclass")
        partitions = count.fetchone()[0]  # type: ignore[index]
    return url, {
        "wall": wall,
        "command": after.ru_utime + after.ru_stime - client.ru_utime - client.ru_stime,
        "postgres": postgres_cpu_seconds(url) - server,
        "partitions": partitions,
        "load": os.getloadavg()[0],
    }


def profiled(url: str, requests: int) -> dict[str, float]:
    """bench/serve_profile.py on the database: CPU per request and the user statement's planning time."""
    name = urlsplit(url).path.lstrip("/")
    command = [sys.executable, str(ROOT / "bench" / "serve_profile.py"), "--database", name]
    output = subprocess.run(
        [*command, "--requests", str(requests), "--top", "3"], check=True, capture_output=True, text=True, cwd=ROOT
    ).stdout
    cpu = re.search(r"web ([0-9.]+) ms \+ PostgreSQL backend ([0-9.]+) ms", output)
    plan = output[output.index("\nPlans:") :]
    planning = re.search(r"Planning Time: ([0-9.]+) ms", plan)
    execution = re.search(r"Execution Time: ([0-9.]+) ms", plan)
    assert cpu and planning and execution, output[-3000:]
    return {
        "web": float(cpu.group(1)),
        "pg": float(cpu.group(2)),
        "planning": float(planning.group(1)),
        "execution": float(execution.group(1)),
        "load": os.getloadavg()[0],
    }


SEEN = (
    "SELECT item_id FROM recsys_interaction WHERE user_id = %s GROUP BY item_id ORDER BY max(timestamp) DESC LIMIT 500"
)


def seen_statement(url: str, passes: int = 3) -> dict[str, float]:
    """The serving statement's seen-items part alone (embeddings/vectors/search.py), for every user: its
    backend's CPU per execution as a prepared statement (as serving sends it) and unprepared (planned each time)."""
    figures = {}
    with psycopg.connect(url) as conn:
        backend = psutil.Process(conn.execute("SELECT pg_backend_pid()").fetchone()[0])  # type: ignore[index]
        users = [row[0] for row in conn.execute("SELECT id FROM recsys_user")]
        for name, prepare in (("seen_prepared", True), ("seen_unprepared", False)):
            conn.execute(SEEN, [users[0]], prepare=prepare).fetchall()  # warm
            before = sum(backend.cpu_times()[:2])
            for _ in range(passes):
                for user in users:
                    conn.execute(SEEN, [user], prepare=prepare).fetchall()
            figures[name] = (sum(backend.cpu_times()[:2]) - before) / (passes * len(users)) * 1000
    return figures


ROLL_UP = "from recsys.partitions import partitions_maintain as m\nn = 0\nwhile m()['rolled_up']: n += 1\nprint(n)"


def rolled_up() -> dict[str, float]:
    """The monthly layout imported, then maintenance run until no year is left to merge (one a run): its CPU,
    the years merged, and the partitions and rows before and after."""
    url, figures = imported("monthly")
    server, client = postgres_cpu_seconds(url), resource.getrusage(resource.RUSAGE_CHILDREN)
    years = int(manage(url, "shell", "-c", ROLL_UP, capture=True).strip().splitlines()[-1])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with psycopg.connect(url) as conn:
        count = conn.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'recsys_interaction'::regclass")
        partitions = count.fetchone()[0]  # type: ignore[index]
        rows = conn.execute("SELECT count(*) FROM recsys_interaction").fetchone()[0]  # type: ignore[index]
    postgres = postgres_cpu_seconds(url) - server
    drop_database(url)
    return {
        "years": years,
        "command": after.ru_utime + after.ru_stime - client.ru_utime - client.ru_stime,
        "postgres": postgres,
        "before": figures["partitions"],
        "after": partitions,
        "rows": rows,
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="imports and profiles per layout, alternated")
    parser.add_argument("--requests", type=int, default=2000, help="per profile (at most one per user: 610)")
    parser.add_argument("--keep", action="store_true", help="keep the two databases")
    args = parser.parse_args()
    imports: dict[str, list[dict[str, float]]] = {layout: [] for layout in LAYOUTS}
    urls: dict[str, str] = {}
    imported("variable")  # not counted: the first import after PostgreSQL starts runs on cold caches
    for round_ in range(args.rounds):
        for layout in LAYOUTS if round_ % 2 == 0 else reversed(LAYOUTS):
            urls[layout], figures = imported(layout)
            imports[layout].append(figures)
            print(f"import {layout}: {figures}", flush=True)
    for layout, url in urls.items():
        print(f"train {layout}: {manage(url, 'shell', '-c', TRAIN, capture=True).strip()}", flush=True)
    profiles: dict[str, list[dict[str, float]]] = {layout: [] for layout in LAYOUTS}
    try:
        for round_ in range(args.rounds):
            for layout in LAYOUTS if round_ % 2 == 0 else reversed(LAYOUTS):
                profiles[layout].append(profiled(urls[layout], args.requests) | seen_statement(urls[layout]))
                print(f"profile {layout}: {profiles[layout][-1]}", flush=True)
    finally:
        if not args.keep:
            for url in urls.values():
                drop_database(url)
    report(imports, profiles, rolled_up(), args)


def _mean(figures: list[dict[str, float]], key: str) -> float:
    return statistics.mean(f[key] for f in figures)


def report(imports, profiles, merged, args) -> None:  # type: ignore[no-untyped-def]
    rows = sum(1 for _ in (MOVIELENS / "ratings.csv").open()) - 1
    lines = [
        f"### Partition layout on ml-latest-small ({rows:,} ratings, 1996–2018): monthly vs months + years",
        "",
        f"`bench/partitions.py`, {machine()}, embedded PostgreSQL (its CPU is this run's alone), "
        f"{args.rounds} imports (after one not counted) and {args.rounds} profiles per layout, alternated; "
        "load average "
        f"{min(f['load'] for fs in (*imports.values(), *profiles.values()) for f in fs):.1f}–"
        f"{max(f['load'] for fs in (*imports.values(), *profiles.values()) for f in fs):.1f}. "
        "Monthly: a partition for every month with rows (the layout before; here "
        "`RECSYS_PARTITIONS_MONTHLY_MONTHS=100000`). Variable: a month each for the last 12 months, "
        "a year each before.",
        "",
        "| layout | partitions (with DEFAULT and the months ahead) | import CPU: command + PostgreSQL | import wall "
        "| PostgreSQL CPU per uncached personalised request | web CPU per request | planning of the user statement "
        "(unprepared, once) | its execution (once) "
        "| seen-items statement alone, PostgreSQL CPU: prepared / unprepared |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for layout in LAYOUTS:
        i, p = imports[layout], profiles[layout]
        lines.append(
            f"| {layout} | {i[0]['partitions']:.0f} | {_mean(i, 'command'):.1f} s + {_mean(i, 'postgres'):.1f} s "
            f"| {_mean(i, 'wall'):.1f} s | {_mean(p, 'pg'):.2f} ms | {_mean(p, 'web'):.2f} ms "
            f"| {_mean(p, 'planning'):.1f} ms | {_mean(p, 'execution'):.2f} ms "
            f"| {_mean(p, 'seen_prepared'):.2f} ms / {_mean(p, 'seen_unprepared'):.2f} ms |"
        )
    ratio = {key: _mean(imports["monthly"], key) / _mean(imports["variable"], key) for key in ("command", "postgres")}
    pg = _mean(profiles["monthly"], "pg") / _mean(profiles["variable"], "pg")
    lines += [
        "",
        f"Monthly / variable, same run: import CPU {ratio['command']:.2f}× (command), {ratio['postgres']:.2f}× "
        f"(PostgreSQL); PostgreSQL CPU per personalised request {pg:.2f}×.",
        "",
        f"A database of the monthly layout merged by maintenance (one year a run, {merged['years']} runs): "
        f"{merged['command']:.1f} s command + {merged['postgres']:.1f} s PostgreSQL CPU, partitions "
        f"{merged['before']} → {merged['after']}, {merged['rows']:,} rows kept of {rows:,} "
        f"(load {merged['load']:.1f}).",
    ]
    print("\n".join(lines))
    section_write("partitions-layout", "\n".join(lines))


if __name__ == "__main__":
    main()
