"""The search attack of issue 15: other clients' recommendation latency while ten clients (one read
key each) hammer the heaviest keyword search the bounds allow, against gunicorn on loopback, with
the expensive-request limits on (at once and the time budget), at once only, and off; each server's
own quiet phase is its baseline.

    python -m recsys.run exec -- python bench/attack.py            # 50,000 generated items
    python -m recsys.run exec -- python bench/attack.py --reuse    # keep the data for the next run
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing as mp
import os
import random
import resource
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil
import psycopg
from common import (
    api_key,
    celery_worker,
    database_recreate,
    database_url,
    drop_database,
    generated_load,
    gunicorn,
    machine,
    manage,
    write_section,
)
from quality import Api, train
from serve import database_ready, ids

PORT = 8768
# Nine common words joined by OR: 8 operators (the default bound), and a match in most items, all of
# which ts_rank_cd must rank: the most work one query within the bounds can ask for.
HEAVY = "great or new or guide or best or simple or complete or modern or classic or essential"
# What the issue sent: ~100 negations and no word to look for (now refused with 400).
NEGATIONS = " ".join(["-red"] * 100)
KEYS = """
from recsys.api_keys import api_key_create
for n in range({count}):
    print(api_key_create(name=f"attacker-{{n}}", scopes=["read"], rate_limit="1000000/min")[1])
"""


Priority = str  # "normal", "nice 19" or "idle" (SCHED_IDLE)


def priority_set(priority: Priority) -> None:
    """This process's CPU priority. At nice 19 a process still gets a share of a busy core (a weight
    of 15 against a nice-0 process's 1,024); under SCHED_IDLE it runs only when a core has nothing
    else to do."""
    policy = os.SCHED_IDLE if priority == "idle" else os.SCHED_OTHER
    os.sched_setscheduler(0, policy, os.sched_param(0))
    os.setpriority(os.PRIO_PROCESS, 0, 19 if priority == "nice 19" else 0)


@contextmanager
def sending(priority: Priority) -> Iterator[None]:
    """Normal priority while a request is connected and sent: a low-priority client descheduled
    between its connect and its request would hold a sync worker waiting for the request line,
    which a remote client sending at full speed does not do (that is slowloris, another attack)."""
    if priority == "normal":
        yield
        return
    priority_set("normal")
    try:
        yield
    finally:
        priority_set(priority)


def client(kind: str, port: int, key: str, paths: list[str], seconds: float, priority: Priority, out: mp.Queue) -> None:  # type: ignore[type-arg]
    """Requests back to back for ``seconds`` (a new connection each: sync workers close them);
    a 429 is not waited on, as an attacker would not wait. Answers: (status, seconds, when sent,
    in seconds since the phase began)."""
    priority_set(priority)
    headers = {"Authorization": f"Bearer {key}"}
    answers: list[tuple[int, float, float]] = []
    rng = random.Random()
    began = time.perf_counter()
    until = began + seconds
    while time.perf_counter() < until:
        started = time.perf_counter()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            with sending(priority):
                conn.request("GET", rng.choice(paths), headers=headers)
            answer = conn.getresponse()
            answer.read()
            status = answer.status
        except OSError:
            status = 0
        finally:
            conn.close()
        answers.append((status, time.perf_counter() - started, started - began))
    used = resource.getrusage(resource.RUSAGE_SELF)
    out.put((kind, answers, used.ru_utime + used.ru_stime))


Job = tuple[str, str, list[str], Priority]  # kind of client, its key, its paths, its CPU priority
Answers = list[tuple[int, float, float]]  # (status, seconds, when sent)


def phase(
    port: int, jobs: list[Job], seconds: float, servers: dict[str, psutil.Process]
) -> tuple[dict[str, Answers], dict[str, float]]:
    """All clients at once, one process each: every answer by kind of client, and the CPU seconds
    that each kind of client and each server (a process tree: gunicorn, PostgreSQL) used."""
    out: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    procs = [
        mp.Process(target=client, args=(kind, port, key, paths, seconds, priority, out))
        for kind, key, paths, priority in jobs
    ]
    before = {name: tree_cpu(root) for name, root in servers.items()}
    for proc in procs:
        proc.start()
    results: dict[str, Answers] = {"normal": [], "attack": []}
    cpu = {"normal": 0.0, "attack": 0.0}
    for _ in procs:
        kind, answers, used = out.get()
        results[kind] += answers
        cpu[kind] += used
    for proc in procs:
        proc.join()
    cpu.update({name: tree_cpu(root) - before[name] for name, root in servers.items()})
    return results, cpu


def tree_cpu(root: psutil.Process) -> float:
    """CPU seconds of a process, its descendants, and those of its children that have ended."""
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def postmaster(url: str) -> psutil.Process | None:
    """PostgreSQL's postmaster when it runs on this machine (the parent of a backend)."""
    try:
        with psycopg.connect(url) as conn:
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]  # type: ignore[index]
            return psutil.Process(backend).parent()  # while the backend lives
    except (psutil.Error, psycopg.Error):
        return None


def halves(results: dict[str, Answers], seconds: float) -> str:
    """The normal clients' p99 and the searches answered 200 in each half of a phase (a budget
    refilled by the phase before lets a burst of searches through at its start)."""
    parts = []
    for first in (True, False):
        normal = [latency for _, latency, at in results["normal"] if (at < seconds / 2) == first]
        served = sum(1 for status, _, at in results["attack"] if status == 200 and (at < seconds / 2) == first)
        parts.append(f"{'first' if first else 'second'} half: p99 {percentile(normal, 0.99):.0f} ms, {served} searches")
    return "; ".join(parts)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] * 1000 if ordered else float("nan")


def summary(results: dict[str, Answers], seconds: float) -> dict[str, object]:
    normal = [latency for _, latency, _ in results["normal"]]
    attack = results["attack"]
    statuses: dict[int, int] = {}
    for status, _, _ in attack:
        statuses[status] = statuses.get(status, 0) + 1
    late = [latency for status, latency, _ in attack if status == 200]
    return {
        "rps": len(normal) / seconds,
        "attack_rps": len(attack) / seconds,
        "p50": percentile(normal, 0.5),
        "p99": percentile(normal, 0.99),
        "max": max(normal, default=0.0) * 1000,
        "errors": sum(1 for status, _, _ in results["normal"] if status != 200),
        "attack": dict(sorted(statuses.items())),
        "attack_200_max": max(late, default=0.0) * 1000,
    }


def load_data(url: str, items: int, interactions: int) -> None:
    generated_load(url, items, interactions)


def attacker_keys(url: str, count: int) -> list[str]:
    printed = manage(url, "shell", "-c", KEYS.format(count=count), capture=True).split()
    return [word for word in printed if word.startswith("rsk_")]  # the shell also says what it imported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--interactions", type=int, default=500_000)
    parser.add_argument("--clients", type=int, default=4, help="normal clients asking for recommendations")
    parser.add_argument("--attackers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10, help="per phase")
    parser.add_argument("--rounds", type=int, default=7, help="quiet and attack phases, alternating")
    parser.add_argument("--reuse", action="store_true", help="keep the scratch database and reuse its data next time")
    parser.add_argument(
        "--defaults-only", action="store_true", help="only the server with the default limits (no peers without them)"
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the servers (named in the section)",
    )
    args = parser.parse_args()
    name = f"recsys_bench_attack_{args.items}_{args.interactions}"
    url = database_url(name)
    reused = args.reuse and database_ready(url)
    if reused:
        manage(url, "migrate", "--no-input", "-v", "0")
    else:
        url = database_recreate(name)
    try:
        if not reused:
            load_data(url, args.items, args.interactions)
        key = api_key(url)
        with celery_worker(url, "attack"), gunicorn(url, PORT):
            version = active_model(Api(key, PORT)) if reused else None
            version = version or train(Api(key, PORT))
        rows = measure(url, key, args)
    finally:
        if not args.reuse:
            drop_database(url)
    report(rows, version, args)


def active_model(api: Api) -> dict | None:  # type: ignore[type-arg]
    models = api.call("GET", "/api/v1/models")
    return next((m for m in models if m["kind"] == "collaborative" and m["status"] == "active"), None)  # type: ignore[union-attr, index]


def measure(url: str, key: str, args: argparse.Namespace) -> list[tuple[str, str, dict[str, object]]]:
    users = ids(url, "user")
    normal: list[Job] = [("normal", key, [f"/api/v1/users/{u}/recommendations?limit=10" for u in users], "normal")]
    normal *= args.clients
    searches = [f"/api/v1/search?mode=keyword&limit=200&q={quote(HEAVY)}"]
    negations = [f"/api/v1/search?mode=keyword&q={quote(NEGATIONS)}"]
    keys = attacker_keys(url, args.attackers)
    database = postmaster(url)
    phases: list[tuple[str, list[Job]]] = [
        ("quiet", normal),
        ("heaviest search allowed", normal + [("attack", k, searches, "normal") for k in keys]),
        ("the issue's -red ×100", normal + [("attack", k, negations, "normal") for k in keys]),
        ("heaviest search, attackers at nice 19", normal + [("attack", k, searches, "nice 19") for k in keys]),
        ("heaviest search, attackers SCHED_IDLE", normal + [("attack", k, searches, "idle") for k in keys]),
    ]
    no_budget = {"RECSYS_EXPENSIVE_SHARE_PER_KEY": "0", "RECSYS_EXPENSIVE_SHARE_TOTAL": "0"}
    off = {"RECSYS_EXPENSIVE_CONCURRENCY_PER_KEY": "0", "RECSYS_EXPENSIVE_CONCURRENCY_TOTAL": "0", **no_budget}
    servers = (("on (defaults)", {}, len(phases)), ("concurrency only, no time budget", no_budget, 2), ("off", off, 2))
    if args.defaults_only:
        servers = servers[:1]
    extra = dict(setting.split("=", 1) for setting in args.env)
    rows = []
    for limits, env, names in servers:
        with gunicorn(url, PORT, env={**env, **extra}) as master:
            workers = len(master.children())
            servers = {"web": master, **({"postgres": database} if database else {})}
            pooled: dict[str, dict[str, Answers]] = {}
            cpu: dict[str, dict[str, float]] = {}
            ratios: dict[str, list[float]] = {}
            loads: list[float] = []
            # The phases alternate, so that the machine's other load falls on each alike; each
            # attack phase is compared with the quiet phase of its own round.
            # gunicorn replaces a worker after max_requests (gunicorn.conf.py), which a flood of
            # refusals reaches within a minute or two: each new worker's start costs CPU.
            seen = {worker.pid for worker in master.children()}
            restarts: dict[str, int] = {}
            for round_ in range(args.rounds):
                quiet_p99 = float("nan")
                for name, jobs in phases[:names]:
                    results, used = phase(PORT, jobs, args.seconds, servers)
                    started = {worker.pid for worker in master.children()} - seen
                    seen |= started
                    restarts[name] = restarts.get(name, 0) + len(started)
                    for part, seconds in used.items():
                        cpu.setdefault(name, {}).setdefault(part, 0.0)
                        cpu[name][part] += seconds
                    loads.append(os.getloadavg()[0])
                    p99 = percentile([latency for _, latency, _ in results["normal"]], 0.99)
                    quiet_p99 = p99 if name == "quiet" else quiet_p99
                    ratios.setdefault(name, []).append(p99 / quiet_p99)
                    shares = ", ".join(f"{part} {seconds / args.seconds:.2f}" for part, seconds in used.items())
                    print(
                        f"round {round_ + 1}, {name}: {p99 / quiet_p99:.2f}×, {halves(results, args.seconds)}; "
                        f"cores: {shares}; workers started: {len(started)}",
                        flush=True,
                    )
                    for kind, answers in results.items():
                        pooled.setdefault(name, {"normal": [], "attack": []})[kind] += answers
            for name, results in pooled.items():
                figures = summary(results, args.seconds * args.rounds)
                cores = {part: seconds / (args.seconds * args.rounds) for part, seconds in cpu[name].items()}
                figures.update(ratios=ratios[name], load=(min(loads), max(loads)), cores=cores, restarts=restarts[name])
                rows.append((f"{limits}, {workers} workers", name, figures))
                print(rows[-1][:2], {k: v for k, v in figures.items() if k != "attack"}, flush=True)
    return rows


def report(rows: list[tuple[str, str, dict[str, object]]], version: dict, args: argparse.Namespace) -> None:  # type: ignore[type-arg]
    lines = [
        "## Search attack: recommendation latency while ten clients hammer search (`bench/attack.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()} (shared with other work: compare rows of one "
        f"run, not runs); generated catalogue of {args.items:,} items and {args.interactions:,} interactions, "
        f"model v{version['version']}. {args.clients} normal client processes ask for personalised "
        f"recommendations of random users (one read key); {args.attackers} attacker processes (a read key "
        f"each, not waiting on 429) send `GET /search?mode=keyword&limit=200&q={HEAVY}` (the most work "
        f"one query may ask for within the default bounds: 8 ORs of words found in most items), back to "
        f"back; {args.rounds} rounds of a quiet phase and the attack phases of {args.seconds:.0f} s each, "
        "alternating; each attack phase's p99 is divided by the quiet p99 of its own round, and the "
        "median of those ratios is the figure to read (the other columns pool the rounds); "
        "all on loopback sharing the cores with the server, PostgreSQL and Redis. Expensive-request limits: "
        "the defaults (at once: half the machine's cores in total, a key half of that; time budget: a quarter "
        "of the cores' seconds per second in total, a key half of that, 2 s of burst), the concurrency limits "
        "without the time budget, or none (off); keyword queries "
        "rank at most 2,000 matches (RECSYS_SEARCH_MAX_RANKED) in both"
        + (f"; set for these servers: {', '.join(f'`{setting}`' for setting in args.env)}" if args.env else "")
        + ". Each server's quiet phases are its baseline. What each phase models: *quiet*, the normal "
        "clients alone; *heaviest search allowed* and *the issue's -red ×100*, attacker processes at normal "
        "priority on the server's own cores, so the server pays for their requests and also loses the CPU "
        "of ten Python clients opening a connection per request, which an attacker on another machine "
        "would not take from it (an upper bound); *attackers at nice 19*, the same processes at the lowest "
        "niceness, which still take a small share of a busy core; "
        "*attackers SCHED_IDLE*, the same processes run only when a core has nothing else to do, so their "
        "own CPU never delays the server or PostgreSQL (an attacker elsewhere), but they can then send only "
        "as fast as idle CPU lets them: the attackers' req/s column is the pressure that phase applied. In "
        "both, an attacker connects and sends each request at normal priority (a client descheduled between "
        "the two would hold a sync worker, a slowloris attack this benchmark does not model). "
        "CPU, cores: CPU seconds per second of the phase taken by gunicorn (master and workers), PostgreSQL "
        "(all its processes), the attacker processes and the normal client processes (of the machine's cores, the rest "
        "is Redis, the kernel's own work and other work on the machine). Web workers replaced: new gunicorn "
        "workers seen after the phases of that row (gunicorn replaces a worker after `max_requests`, "
        "20,000 plus up to 10%, refusals included, and a new worker's start costs CPU). "
        "Load average: the machine's 1-minute figure after each phase (other work on it included).",
        "",
        "| server: limits | phase | normal req/s | p50 | p99 (pooled) | max | p99 / its round's quiet p99: "
        "median (min–max) | attackers' req/s | attackers' answers | attackers' slowest 200 | CPU, cores: web / "
        "PostgreSQL / attackers / normal clients | web workers replaced | load average |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for server, name, r in rows:
        ratios: list[float] = r["ratios"]  # type: ignore[assignment]
        low, high = r["load"]  # type: ignore[misc]
        answers = ", ".join(f"{status}: {n:,}" for status, n in r["attack"].items()) or "-"  # type: ignore[attr-defined]
        used: dict[str, float] = r["cores"]  # type: ignore[assignment]
        cores = " / ".join(
            f"{used[part]:.2f}" if part in used else "-" for part in ("web", "postgres", "attack", "normal")
        )
        lines.append(
            f"| {server} | {name} | {r['rps']:,.0f} | {r['p50']:.0f} ms | {r['p99']:.0f} ms | {r['max']:.0f} ms | "
            f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f}) | {r['attack_rps']:,.0f} | "
            f"{answers} | {r['attack_200_max']:.0f} ms | {cores} | {r['restarts']} | {low:.1f}–{high:.1f} |"
        )
    write_section("search-attack", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
