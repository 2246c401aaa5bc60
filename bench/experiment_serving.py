"""Serving cost of experiments: the personalised endpoint with and without a running experiment.

In one process (Django's test client: the whole view, serializers, middleware and database, no
socket), requests alternate between three arms on the same users, so machine load hits all alike:
  none        no experiment running (what serving cost before experiments);
  experiment  an experiment running whose variants both serve the active version (the answer is
              identical, so only the assignment, the variant dispatch and the id's extra part differ);
and the added work alone (assignment + id mint) is timed apart. Run with the answer cache on (the
hot path, where fixed costs matter most) and off (every answer computed).

    python -m recsys.run exec -- python bench/experiment_serving.py
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MOVIELENS, api_key, database_recreate, machine, manage, write_section


def setup(url: str) -> None:
    os.environ.update(DATABASE_URL=url, RECSYS_INSECURE_DEV_KEY="true", RECSYS_CF_TUNE="false")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings")
    import django

    django.setup()
    from embeddings import services

    version = services.collaborative_version_create()
    services.collaborative_model_train(version_id=version.pk)


def timed(call, rounds: int) -> list[float]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        out.append((time.perf_counter() - start) * 1000)
    return out


def run_arms(key: str, users: list[str], cache_seconds: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    """(wall ms, this process's CPU ms) per request and arm. The experiment runs for scenario "bench";
    the other arm names scenario "none" (no experiment: the same lookup finds nothing), so the two arms
    alternate request by request on the same user and share whatever load the machine has."""
    from django.test import Client, override_settings

    from experiments.models import Experiment
    from experiments.services import experiment_create

    client = Client(HTTP_AUTHORIZATION=f"Bearer {key}", HTTP_HOST="127.0.0.1")
    times: dict[str, list[tuple[float, float]]] = {"none": [], "experiment": []}
    body = {
        "name": "bench",
        "scenario": "bench",
        "control": "a",
        "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1, "config": {"diversity": 0}}],
    }
    with override_settings(RECSYS_ANSWER_CACHE_SECONDS=cache_seconds):
        experiment_create(body=body)
        for user in users:  # warm: the cache (when on), the connection, the per-process caches
            assert client.get(f"/api/v1/users/{user}/recommendations?limit=10&scenario=bench").status_code == 200
        for turn in range(rounds):
            for user in users:
                arms = ("none", "experiment") if turn % 2 == 0 else ("experiment", "none")
                for arm in arms:
                    scenario = "bench" if arm == "experiment" else "none"
                    wall, cpu = time.perf_counter(), time.process_time()
                    response = client.get(f"/api/v1/users/{user}/recommendations?limit=10&scenario={scenario}")
                    times[arm].append(((time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000))
                    assert response.status_code == 200
                    assert (response.json()["experiment"] is None) == (arm == "none")
        Experiment.objects.all().delete()
    return times


def added_work(users: list[str]) -> float:
    """Microseconds per request of the experiment's own work: assignment and the longer id."""
    from experiments.selectors import experiment_assign
    from recsys.recommendation_ids import recommendation_id_mint

    def work() -> None:
        for user in users:
            assignment = experiment_assign(scenario=None, user_external_id=user)
            assert assignment is not None
            recommendation_id_mint(experiment_id=assignment.experiment_id, variant=assignment.variant.name)

    from experiments.services import experiment_create

    experiment_create(
        body={"name": "micro", "control": "a", "variants": [{"name": "a", "weight": 1}, {"name": "b", "weight": 1}]}
    )
    experiment_assign(scenario=None, user_external_id=users[0])  # the running set read once
    best = min(timed(work, 20))
    return best * 1000 / len(users)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    url = database_recreate("bench_experiments")
    manage(url, "import_movielens", str(MOVIELENS), "--no-progress")
    key = api_key(url)
    setup(url)
    from recsys.models import User

    users = list(User.objects.order_by("?").values_list("external_id", flat=True)[: args.users])
    rows = []
    for label, cache in (("answer cache on", 300), ("answer cache off", 0)):
        times = run_arms(key, users, cache, args.rounds)
        for measure, index in (("wall", 0), ("CPU of the web process", 1)):
            none = statistics.median(t[index] for t in times["none"])
            with_experiment = statistics.median(t[index] for t in times["experiment"])
            rows.append(
                f"| {label}, {measure} | {none:.2f} | {with_experiment:.2f} | {with_experiment - none:+.2f} | "
                f"{with_experiment / none:.3f} | {len(times['none'])} |"
            )
            print(rows[-1], flush=True)
    micro = added_work(users)
    body = "\n".join(
        [
            "## Experiments: serving cost (bench/experiment_serving.py)",
            "",
            f"ml-latest-small, ALS; {machine()}, load average {os.getloadavg()[0]:.1f} at the end (a shared, busy",
            "machine). One process, Django's test client (whole view, middleware, database; no socket). The",
            "arms alternate request by request on the same users: `experiment` names the scenario of a running",
            "experiment whose two variants serve the active version (so the answer is the same and only the",
            "experiment's own work differs), `no experiment` names a scenario without one. CPU: this process's",
            "CPU time per request (the experiment's work is Python in the web process), steadier than wall time.",
            "",
            "| path | p50 ms, no experiment | p50 ms, experiment running | added p50 ms | ratio | requests per arm |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "The experiment's own work (variant assignment from the per-process running set + the id's extra",
            f"part), timed alone: {micro:.1f} µs per request. Target: ≤ 1 ms p50 added (experiments and rules).",
        ]
    )
    write_section("experiments-serving", body)
    print(body)


if __name__ == "__main__":
    main()
