"""What a variant's config may say."""

from __future__ import annotations

import pytest

from experiments.variants import VariantConfig, variant_config_parse, variant_name_valid, variant_weight_valid

pytestmark = pytest.mark.unit


def test_an_empty_config_is_the_collaborative_default_with_scenario_rules() -> None:
    config, errors = variant_config_parse({})
    assert errors == {}
    assert config == VariantConfig(model_version=None, strategy="collaborative", diversity=None, scenario_rules=True)


def test_a_full_config_is_kept() -> None:
    config, errors = variant_config_parse(
        {"model_version": 3, "strategy": "shuffled", "diversity": 0.3, "scenario_rules": False}
    )
    assert errors == {}
    assert config is not None
    assert config.as_json() == {"model_version": 3, "strategy": "shuffled", "diversity": 0.3, "scenario_rules": False}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"model_version": "3"}, "model_version"),
        ({"model_version": True}, "model_version"),
        ({"model_version": 0}, "model_version"),
        ({"strategy": "random"}, "strategy"),
        ({"diversity": 1.5}, "diversity"),
        ({"diversity": "0.2"}, "diversity"),
        ({"scenario_rules": "yes"}, "scenario_rules"),
        ({"colour": "blue"}, "colour"),
        ({"strategy": "popular", "model_version": 2}, "model_version"),
        ([], "config"),
    ],
)
def test_invalid_configs_name_the_field_at_fault(config: object, field: str) -> None:
    parsed, errors = variant_config_parse(config)
    assert parsed is None
    assert field in errors


def test_variant_names_are_slugs_and_weights_positive_numbers() -> None:
    assert variant_name_valid("model-7_b")
    assert not variant_name_valid("Model B")
    assert not variant_name_valid("x" * 33)
    assert variant_weight_valid(0.5)
    assert not variant_weight_valid(0)
    assert not variant_weight_valid(float("inf"))
    assert not variant_weight_valid(True)
