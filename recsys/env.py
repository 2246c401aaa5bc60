"""Typed readers for settings that come from the environment; bad values fail loudly."""

from __future__ import annotations

import math
import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from recsys.rates import InvalidRate, parse_rate

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {raw!r}")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ImproperlyConfigured(f"{name} must be a finite number, got {raw!r}")
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be >= {minimum:g}, got {value:g}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [part.strip() for part in raw.split(",") if part.strip()]


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw).expanduser().resolve() if raw else default


def env_rate(name: str, default: str) -> str:
    """A rate string such as ``600/min``, checked now so that no request can trip over it later."""
    raw = os.environ.get(name, "").strip() or default
    try:
        parse_rate(raw)
    except InvalidRate as error:
        raise ImproperlyConfigured(f"{name}: {error}") from None
    return raw


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def env_duration(name: str, default: str, *, minimum_seconds: int = 1) -> int:
    """A duration in whole seconds: ``90`` (seconds), ``30s``, ``30m``, ``24h`` or ``7d``."""
    raw = os.environ.get(name, "").strip() or default
    text = raw.lower()
    unit = _DURATION_UNITS.get(text[-1:], 0)
    number = text[:-1] if unit else text
    try:
        seconds = int(number) * (unit or 1)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be a duration such as 24h, 30m or 3600, got {raw!r}") from None
    if seconds < minimum_seconds:
        raise ImproperlyConfigured(f"{name} must be at least {minimum_seconds} s, got {raw!r}")
    return seconds
