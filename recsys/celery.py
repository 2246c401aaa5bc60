"""The Celery application; tasks are discovered in each installed app's ``tasks`` module."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable

from celery import Celery
from celery.signals import task_postrun

import recsys.broker  # noqa: F401 (registers the broker transport that settings name)

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "recsys.settings")
# BLAS in workers runs single-threaded: implicit is ~10x slower with threads fighting its own.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

app = Celery("recsys")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@functools.cache
def _malloc_trim() -> Callable[[int], int]:
    """glibc's malloc_trim, which hands the heap's free memory back to the OS; elsewhere a no-op."""
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    return trim if trim is not None else (lambda pad: 0)


@task_postrun.connect
def _release_freed_memory(**_: object) -> None:
    """After each task, give back what it freed: glibc keeps freed heap pages mapped, so a pool
    process would otherwise keep a training run's temporaries in its RSS for good (measured on
    ml-latest-small: 155 MiB after a retrain, 122 MiB trimmed). A trim takes about 0.1 ms."""
    _malloc_trim()(0)
