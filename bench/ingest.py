"""Ingestion throughput: the REST API (1 and 4 clients, batches of 1,000), server memory over a
long ingest, and the COPY-based import commands. Prints figures and writes them to BENCHMARKS.md.

    make bench                       # or: python -m recsys.run exec -- python bench/ingest.py
    python bench/ingest.py --memory-rows 500000   # a shorter memory run
"""

from __future__ import annotations

import argparse
import csv
import http.client
import json
import multiprocessing as mp
import os
import random
import re
import resource
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    MOVIELENS,
    api_key,
    database_recreate,
    drop_database,
    gunicorn,
    machine,
    manage,
    postgres_cpu_seconds,
    redis_cpu_seconds,
    section_read,
    tree_cpu_seconds,
    tree_rss_mb,
    write_section,
)

IMPORT_NOTE = """Imports into months that hold nothing yet COPY into a standalone table per month (on a thread with a
connection of its own, while the command resolves the next chunk's users and items and reads the one after),
build its five indexes at once on a connection each, then ATTACH PARTITION. "The import itself" is the
command's own report (`interactions_load`), without the interpreter's and Django's start (~1.5-1.8 s of the
command's CPU). Wall figures on this shared 2-core VM depend on the other work running: read the CPU columns
and the interleaved before/after runs; docs/scaling.md, Bulk imports, has the method and what limits the path."""
BATCH = 1000
TYPES = ["view"] * 6 + ["click"] * 2 + ["add_to_cart", "purchase", "like", "dislike"]
EPOCH = datetime(2020, 1, 1, tzinfo=UTC)  # + seed x 1,000 s stays in the past


def make_body(seed: int, users: int = 100_000, items: int = 20_000) -> bytes:
    """One batch of 1,000 distinct events (a seed gives its own timestamps, so nothing repeats)."""
    rng = random.Random(seed)
    rows = []
    for n in range(BATCH):
        moment = EPOCH + timedelta(seconds=seed * BATCH + n)
        row = {
            "user": f"u{rng.randrange(users)}",
            "item": f"i{int(rng.paretovariate(1.2)) % items}",
            "type": rng.choice(TYPES),
            "timestamp": moment.isoformat(),
        }
        if rng.random() < 0.1:
            row.update(type="rating", value=rng.choice([1, 2, 3, 3.5, 4, 4.5, 5]))
        rows.append(row)
    return json.dumps({"interactions": rows}).encode()


def client(port: int, key: str, seeds: list[int], out: mp.Queue, ready) -> None:  # type: ignore[no-untyped-def]
    """Sends one batch per seed over one HTTPConnection (reopened as gunicorn closes it); reports batch latencies."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies, errors = [], 0
    bodies = [make_body(seed) for seed in seeds] if len(seeds) <= 200 else None  # measure the server only
    ready.wait()
    cpu = time.process_time()
    for n, seed in enumerate(seeds):
        body = bodies[n] if bodies else make_body(seed)
        started = time.perf_counter()
        conn.request("POST", "/api/v1/interactions", body=body, headers=headers)
        answer = conn.getresponse()
        payload = json.loads(answer.read())
        latencies.append(time.perf_counter() - started)
        if answer.status != 200 or payload["errors"] or payload["created"] != BATCH:
            errors += 1
    out.put((latencies, errors, time.process_time() - cpu))


def run_clients(port: int, key: str, clients: int, batches: int, first_seed: int) -> dict[str, float]:
    out: mp.Queue = mp.Queue()
    seeds = list(range(first_seed, first_seed + batches))
    ready = mp.Barrier(clients + 1)
    procs = [mp.Process(target=client, args=(port, key, seeds[i::clients], out, ready)) for i in range(clients)]
    for proc in procs:
        proc.start()
    ready.wait()  # clients have built their request bodies
    started = time.perf_counter()
    results = [out.get() for _ in procs]
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.join()
    latencies = sorted(lat for lats, _, _ in results for lat in lats)
    return {
        "events_per_s": batches * BATCH / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "failed_batches": sum(e for _, e, _ in results),
        "seconds": elapsed,
        "client_cpu_s": sum(c for _, _, c in results),
    }


def memory_run(port: int, key: str, master, rows: int, first_seed: int) -> list[tuple[int, float]]:
    """Ingest ``rows`` events with 4 clients in slices; RSS of gunicorn (master + workers) after each."""
    samples = [(0, tree_rss_mb(master))]
    slices = 5
    per_slice = max(1, rows // BATCH // slices)
    for n in range(slices):
        run_clients(port, key, 4, per_slice, first_seed + n * per_slice)
        samples.append(((n + 1) * per_slice * BATCH, tree_rss_mb(master)))
        print(f"  memory: {samples[-1][0]:>9,} events ingested, server RSS {samples[-1][1]:.0f} MiB", flush=True)
    return samples


def write_csv(path: Path, rows: int, *, start: datetime = EPOCH) -> None:
    """``rows`` events a second apart from ``start`` (1M rows span 11.6 days: one month's partition)."""
    rng = random.Random(7)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user", "item", "type", "value", "timestamp"])
        for n in range(rows):
            kind = rng.choice(TYPES)
            writer.writerow(
                [
                    f"c{rng.randrange(100_000)}",
                    f"ci{rng.randrange(20_000)}",
                    kind,
                    "",
                    (start + timedelta(seconds=n)).isoformat(),
                ]
            )


def timed_import(database_url: str, *args: str) -> dict[str, float]:
    """Wall seconds of a manage.py import (the whole command, and the import itself as its report gives it:
    without the interpreter's and Django's start), with the CPU seconds of the command and of PostgreSQL."""
    server, client = postgres_cpu_seconds(database_url), resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = manage(database_url, *args, "--no-progress", capture=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = re.search(r"interactions: [\d,]+ rows in ([\d.]+) s", out)
    return {
        "wall": wall,
        "import_wall": float(own.group(1)) if own else float("nan"),
        "client_cpu": after.ru_utime + after.ru_stime - client.ru_utime - client.ru_stime,
        "server_cpu": postgres_cpu_seconds(database_url) - server,
    }


def import_figures(database_url: str, csv_rows: int) -> dict[str, dict[str, float]]:
    """A fresh month (COPY into a standalone table, indexed and attached), the same file again (all
    duplicates: the upsert path), and new rows into the month that now has rows (the upsert path)."""
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        path, later = Path(folder) / "events.csv", Path(folder) / "later.csv"
        write_csv(path, csv_rows)
        write_csv(later, csv_rows, start=EPOCH + timedelta(seconds=csv_rows))  # the same month, new rows
        for name, file in (("fresh", path), ("rerun", path), ("existing", later)):
            figures[name] = timed_import(database_url, "import_interactions", str(file))
            figures[name]["rows"] = csv_rows
            print(f"  import {name}: {_import_line(figures[name])}", flush=True)
    if (MOVIELENS / "ratings.csv").exists():
        ratings = sum(1 for _ in (MOVIELENS / "ratings.csv").open()) - 1
        figures["movielens"] = timed_import(database_url, "import_movielens", str(MOVIELENS))
        figures["movielens"]["rows"] = ratings
    return figures


def _import_line(figure: dict[str, float]) -> str:
    rows = figure["rows"]
    return (
        f"{rows / figure['wall']:,.0f} rows/s wall ({_rate(rows, figure['import_wall'])} the import itself); "
        f"CPU {figure['client_cpu']:.1f} s command + "
        f"{figure['server_cpu']:.1f} s PostgreSQL ({rows / max(figure['client_cpu'], figure['server_cpu']):,.0f} "
        "rows per CPU-second of the busier side)"
    )


def _rate(rows: float, seconds: float) -> str:
    return "" if seconds != seconds else f"{rows / seconds:,.0f}"  # NaN: no report line to read it from


def api_phase(url: str, server, port: int, key: str, first_seed: int, args: argparse.Namespace) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """4 clients against one server, with the CPU each side spent per 1,000 events (ms): the web server
    (gunicorn's tree), PostgreSQL (the whole server: both scratch databases share it), Redis, the clients."""
    before = tree_cpu_seconds(server), postgres_cpu_seconds(url), redis_cpu_seconds()
    figure = run_clients(port, key, 4, args.batches, first_seed)
    after = tree_cpu_seconds(server), postgres_cpu_seconds(url), redis_cpu_seconds()
    for name, start, end in zip(("web", "pg", "redis"), before, after, strict=True):
        figure[f"{name}_cpu_ms_per_1000"] = (end - start) * 1000 / args.batches
    figure["clients_cpu_ms_per_1000"] = figure["client_cpu_s"] * 1000 / args.batches
    figure["cpu_ms_per_1000"] = sum(figure[f"{name}_cpu_ms_per_1000"] for name in CPU_SIDES)
    figure["load"] = os.getloadavg()[0]
    return figure


CPU_SIDES = ("web", "pg", "redis", "clients")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=80, help="batches of 1,000 per API phase")
    parser.add_argument("--memory-rows", type=int, default=5_000_000, help="0: skip the memory run")
    parser.add_argument("--csv-rows", type=int, default=1_000_000, help="0: skip the CSV imports")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--no-api", action="store_true", help="the imports only")
    parser.add_argument("--database", default="recsys_bench_ingest", help="the scratch database (dropped after)")
    args = parser.parse_args()

    url = database_recreate(args.database)
    one: dict[str, float] = {}
    # (The unpartitioned comparison, migration 0006's schema, ran until migration 0009: the writer now needs
    # 0009's references lock, so this code no longer runs against 0006. Its last figures are in git history.)
    fours: list[dict[str, float]] = []
    memory: list[tuple[int, float]] = []
    workers = 0
    loads = [os.getloadavg()[0]]
    try:
        if not args.no_api:
            key = api_key(url)
            with gunicorn(url, args.port) as master:
                workers = len(master.children())
                one = run_clients(args.port, key, 1, args.batches, 0)
                print(f"API, 1 client:  {one['events_per_s']:,.0f} events/s (p50 {one['p50_ms']:.0f} ms)", flush=True)
                for round_ in range(2):
                    fours.append(api_phase(url, master, args.port, key, 10_000 + 1000 * round_, args))
                    loads.append(fours[-1]["load"])
                    print(f"API, 4 clients: {_brief(fours[-1])}", flush=True)
                if args.memory_rows:
                    memory = memory_run(args.port, key, master, args.memory_rows, 100_000)
        imports = import_figures(url, args.csv_rows) if args.csv_rows else {}
        print(json.dumps(imports, indent=1))
    finally:
        drop_database(url)
    report(one, fours, memory, imports, workers, args, loads)


def _mean(figures: list[dict[str, float]], key: str) -> float:
    return statistics.fmean(f[key] for f in figures)


def _brief(figure: dict[str, float]) -> str:
    sides = " + ".join(f"{figure[f'{side}_cpu_ms_per_1000']:.0f}" for side in CPU_SIDES)
    return (
        f"{figure['events_per_s']:,.0f} events/s; CPU per 1,000 web + PostgreSQL + Redis + clients = {sides} = "
        f"{figure['cpu_ms_per_1000']:.0f} ms; load {figure['load']:.1f}"
    )


def report(one, fours, memory, imports, workers, args, loads) -> None:  # type: ignore[no-untyped-def]
    """The section's three parts, each between markers of its own: a part this run did not measure
    (``--no-api``, ``--csv-rows 0``, ``--memory-rows 0``) keeps the figures BENCHMARKS.md has."""
    parts = {
        "ingest-api": api_lines(one, fours, workers, loads) if one else None,
        "ingest-imports": import_lines(imports, args) if imports else None,
        "ingest-memory": memory_lines(memory) if memory else None,
    }
    lines = ["## Ingestion (`bench/ingest.py`)", ""]
    for name, part in parts.items():
        body = "\n".join(part) if part is not None else section_read(name)
        if body is not None:
            lines += [f"<!-- {name}:start -->", body.strip("\n"), f"<!-- {name}:end -->", ""]
    lines += [IMPORT_NOTE]
    write_section("ingest", "\n".join(lines))
    print("\n".join(lines))


def api_lines(one, fours, workers, loads) -> list[str]:  # type: ignore[no-untyped-def]
    def row(label: str, figs: list[dict[str, float]]) -> str:
        sides = " + ".join(f"{_mean(figs, f'{side}_cpu_ms_per_1000'):.0f}" for side in CPU_SIDES)
        total = _mean(figs, "cpu_ms_per_1000")
        return (
            f"| `POST /api/v1/interactions`, 4 clients, {label} (mean of {len(figs)} runs) | "
            f"{_mean(figs, 'events_per_s'):,.0f} | {_mean(figs, 'p50_ms'):.0f} ms | {_mean(figs, 'p99_ms'):.0f} ms | "
            f"{sum(f['failed_batches'] for f in figs)} | {sides} = {total:.0f} ms | {2e6 / total:,.0f} | ≥ 20,000 |"
        )

    return [
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}; gunicorn with {workers} sync workers "
        "(as deployed, `gunicorn.conf.py`), clients in separate processes on loopback, batches of 1,000 new "
        "events into an empty database; the clients share the 2 cores with the server and PostgreSQL. The "
        f"machine's 1-minute load average was {min(loads):.1f}–{max(loads):.1f} during the run (other work "
        "included). CPU per 1,000 events is counted per side over each phase (gunicorn's process tree, "
        "PostgreSQL's server processes, Redis's INFO, the client processes from their start signal); the "
        "capacity column is what 2 cores would ingest if that CPU were all there was to do (2,000 ms of CPU "
        "per second / CPU per 1,000 events), the figure the machine's other load does not bend.",
        "",
        "| path | events/s | batch p50 | batch p99 | failed batches | CPU per 1,000: web + PostgreSQL + Redis + "
        "clients | CPU capacity of 2 cores, events/s | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
        f"| `POST /api/v1/interactions`, 1 client | {one['events_per_s']:,.0f} | {one['p50_ms']:.0f} ms | "
        f"{one['p99_ms']:.0f} ms | {one['failed_batches']} | | | |",
        row("partitioned", fours),
    ]


def import_lines(imports, args) -> list[str]:  # type: ignore[no-untyped-def]
    lines = [
        f"Imports of {args.csv_rows:,}-row CSVs (`import_interactions`; 100,000 users and 20,000 items named, "
        f"created on the way), measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC (load average "
        f"{os.getloadavg()[0]:.1f} at the end); CPU seconds of the command and of PostgreSQL beside wall time:",
        "",
        "| import | rows/s (wall, whole command) | rows/s (the import itself) | command CPU | PostgreSQL CPU "
        "| rows per CPU-second, busier side | target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    labels = {
        "fresh": "a month with no rows yet: COPY into a standalone table, indexes after, ATTACH PARTITION",
        "rerun": "the same file again (all duplicates: the idempotent upsert)",
        "existing": "new rows into that month, which now has rows (the upsert path)",
        "movielens": "`import_movielens` ml-latest-small ratings + movies + tags",
    }
    for name, label in labels.items():
        if name in imports:
            f = imports[name]
            busier = max(f["client_cpu"], f["server_cpu"])
            lines.append(
                f"| {label} | {f['rows'] / f['wall']:,.0f} | {_rate(f['rows'], f['import_wall'])} | "
                f"{f['client_cpu']:.1f} s | {f['server_cpu']:.1f} s | "
                f"{f['rows'] / busier:,.0f} | {'≥ 200,000' if name == 'fresh' else ''} |"
            )
    return lines


def memory_lines(memory) -> list[str]:  # type: ignore[no-untyped-def]
    first, warm, last = memory[0][1], memory[1][1], memory[-1][1]
    return [
        f"Server memory (gunicorn master + workers, RSS) while ingesting {memory[-1][0]:,} events through "
        f"the API with 4 clients: {first:.0f} MiB at start, {warm:.0f} MiB after the first "
        f"{memory[1][0]:,} (workers that had not yet served a request load their code), {last:.0f} MiB at "
        f"the end: {(last - warm) / warm:+.1%} over the last {memory[-1][0] - memory[1][0]:,} events.",
        "",
        "| events ingested | server RSS |",
        "|---:|---:|",
        *[f"| {rows:,} | {rss:.0f} MiB |" for rows, rss in memory],
    ]


if __name__ == "__main__":
    main()
