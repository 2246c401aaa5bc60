"""Values a process loads once per key (a model, a version's state), shared by its threads."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class LoadedOnce(Generic[V]):
    """``get(key, load)``: the value loaded for ``key``, loading it on the first call. Threads asking
    for a key being loaded wait for that one load (each made its own before: megabytes, or seconds of
    a model, each time); a load never waits for another key's. A load that raises is tried again by
    the next caller. ``clear()`` forgets everything (a forked child: locks held at the fork are not
    its own)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._values: dict[Hashable, V] = {}
        self._lock = threading.Lock()  # held only to read the dicts, never during a load
        self._loading: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, load: Callable[[], V]) -> V:
        with self._lock:
            if key in self._values:
                return self._values[key]
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:
            with self._lock:
                if key in self._values:
                    return self._values[key]
            value = load()
            with self._lock:
                self._values[key] = value
                self._loading.pop(key, None)
        return value

    def forget(self, key: Hashable) -> None:
        with self._lock:
            self._values.pop(key, None)
