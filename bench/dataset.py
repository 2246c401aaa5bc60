"""Data set export and import: rows/s and peak memory of ``export_data`` and ``import_data`` on a
generated data set. Prints figures and writes them to BENCHMARKS.md.

    python -m recsys.run exec -- python bench/dataset.py                       # 1,000,000 interactions
    python -m recsys.run exec -- python bench/dataset.py --interactions 200000 # a shorter run
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, bench_env, database_recreate, drop_database, machine, manage, write_section

Figures = tuple[float, float, float, float]  # seconds, peak RSS MiB, CPU seconds, load average


def measured(database_url: str, *args: str) -> tuple[Figures, str]:
    """Run a manage.py command; the seconds of its work (as it reports them: Django's start is
    left out), its peak RSS in MiB (sampled every 20 ms), its CPU seconds, and the machine's load
    average when it ended (the VM is shared)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    process = psutil.Popen(
        [sys.executable, str(ROOT / "manage.py"), *args],
        env=bench_env(database_url),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, process.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    output = process.stdout.read()  # type: ignore[union-attr]
    if process.returncode:
        raise SystemExit(f"{' '.join(args)} failed with {process.returncode}: {output}")
    print(output)
    seconds = sum(float(s) for s in re.findall(r" in ([0-9.]+) s", output))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return (seconds, peak / 2**20, cpu, os.getloadavg()[0]), output


def end_counts(path: Path) -> dict[str, int]:
    """The rows per kind that the file's end line counts."""
    with path.open("rb") as handle:
        handle.seek(max(0, path.stat().st_size - 4096))
        return json.loads(handle.read().splitlines()[-1])["counts"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interactions", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=10_000)
    options = parser.parse_args()
    source = database_recreate("bench_dataset_source")
    target = database_recreate("bench_dataset_target")
    try:
        sizes = ("--items", str(options.items), "--users", str(options.users))
        manage(source, "generate_demo_data", *sizes, "--interactions", str(options.interactions), "--no-progress")
        manage(source, "shell", "-c", _VECTORS_PUT.format(items=options.items))
        with tempfile.TemporaryDirectory() as folder:
            plain, packed = Path(folder) / "data.jsonl", Path(folder) / "data.jsonl.gz"
            rows: list[tuple[str, Figures, int]] = []
            figures, _ = measured(source, "export_data", str(plain))
            counts = end_counts(plain)
            total = sum(counts.values())
            rows.append(("`export_data data.jsonl`", figures, plain.stat().st_size))
            figures, _ = measured(source, "export_data", str(packed))
            rows.append(("`export_data data.jsonl.gz` (gzip level 1)", figures, packed.stat().st_size))
            figures, output = measured(target, "import_data", str(plain), "--no-progress")
            per_kind = [line for line in output.splitlines() if " rows in " in line]
            rows.append(("`import_data data.jsonl` into an empty database", figures, plain.stat().st_size))
        report(counts, total, rows, per_kind)
    finally:
        drop_database(source)
        drop_database(target)


# Custom vectors for a tenth of the items, through the API's service, so that they are exported too.
_VECTORS_PUT = """
from embeddings.spaces import item_vector_put
for k in range(1, {items} + 1, 10):
    item_vector_put(item_external_id=f"item-{{k:06d}}", space="image", vector=[k % 7 + 1.0, k % 5, 0.5, 1.0])
"""


def report(counts: dict[str, int], total: int, rows: list[tuple[str, Figures, int]], per_kind: list[str]) -> None:
    lines = [
        "## Data set export and import (`bench/dataset.py`)",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d} on {machine()}, embedded PostgreSQL 16 on the same machine; a "
        f"`generate_demo_data` set of {counts['interaction']:,} interactions, {counts['user']:,} users, "
        f"{counts['item']:,} items and {counts['vector']:,} custom vectors ({total:,} lines). Peak memory is the "
        "command's own RSS (PostgreSQL's server processes not included), sampled every 20 ms; seconds are the "
        "commands' own figures, without Django's start; command CPU is the command's user + system time, "
        "its start included (the rest of an export's work is PostgreSQL's); the load average shows how much "
        "the shared VM was busy with others' work.",
        "",
        "| command | seconds | lines/s | peak RSS | command CPU s | load average | file |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (seconds, peak, cpu, load), size in rows:
        lines.append(
            f"| {name} | {seconds:.1f} | {total / seconds:,.0f} | {peak:.0f} MiB | {cpu:.1f} | {load:.1f} "
            f"| {size / 2**20:.0f} MiB |"
        )
    lines += ["", "The import, per kind:", "", "```", *per_kind, "```"]
    lines += [
        "",
        "The export's memory does not grow with the data: PostgreSQL writes each line (`row_to_json`) and "
        "COPY streams them in 1 MiB chunks from one repeatable-read snapshot. The import goes through the "
        "ingestion paths (`users_load`, `items_upsert`, `item_vector_put`, and the file importer's "
        "`interactions_load` in chunks of 200,000 events), so its speed is theirs (see Ingestion); custom "
        "vectors go one by one through the API's service, a transaction per 1,000.",
    ]
    text = "\n".join(lines)
    print(text)
    write_section("dataset", text)


if __name__ == "__main__":
    main()
