"""The operator dashboard's reads: counts, activity, models, runs, queues, workers and service health.

Every probe answers "down" or "unknown" instead of raising: the dashboard is what an operator
opens when something is broken, so it must load when Redis or the workers are not there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from django.db import connection

from embeddings.models import ActiveVersion, ModelVersion
from recsys import redis_store
from recsys.admin_format import timestamps_humanized
from recsys.admin_selectors import Activity, RowCount, awaiting_encoding_count, interactions_activity, table_row_count
from recsys.replicas import ReplicaHealth, replicas_health

logger = logging.getLogger(__name__)
QUEUES = ("training", "realtime", "maintenance", "default")
# Kombu's Redis transport keeps a queue's prioritised messages in sibling lists named
# "<queue>\x06\x16<priority>" (priority steps 3, 6, 9); all of them are waiting work.
PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")
INSPECT_SECONDS = 1.0


@dataclass
class Health:
    ok: bool
    detail: str


@dataclass
class WorkerState:
    name: str
    active: list[str] = field(default_factory=list)  # names of the tasks it is running


@dataclass
class Run:
    version: ModelVersion
    outcome: str


@dataclass
class Dashboard:
    counts: dict[str, RowCount]
    activity: Activity
    active_models: list[ActiveVersion]
    last_runs: list[Run]
    database: Health
    replicas: list[ReplicaHealth]  # each read replica as this process last measured it
    redis: Health
    queues: dict[str, int] | None  # None: the broker did not answer
    workers: list[WorkerState] | None  # None: not asked (broker down) or no answer at all
    awaiting_encoding: RowCount | None  # up to AWAITING_ENCODING_CAP; None: no content version is active


def database_health() -> Health:
    started = time.perf_counter()
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as error:
        return Health(False, f"{type(error).__name__}: {error}")
    return Health(True, f"answered in {(time.perf_counter() - started) * 1000:.1f} ms")


def _broker_client() -> redis.Redis:
    return redis_store.client("broker")  # Celery's queues: REDIS_URL's database


def redis_health() -> Health:
    started = time.perf_counter()
    try:
        _broker_client().ping()
    except (redis.RedisError, OSError) as error:
        return Health(False, f"{type(error).__name__}: {error}")
    return Health(True, f"answered in {(time.perf_counter() - started) * 1000:.1f} ms")


def queue_lengths() -> dict[str, int] | None:
    """Messages waiting per Celery queue (LLEN on the broker), or None when it does not answer."""
    try:
        client = _broker_client()
        pipe = client.pipeline(transaction=False)
        for queue in QUEUES:
            for suffix in PRIORITY_SUFFIXES:
                pipe.llen(f"{queue}{suffix}")
        lengths = pipe.execute()
    except (redis.RedisError, OSError):
        return None
    step = len(PRIORITY_SUFFIXES)
    return {queue: int(sum(lengths[n * step : (n + 1) * step])) for n, queue in enumerate(QUEUES)}


def workers_state() -> list[WorkerState] | None:
    """Workers that answered a broadcast within a second, with their running tasks; None when
    none answered (one ``active`` broadcast: a worker that replies is alive, so no separate ping)."""
    from recsys.celery import app

    try:
        replies: dict[str, Any] | None = app.control.inspect(timeout=INSPECT_SECONDS).active()
    except Exception:  # the broker went away between the health probe and this call
        logger.warning("celery inspect failed", exc_info=True)
        return None
    return _workers(replies) if replies else None


def _workers(replies: dict[str, Any]) -> list[WorkerState]:
    return [
        WorkerState(name=name, active=[str(task.get("name", "?")) for task in tasks or []])
        for name, tasks in sorted(replies.items())
    ]


def last_runs(*, limit: int) -> list[ModelVersion]:
    return list(ModelVersion.objects.defer("item_gram", "encoder_state", "centroids").order_by("-pk")[:limit])


def run_outcome(version: ModelVersion) -> str:
    """One line on how a run ended (or where it is): its error, stage, quality or size."""
    if version.error:
        return timestamps_humanized(version.error)
    if version.status == "training":
        return str(version.progress.get("stage", "queued"))
    if "ndcg@10" in version.metrics:
        baseline = version.baseline_metrics.get("ndcg@10", 0.0)
        return f"NDCG@10 {version.metrics['ndcg@10']:.4f} (popularity {baseline:.4f})"
    if "encoded" in version.counts:
        return f"{version.counts['encoded']} items encoded"
    return ""


def dashboard_report() -> Dashboard:
    broker = redis_health()
    return Dashboard(
        counts={
            "users": table_row_count(table="recsys_user"),
            "items": table_row_count(table="recsys_item"),
            "interactions": table_row_count(table="recsys_interaction"),
        },
        activity=interactions_activity(hours=48),
        active_models=list(ActiveVersion.objects.select_related("version").order_by("kind")),
        last_runs=[Run(version, run_outcome(version)) for version in last_runs(limit=10)],
        database=database_health(),
        replicas=replicas_health(),
        redis=broker,
        queues=queue_lengths() if broker.ok else None,
        # A broadcast through a dead broker would wait on kombu's connection retries.
        workers=workers_state() if broker.ok else None,
        awaiting_encoding=awaiting_encoding_count(),
    )
