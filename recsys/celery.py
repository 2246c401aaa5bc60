"""The Celery application; tasks are discovered in each installed app's ``tasks`` module."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings")
# BLAS in workers runs single-threaded: implicit is ~10x slower with threads fighting its own.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

app = Celery("recsys")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
