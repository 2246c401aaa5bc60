"""Read throughput with one database vs a primary and a streaming replica: personalised
recommendations (answer cache off, so every request reads PostgreSQL) from 4 client processes,
and the CPU each PostgreSQL server spent per request, on ml-latest-small.

    python -m recsys.run exec -- python bench/replicas.py

The replica is a ``pg_basebackup -R`` standby of the configured server on this same machine
(tests/integration/replica.py), so both servers share its cores: the figure that carries over to
a second machine is how much of the reading work leaves the primary.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil
from common import ROOT, api_key, celery_worker, database_recreate, drop_database, gunicorn, machine, write_section
from quality import Api, train
from serve import ids, load, load_data, postmaster

sys.path.insert(0, str(ROOT))
from tests.integration.replica import StreamingReplica

PORT = 8768


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def replica_of(url: str) -> StreamingReplica:
    parts = urlsplit(url)
    host = parse_qs(parts.query).get("host", [parts.hostname or "127.0.0.1"])[0]
    primary = {"host": host, "port": parts.port or 5432, "user": parts.username or "postgres"}
    server = StreamingReplica(primary, free_port())
    server.start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    url = database_recreate("recsys_bench_replicas")
    replica = None
    try:
        load_data(url, None)
        with celery_worker(url, "replicas"):
            key = api_key(url)
            with gunicorn(url, PORT):
                version = train(Api(key, PORT))
        replica = replica_of(url)
        time.sleep(2)  # the replica replays the training run's last commits
        standby = psutil.Process(int((replica.folder / "postmaster.pid").read_text().split()[0]))  # type: ignore[operator]
        users = ids(url, "user")
        paths = [f"/api/v1/users/{u}/recommendations?limit=10" for u in users]
        primary = postmaster(url)
        results = {}
        uncached = {"RECSYS_ANSWER_CACHE_SECONDS": "0"}
        setups = {
            "1 database (primary only)": uncached,
            "primary + 1 replica": {**uncached, "DATABASE_REPLICA_URLS": replica.url(urlsplit(url).path.lstrip("/"))},
        }
        for name, env in setups.items():
            with gunicorn(url, PORT, env=env) as master:
                load(PORT, key, paths, args.clients, 3, {})  # warm the connections and plans
                servers = {"web": master, "primary": primary, "replica": standby}
                results[name] = load(PORT, key, paths, args.clients, args.seconds, servers)
                workers = len(master.children())
    finally:
        if replica is not None:
            replica.stop()
        drop_database(url)
    report(version, results, workers, args)


def report(version, results, workers, args) -> None:  # type: ignore[no-untyped-def]
    rows = "\n".join(
        f"| {name} | {r['rps']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | {r['errors']} | {r['cpu_web']:.2f} | "
        f"{r['cpu_primary']:.2f} | {r['cpu_replica']:.2f} |"
        for name, r in results.items()
    )
    one, two = results.values()
    moved = 1 - two["cpu_primary"] / one["cpu_primary"]
    body = f"""## Read replicas: 1 vs 2 databases (`bench/replicas.py`)

Measured {datetime.now(UTC):%Y-%m-%d} on {machine()} (shared with other work; figures are noisy,
compare the two rows); ml-latest-small, collaborative model v{version["version"]}; gunicorn with
{workers} sync workers, {args.clients} client processes for {args.seconds:.0f} s each, personalised
recommendations of random users with the answer cache off (every request reads PostgreSQL). The
replica is a `pg_basebackup -R` streaming standby of the embedded PostgreSQL 16 on the same
machine. CPU: user + system time per request of each process tree, in ms.

| databases | req/s | p50 ms | p99 ms | errors | CPU web | CPU primary | CPU replica |
|---|---|---|---|---|---|---|---|
{rows}

With the replica, {moved:.0%} of the primary's CPU per request moved to the replica: serving reads
leave the primary, which keeps its capacity for ingestion and training. On one machine the two
servers share its cores, so throughput cannot rise (the routing adds a Redis `EXISTS` per
personalised request, read-your-writes, and a lag check every 2 s per web process); on a second
machine the replica's CPU is added capacity: reads scale with replicas until the web tier or
the network is the limit.
"""
    write_section("replicas", body)
    print(body)


if __name__ == "__main__":
    main()
