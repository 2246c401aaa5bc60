"""Impression ingest through the API (4 clients, real gunicorn), next to the interactions API measured in
the same run, and what attribution adds to the interactions API once impressions are present.

An impression is one shown item: a request of 100 display lists of 10 items is 1,000 impressions (the
same 1,000 rows per request as the interactions batches).

    python -m recsys.run exec -- python bench/impressions.py
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    api_key,
    database_recreate,
    drop_database,
    gunicorn,
    machine,
    postgres_cpu_seconds,
    redis_cpu_seconds,
    tree_cpu_seconds,
    write_section,
)
from ingest import BATCH, make_body

LISTS = 100  # display lists per impressions request
SHOWN = 10  # items per display list: LISTS x SHOWN = BATCH impressions per request
CLICK_TYPES = {"click", "add_to_cart", "purchase", "like", "rating"}
BEFORE = timedelta(seconds=60)  # each list was shown this long before its event
UNMATCHED_SHIFT = timedelta(days=2)


def impression_bodies(seed: int) -> list[bytes]:
    """The display lists that led to the events of ``make_body(seed)``: one list per event, shown a minute
    before it, holding the event's item and 9 others; BATCH / LISTS requests of BATCH impressions."""
    events = json.loads(make_body(seed))["interactions"]
    rng = random.Random(-seed)
    lists = []
    for event in events:
        # The other 9 from the 20,000-item catalogue the events use (recommendations spread wider
        # than the events' popularity): the first batches create them as stub items, as events do.
        others = [f"i{n}" for n in rng.sample(range(20_000), SHOWN)]
        items = list(dict.fromkeys([event["item"], *others]))[:SHOWN]  # distinct, the clicked one among them
        rng.shuffle(items)
        shown_at = datetime.fromisoformat(event["timestamp"]) - BEFORE
        lists.append({"user": event["user"], "items": items, "timestamp": shown_at.isoformat()})
    return [json.dumps({"impressions": lists[k : k + LISTS]}).encode() for k in range(0, len(lists), LISTS)]


def events_body(seed: int) -> list[bytes]:
    return [make_body(seed)]


def unmatched_events_body(seed: int) -> list[bytes]:
    """The same users, items and types as ``events_body(seed)``, two days earlier: before any impression
    of theirs, so nothing is attributed, while users and items exist as in the attributed phase."""
    events = json.loads(make_body(seed))["interactions"]
    for event in events:
        event["timestamp"] = (datetime.fromisoformat(event["timestamp"]) - UNMATCHED_SHIFT).isoformat()
    return [json.dumps({"interactions": events}).encode()]


def client(port: int, key: str, path: str, bodies: list[bytes], out: mp.Queue, ready) -> None:  # type: ignore[no-untyped-def]
    """Sends its bodies over one connection; reports batch latencies and batches not wholly created."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies, errors = [], 0
    ready.wait()
    cpu = time.process_time()
    for body in bodies:
        started = time.perf_counter()
        conn.request("POST", path, body=body, headers=headers)
        answer = conn.getresponse()
        payload = json.loads(answer.read())
        latencies.append(time.perf_counter() - started)
        if answer.status != 200 or payload["errors"] or payload["created"] != BATCH:
            errors += 1
    out.put((latencies, errors, time.process_time() - cpu))


def run_clients(
    port: int, key: str, path: str, make: Callable[[int], list[bytes]], seeds: list[int], clients: int = 4
) -> dict[str, float]:
    """Rows/s of ``clients`` processes sending the bodies of ``seeds`` (built before the clock starts)."""
    out: mp.Queue = mp.Queue()
    ready = mp.Barrier(clients + 1)
    shares = [[body for seed in seeds[i::clients] for body in make(seed)] for i in range(clients)]
    procs = [mp.Process(target=client, args=(port, key, path, shares[i], out, ready)) for i in range(clients)]
    for proc in procs:
        proc.start()
    ready.wait()
    started = time.perf_counter()
    results = [out.get() for _ in procs]
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.join()
    latencies = sorted(lat for lats, _, _ in results for lat in lats)
    return {
        "rows_per_s": len(latencies) * BATCH / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "failed_batches": sum(e for _, e, _ in results),
        "rows": len(latencies) * BATCH,
        "client_cpu_s": sum(c for _, _, c in results),
    }


CPU_SIDES = ("web", "pg", "redis", "clients")


def cpu_phase(url: str, master, run: Callable[[], dict[str, float]]) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """``run`` with the CPU it cost each side, in ms per 1,000 rows: the web server (gunicorn's tree),
    PostgreSQL, Redis, and the clients (from their start signal); and the machine's load average after."""
    before = tree_cpu_seconds(master), postgres_cpu_seconds(url), redis_cpu_seconds()
    figure = run()
    after = tree_cpu_seconds(master), postgres_cpu_seconds(url), redis_cpu_seconds()
    per_thousand = 1e6 / figure["rows"]  # seconds -> ms per 1,000 rows
    for side, start, end in zip(CPU_SIDES, before, after, strict=False):
        figure[f"{side}_cpu_ms"] = (end - start) * per_thousand
    figure["clients_cpu_ms"] = figure["client_cpu_s"] * per_thousand
    figure["cpu_ms"] = sum(figure[f"{side}_cpu_ms"] for side in CPU_SIDES)
    figure["load"] = os.getloadavg()[0]
    return figure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=24, help="requests of 1,000 rows per phase and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args()
    n = args.batches
    url = database_recreate("recsys_bench_impressions")
    rounds: list[dict[str, dict[str, float]]] = []
    loads = [os.getloadavg()[0]]
    try:
        key = api_key(url)
        with gunicorn(url, args.port) as master:
            workers = len(master.children())
            run_clients(
                args.port, key, "/api/v1/interactions", events_body, list(range(9_000, 9_008))
            )  # warm (2020: seeds past ~1.8M would be in the future)
            # Phases interleaved in rounds, so that the machine's load drifts over all of them alike.
            for r in range(args.rounds):
                seeds = list(range(10_000 + r * n, 10_000 + (r + 1) * n))
                phases = {
                    name: cpu_phase(url, master, partial(run_clients, args.port, key, path, make, seeds))
                    for name, path, make in (
                        ("impressions", "/api/v1/impressions", impression_bodies),
                        ("events_attributed", "/api/v1/interactions", events_body),
                        ("events_plain", "/api/v1/interactions", unmatched_events_body),
                    )
                }
                rounds.append(phases)
                loads.append(os.getloadavg()[0])
                print(json.dumps({k: _brief(v) for k, v in rounds[-1].items()}), flush=True)
        attributed = _attributions(url)
    finally:
        drop_database(url)
    report(rounds, attributed, workers, n, loads)


def _brief(figure: dict[str, float]) -> str:
    sides = " + ".join(f"{figure[f'{side}_cpu_ms']:.0f}" for side in CPU_SIDES)
    return (
        f"{figure['rows_per_s']:,.0f} rows/s, CPU/1000 {sides} = {figure['cpu_ms']:.0f} ms, load {figure['load']:.1f}"
    )


def _attributions(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM recsys_attribution").fetchone()
    return int(row[0]) if row else 0


def report(
    rounds: list[dict[str, dict[str, float]]], attributed: int, workers: int, batches: int, loads: list[float]
) -> None:
    def median(phase: str, figure: str) -> float:
        return statistics.median(r[phase][figure] for r in rounds)

    def ratio(phase: str) -> float:
        return statistics.median(r[phase]["rows_per_s"] / r["events_plain"]["rows_per_s"] for r in rounds)

    def row(label: str, phase: str, target: str = "") -> str:
        failed = sum(r[phase]["failed_batches"] for r in rounds)
        sides = " + ".join(f"{median(phase, f'{side}_cpu_ms'):.0f}" for side in CPU_SIDES)
        total = median(phase, "cpu_ms")
        return (
            f"| {label} | {median(phase, 'rows_per_s'):,.0f} | {ratio(phase):.2f}× | {median(phase, 'p50_ms'):.0f} ms "
            f"| {median(phase, 'p99_ms'):.0f} ms | {failed} | {sides} = {total:.0f} ms | {2e6 / total:,.0f} "
            f"| {target} |"
        )

    per_round = "; ".join(
        " / ".join(f"{r[p]['rows_per_s']:,.0f}" for p in ("impressions", "events_attributed", "events_plain"))
        for r in rounds
    )
    lines = [
        "## Impressions and attribution (`bench/impressions.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}; gunicorn with {workers} sync workers, 4 client "
        f"processes on loopback sharing the cores with the server and PostgreSQL; the machine's 1-minute load "
        f"average was {min(loads):.1f}–{max(loads):.1f} during the run (other work included). "
        f"{len(rounds)} rounds of three "
        f"phases of {batches} requests of 1,000 rows each, interleaved so that the machine's load drifts over all "
        "phases alike; medians over the rounds. **An impression is one shown item**: an impressions request "
        f"carries {LISTS} display lists of {SHOWN} items = 1,000 impressions (the items from a 20,000-item "
        "catalogue, created as stubs on first sight, as the interactions do). The attributed phase sends the "
        "events that the round's impressions led to (each a minute after a list that showed its item), so every "
        f"click-type event in it is attributed ({attributed:,} attributions in all); the plain phase then sends "
        "the same users, items and types two days earlier, before any of their impressions: the same stub and "
        "user lookups, the same attribution statement, nothing to attribute. Phases run in the order impressions, "
        "attributed, plain in each round.",
        "",
        "| phase | rows/s (median) | × interactions, same round | request p50 | request p99 | failed requests "
        "| CPU per 1,000 rows: web + PostgreSQL + Redis + clients | CPU capacity of 2 cores, rows/s | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        row("`POST /api/v1/impressions` (impressions/s)", "impressions", "≥ 20,000"),
        row("`POST /api/v1/interactions`, every click attributed", "events_attributed"),
        row("`POST /api/v1/interactions`, no impression matches", "events_plain"),
        "",
        f"Per round (impressions / attributed / plain, rows/s): {per_round}. CPU is counted per side over each "
        "phase (gunicorn's process tree, PostgreSQL's server processes, Redis's INFO, the client processes from "
        "their start signal) and divided by the rows; the capacity column is what 2 cores would ingest if that "
        "CPU were all there was to do (2,000 ms of CPU per second / CPU per 1,000 rows), the figure that the "
        "machine's other load does not bend. Attribution is one "
        "INSERT … SELECT with a LATERAL probe per interactions batch, and each impressions batch runs one more "
        "statement that credits clicks which arrived before their impression.",
    ]
    write_section("impressions", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
