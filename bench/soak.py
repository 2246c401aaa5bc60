"""Soak: a mixed load (80% recommendation/similar reads, 20% ingestion) from separate client
processes on loopback against gunicorn + a Celery worker, with a retrain and version switch in
the middle; reports throughput, latency per endpoint, errors, memory drift and version consistency.

    python -m recsys.run exec -- python bench/soak.py                 # 600 s on ml-latest-small
    python -m recsys.run exec -- python bench/soak.py --seconds 90    # a short run
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import random
import socket
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil
from common import (
    MOVIELENS,
    api_key,
    celery_worker,
    database_recreate,
    drop_database,
    gunicorn,
    machine,
    manage,
    tree_rss_mb,
    write_section,
)
from quality import Api, train
from serve import ids

READ_SHARE = 0.8
BATCH = 50  # events per ingestion request
ACTIVE_VERSION_CACHE_SECONDS = 2.0  # RECSYS_ACTIVE_VERSION_CACHE_SECONDS, as deployed
GRACE_SECONDS = ACTIVE_VERSION_CACHE_SECONDS + 1.0  # the cache, plus a request in flight
SAMPLE_SECONDS = 10.0  # memory is sampled this often through the run


def client(port: int, key: str, users: list[str], items: list[str], until: float, seed: int, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """Requests until ``until`` (wall clock); puts per-endpoint latencies, errors and the versions seen."""
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    latencies: dict[str, list[float]] = {"recommendations": [], "similar": [], "ingest": []}
    errors: dict[str, list[str]] = {name: [] for name in latencies}
    versions: list[tuple[float, int]] = []  # (wall clock at the answer, collaborative version named)
    while time.time() < until:
        endpoint, method, path, body = request_pick(rng, users, items)
        started = time.perf_counter()
        try:
            conn.request(method, path, body=body, headers=headers)
            answer = conn.getresponse()
            status, payload = answer.status, answer.read()
        except (OSError, http.client.HTTPException) as error:
            conn.close()
            status, payload = 0, str(error).encode()
        latencies[endpoint].append(time.perf_counter() - started)
        if status != 200:
            errors[endpoint].append(f"{status} {payload[:200]!r}")
            continue
        data = json.loads(payload)
        if endpoint == "ingest" and data["errors"]:
            errors[endpoint].append(str(data["errors"][:2]))
        model = data.get("model") if endpoint != "ingest" else None
        if model and model.get("kind") == "collaborative":
            versions.append((time.time(), int(model["version"])))
    out.put((latencies, errors, versions))


def request_pick(rng: random.Random, users: list[str], items: list[str]) -> tuple[str, str, str, str | None]:
    if rng.random() < READ_SHARE:
        if rng.random() < 0.5:
            return "recommendations", "GET", f"/api/v1/users/{rng.choice(users)}/recommendations?limit=10", None
        return "similar", "GET", f"/api/v1/items/{rng.choice(items)}/similar?limit=10", None
    now = datetime.now(UTC).isoformat()
    events = [
        {"user": rng.choice(users), "item": rng.choice(items), "type": "view", "timestamp": now} for _ in range(BATCH)
    ]
    return "ingest", "POST", "/api/v1/interactions", json.dumps({"interactions": events})


def retrain_during(api: Api, at: float) -> dict[str, object]:
    """At wall clock ``at``, ask for a retrain and wait until the new version is active. A version
    that the quality gate leaves ready (NDCG below the active one's by the margin) is activated
    through the API, as an operator would: the point is the switch under load."""
    time.sleep(max(0.0, at - time.time()))
    asked = time.time()
    version = api.call("POST", "/api/v1/models/train", {"kind": "collaborative"})["training_run"]  # type: ignore[index]
    ready_since = None
    while True:
        current = next(v for v in api.call("GET", "/api/v1/models") if v["version"] == version)  # type: ignore[attr-defined]
        if current["status"] == "active":
            return {"version": version, "asked": asked, "active": time.time(), "by": "the quality gate"}
        if current["status"] == "failed":
            raise RuntimeError(f"the retrain failed: {current['error']}")
        if current["status"] == "ready":
            ready_since = ready_since or time.time()
            if time.time() - ready_since > 5:  # the gate kept it ready
                api.call("POST", f"/api/v1/models/{version}/activate", {})
                return {"version": version, "asked": asked, "active": time.time(), "by": "POST /models/{v}/activate"}
        time.sleep(0.5)


def stale_answers(versions: list[tuple[float, int]], old: int, new: int) -> tuple[int, int]:
    """Answers naming neither version, and old-version answers more than GRACE after this client
    first saw the new one."""
    foreign = sum(v not in {old, new} for _, v in versions)
    first_new = min((t for t, v in versions if v == new), default=None)
    if first_new is None:
        return foreign, 0
    return foreign, sum(1 for t, v in versions if v == old and t > first_new + GRACE_SECONDS)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] * 1000 if ordered else float("nan")


def free_port() -> int:
    """A port nobody listens on: a fixed one could answer health checks from another server."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory(web: psutil.Process, worker: psutil.Process) -> dict[str, float]:
    return {"web": tree_rss_mb(web), "worker": tree_rss_mb(worker)}


class MemorySampler(threading.Thread):
    """RSS of the web and worker process trees every SAMPLE_SECONDS, so a peak or a slow climb
    between the start and end readings shows too."""

    def __init__(self, web: psutil.Process, worker: psutil.Process, start: float) -> None:
        super().__init__(daemon=True)
        self.web, self.worker, self.start_at = web, worker, start
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_SECONDS):
            self.samples.append((time.time() - self.start_at, memory(self.web, self.worker)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    url = database_recreate("recsys_bench_soak")
    try:
        manage(url, "import_movielens", str(MOVIELENS), "--no-progress")
        # Untuned ALS: the soak measures serving through a switch, not the tuning search.
        with celery_worker(url, "soak", env={"RECSYS_CF_TUNE": "false"}) as worker:
            key = api_key(url)
            port = free_port()
            with gunicorn(url, port) as web:
                api = Api(key, port)
                first = train(api)
                users, items = ids(url, "user"), ids(url, "item")
                result = soak(args, api, port, key, users, items, web, psutil.Process(worker.pid))
                workers = len(web.children())
    finally:
        drop_database(url)
    report(args, first, result, workers)


def soak(args, api, port, key, users, items, web, worker) -> dict:  # type: ignore[no-untyped-def]
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    start = time.time() + 1.0
    until = start + args.seconds
    procs = [
        mp.Process(target=client, args=(port, key, users, items, until, seed, out)) for seed in range(args.clients)
    ]
    for proc in procs:
        proc.start()
    time.sleep(max(0.0, start + min(5.0, args.seconds / 10) - time.time()))  # warmed up
    before = memory(web, worker)
    sampler = MemorySampler(web, worker, start)
    sampler.start()
    switch = retrain_during(api, start + args.seconds / 3)
    switched = memory(web, worker)
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    sampler.done.set()
    after = memory(web, worker)
    return {
        "start": start,
        "results": results,
        "switch": switch,
        "before": before,
        "switched": switched,
        "after": after,
        "samples": sampler.samples,
    }


def report(args, first, result, workers) -> None:  # type: ignore[no-untyped-def]
    results, switch = result["results"], result["switch"]
    old, new = int(first["version"]), int(switch["version"])
    endpoints = results[0][0].keys()
    latencies = {name: [x for lats, _, _ in results for x in lats[name]] for name in endpoints}
    errors = {name: [e for _, errs, _ in results for e in errs[name]] for name in endpoints}
    stale = [stale_answers(versions, old, new) for _, _, versions in results]
    seen = [v for _, _, versions in results for _, v in versions]
    total = sum(len(v) for v in latencies.values())
    before, after = result["before"], result["after"]
    short = args.seconds < 600
    lines = [
        "## Soak, ml-latest-small (`bench/soak.py`)" + (f" — a short run of {args.seconds:.0f} s" if short else ""),
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}; gunicorn with {workers} sync workers and one "
        f"Celery worker; {args.clients} client processes on loopback (sharing the cores with the server, "
        f"PostgreSQL and Redis) for {args.seconds:.0f} s: {READ_SHARE:.0%} reads (half user recommendations, "
        f"half similar items, random users/items), {1 - READ_SHARE:.0%} ingestion (batches of {BATCH} view "
        f"events). Model v{old} ({first['algorithm']}, untuned) trained first; a retrain asked for "
        f"{switch['asked'] - result['start']:.0f} s into the load became active as v{new} after "
        f"{switch['active'] - switch['asked']:.0f} s (activated by {switch['by']}), while the load went on."
        + (" The target duration is 600 s (`--seconds 600`); these figures are from a shorter run." if short else ""),
        "",
        f"**{total / args.seconds:,.0f} requests/s** in all, "
        f"**{sum(len(e) for e in errors.values())} errors** (target 0).",
        "",
        "| endpoint | requests | req/s | p50 | p99 | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in endpoints:
        lats = latencies[name]
        lines.append(
            f"| {name} | {len(lats):,} | {len(lats) / args.seconds:,.1f} | {statistics.median(lats) * 1000:.1f} ms | "
            f"{percentile(lats, 0.99):.1f} ms | {len(errors[name])} |"
        )
    lines += [
        "",
        "| RSS of the process tree | at start (after warm-up) | just after the switch | at end | start → end |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in ("web", "worker"):
        change = (after[name] - before[name]) / before[name]
        lines.append(
            f"| {name} | {before[name]:,.0f} MiB | {result['switched'][name]:,.0f} MiB | {after[name]:,.0f} MiB "
            f"| {change:+.1%} |"
        )
    switch_at = switch["active"] - result["start"]
    after_switch = [m for t, m in result["samples"] if t >= switch_at] or [after]
    peaks = ", ".join(f"{name} {max(m[name] for m in after_switch):,.0f} MiB" for name in ("web", "worker"))
    by_minute = [(t, m) for t, m in result["samples"] if t % 60 < SAMPLE_SECONDS]
    minutes = [f"{t / 60:.0f}: {m['web']:,.0f} / {m['worker']:,.0f}" for t, m in [(0.0, before), *by_minute]]
    lines += [
        "",
        f"Highest sample (every {SAMPLE_SECONDS:.0f} s) after the switch: {peaks}. "
        f"By minute (web / worker, MiB): {', '.join(minutes)}.",
    ]
    lines += [
        "",
        f"Versions across the switch: {seen.count(old):,} answers named v{old}, {seen.count(new):,} named v{new}, "
        f"{sum(f for f, _ in stale)} named any other; per client, answers from v{old} more than "
        f"{GRACE_SECONDS:.0f} s after that client first saw v{new}: {sum(s for _, s in stale)} (target 0). "
        f"Consistency model: every answer comes wholly from one version (the selector resolves the active "
        f"version once and runs the query against that version's tables; cached answers are keyed by "
        f"version); each web process re-reads the active version at most every "
        f"`RECSYS_ACTIVE_VERSION_CACHE_SECONDS` ({ACTIVE_VERSION_CACHE_SECONDS:.0f} s), so for up to that "
        f"long after a switch different web processes may answer from the old and the new version.",
    ]
    for name in endpoints:
        if errors[name]:
            lines.append(f"\nFirst {name} errors: {errors[name][:3]}")
    write_section("soak", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
