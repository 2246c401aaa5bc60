"""What a variant's serving configuration may say, checked without the database."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from recsys.numbers import finite_number
from recsys.recommendation_ids import VARIANT_NAME_PATTERN

STRATEGIES = ("collaborative", "content", "ranked", "popular", "shuffled")
CONFIG_KEYS = ("model_version", "strategy", "diversity", "scenario_rules")
MAX_VARIANTS = 10


@dataclass(frozen=True)
class VariantConfig:
    """A variant's serving configuration; ``None`` leaves the request's (or the default) choice."""

    model_version: int | None = None
    strategy: str = "collaborative"
    diversity: float | None = None
    scenario_rules: bool = True

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"strategy": self.strategy, "scenario_rules": self.scenario_rules}
        if self.model_version is not None:
            out["model_version"] = self.model_version
        if self.diversity is not None:
            out["diversity"] = self.diversity
        return out


def variant_config_parse(config: object) -> tuple[VariantConfig | None, dict[str, list[str]]]:
    """The config, or the problems with it keyed by field (an empty dict when it is valid)."""
    if config is None:
        config = {}
    if not isinstance(config, dict):
        return None, {"config": ["must be an object"]}
    errors: dict[str, list[str]] = {}
    for key in sorted(set(config) - set(CONFIG_KEYS)):
        errors[key] = [f"unknown; a config may say {', '.join(CONFIG_KEYS)}"]
    version = config.get("model_version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        errors["model_version"] = ["must be a positive integer"]
    strategy = config.get("strategy", "collaborative")
    if strategy not in STRATEGIES:
        errors["strategy"] = [f"must be one of {', '.join(STRATEGIES)}"]
    diversity = config.get("diversity")
    if diversity is not None and not _is_fraction(diversity):
        errors["diversity"] = ["must be a number from 0 to 1"]
    rules = config.get("scenario_rules", True)
    if not isinstance(rules, bool):
        errors["scenario_rules"] = ["must be true or false"]
    if version is not None and strategy in ("content", "popular") and "model_version" not in errors:
        errors["model_version"] = [f"a {strategy} variant serves no collaborative version"]
    if errors:
        return None, errors
    return VariantConfig(version, strategy, float(diversity) if diversity is not None else None, rules), {}


def _is_fraction(value: object) -> bool:
    return finite_number(value) and 0 <= value <= 1


def variant_name_valid(name: object) -> bool:
    return isinstance(name, str) and re.fullmatch(VARIANT_NAME_PATTERN, name) is not None


def variant_weight_valid(weight: object) -> bool:
    return finite_number(weight) and 0 < weight <= 1e6
