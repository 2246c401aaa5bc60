"""Celery pool processes give memory that a task freed back to the OS."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from celery.signals import task_postrun

from recsys.celery import _malloc_trim, _release_freed_memory

# A heap that glibc keeps after its arrays are freed: one 8 MiB array freed raises the mmap
# threshold, so the 2 MiB arrays after it come from the heap; the last one pins the heap's top.
FRAGMENTED_HEAP = textwrap.dedent(
    """
    import numpy as np, psutil
    from recsys.celery import _release_freed_memory
    rss = lambda: psutil.Process().memory_info().rss
    big = np.ones(1 << 20); del big
    arrays = [np.ones(1 << 18) for _ in range(100)]
    pin = np.ones(1 << 18)
    del arrays
    before = rss()
    _release_freed_memory()
    print(before - rss())
    """
)


def test_the_trim_runs_after_every_task():
    assert _release_freed_memory in [receiver() for _, receiver in task_postrun.receivers]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_memory_freed_by_a_task_goes_back_to_the_os():
    if getattr(_malloc_trim(), "__name__", "") == "<lambda>":
        pytest.skip("not glibc")
    released = int(
        subprocess.run([sys.executable, "-c", FRAGMENTED_HEAP], capture_output=True, text=True, check=True).stdout
    )
    assert released > 100 * 2**20  # the 100 freed 2 MiB arrays
