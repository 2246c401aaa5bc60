"""Scenarios: checked once for the API and the admin, cached per process for serving."""

from __future__ import annotations

import pytest

from recsys.admin import ScenarioForm
from recsys.errors import ValidationFailed
from recsys.models import Scenario
from recsys.rules.ruleset import NO_RULES, Boost, Pin
from recsys.rules.scenarios import scenario_cache_forget, scenario_put, scenario_rules_serving

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_cache():
    scenario_cache_forget()


def test_a_saved_scenario_is_served_as_its_rules():
    scenario_put(
        name="home",
        body={
            "filter": "attributes.in_stock = true",
            "boost": [{"expression": "attributes.price < 5", "factor": 2}],
            "pins": [{"item": "a", "position": 1}],
            "buries": ["b", "b"],
        },
    )

    rules = scenario_rules_serving(name="home")

    assert rules.filters == ("attributes.in_stock = true",)
    assert rules.boosts == (Boost("attributes.price < 5", 2.0),)
    assert rules.pins == (Pin("a", 1),) and rules.buries == ("b",)
    assert scenario_rules_serving(name="never-saved") == NO_RULES


def test_serving_reads_a_scenario_once_per_interval_and_a_save_at_once(settings, django_assert_num_queries):
    settings.RECSYS_SCENARIO_CACHE_SECONDS = 60
    scenario_put(name="home", body={"filter": 'id = "a"'})
    scenario_rules_serving(name="home")

    with django_assert_num_queries(0):
        scenario_rules_serving(name="home")
    scenario_put(name="home", body={"filter": 'id = "b"'})

    assert scenario_rules_serving(name="home").filters == ('id = "b"',)


@pytest.mark.parametrize(
    "body",
    [
        {"filter": "price < 5"},
        {"boost": [{"expression": 'id = "a"', "factor": 0}]},
        {"boost": [{"expression": 'id = "a"'}]},
        {"pins": [{"item": "a", "position": 0}]},
        {"pins": [{"item": "a", "position": 1}, {"item": "b", "position": 1}]},
        {"buries": ["bad id"]},
        {"unknown": 1},
        ["not", "an", "object"],
    ],
)
def test_a_bad_scenario_is_refused_and_nothing_is_stored(body):
    with pytest.raises(ValidationFailed):
        scenario_put(name="home", body=body)

    assert not Scenario.objects.exists()


def test_a_bad_scenario_name_is_refused():
    with pytest.raises(ValidationFailed):
        scenario_put(name="Has Spaces", body={})


def test_the_admin_form_applies_the_same_checks():
    bad = ScenarioForm(data={"name": "home", "filter": "price < 5", "boosts": "[]", "pins": "[]", "buries": "[]"})
    good = ScenarioForm(
        data={"name": "home", "filter": "attributes.price < 5", "boosts": "[]", "pins": "[]", "buries": "[]"}
    )

    assert not bad.is_valid() and "unknown field" in str(bad.errors)
    assert good.is_valid(), good.errors


@pytest.mark.parametrize("name", ["Homepage", "_x", "-home", "a" * 65])
def test_the_admin_form_refuses_a_name_the_api_cannot_serve(name):
    # a scenario saved as "Homepage" was a 400 on ?scenario=Homepage and a 404 on the API's GET and DELETE
    form = ScenarioForm(data={"name": name, "filter": "", "boosts": "[]", "pins": "[]", "buries": "[]"})

    assert not form.is_valid() and "name" in form.errors
