"""Experiment lifecycle: create (validated against the model versions), stop, promote a winner."""

from __future__ import annotations

import re
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from embeddings.models import Kind, ModelVersion, Status
from embeddings.runs import model_version_activate
from experiments.models import Experiment, ExperimentStatus, Variant
from experiments.selectors import experiments_running_forget
from experiments.variants import (
    MAX_VARIANTS,
    VariantConfig,
    variant_config_parse,
    variant_name_valid,
    variant_weight_valid,
)
from recsys.errors import Conflict, NotFound, ValidationFailed
from recsys.numbers import finite_number
from recsys.recommendation_ids import VARIANT_NAME_PATTERN
from recsys.rules.scenarios import SCENARIO_NAME_PATTERN

SERVABLE = (Status.READY, Status.ACTIVE, Status.RETIRED)
CREATE_KEYS = ("name", "scenario", "control", "variants", "alpha", "mde")
# Below these the test asks for more users than any site has (and past them the statistics leave
# floats: an alpha of 1e-17 made z infinite, an mde of 1e-160 the users required): refused at creation.
MIN_ALPHA = 1e-6
MIN_MDE = 1e-3


def experiment_create(*, body: object) -> Experiment:
    """A running experiment from the API's body; 400 for anything invalid, 409 when another
    experiment already runs for the scenario."""
    name, scenario, control, variants, alpha, mde = _body_clean(body)
    with transaction.atomic():
        if Experiment.objects.filter(status=ExperimentStatus.RUNNING, scenario=scenario).exists():
            raise _running_conflict(scenario)
        now = timezone.now()
        try:
            with transaction.atomic():
                experiment = Experiment.objects.create(
                    name=name, scenario=scenario, control=control, alpha=alpha, mde=mde, started_at=now
                )
        except IntegrityError as error:  # another request created one for the scenario meanwhile
            raise _running_conflict(scenario) from error
        Variant.objects.bulk_create(
            [Variant(experiment=experiment, name=n, weight=w, config=c.as_json()) for n, w, c in variants]
        )
        _running_changed()
    return experiment


def _running_conflict(scenario: str | None) -> Conflict:
    where = f"scenario {scenario!r}" if scenario else "requests that name no scenario"
    return Conflict(f"an experiment is already running for {where}; stop it first", details={"scenario": [where]})


def _body_clean(body: object) -> tuple[str, str | None, str, list[tuple[str, float, VariantConfig]], float, float]:
    if not isinstance(body, dict):
        raise ValidationFailed("send a JSON object", details={"body": ["invalid"]})
    errors: dict[str, Any] = {key: ["unknown field"] for key in sorted(set(body) - set(CREATE_KEYS))}
    name = body.get("name")
    if not isinstance(name, str) or not 1 <= len(name.strip()) <= 200 or "\x00" in name:
        errors["name"] = ["required, 1-200 characters, without NUL"]
    scenario = body.get("scenario")
    if scenario is not None and (not isinstance(scenario, str) or not re.fullmatch(SCENARIO_NAME_PATTERN, scenario)):
        errors["scenario"] = [f"null or {SCENARIO_NAME_PATTERN}"]
    alpha = _number(
        body, "alpha", 0.05, lambda x: MIN_ALPHA <= x < 0.5, f"a number from {MIN_ALPHA:g} to below 0.5", errors
    )
    mde = _number(
        body, "mde", 0.1, lambda x: MIN_MDE <= x <= 10, f"a relative effect from {MIN_MDE:g} to 10 (0.1 = 10%)", errors
    )
    variants = _variants_clean(body.get("variants"), errors)
    control = body.get("control")
    if not isinstance(control, str) or control not in {v[0] for v in variants}:
        errors["control"] = ["required: the name of one of the variants"]
    if errors:
        raise ValidationFailed("the experiment is not valid", details=errors)
    return str(name).strip(), scenario, str(control), variants, alpha, mde


def _number(body: dict[str, Any], key: str, default: float, ok: Any, wanted: str, errors: dict[str, Any]) -> float:
    value = body.get(key, default)
    if not finite_number(value) or not ok(value):
        errors[key] = [f"must be {wanted}"]
        return default
    return float(value)


def _variants_clean(raw: object, errors: dict[str, Any]) -> list[tuple[str, float, VariantConfig]]:
    if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_VARIANTS:
        errors["variants"] = [f"required: 2 to {MAX_VARIANTS} variants"]
        return []
    cleaned, problems = [], {}
    for index, variant in enumerate(raw):
        problem = _variant_problems(variant)
        if problem:
            problems[str(index)] = problem
            continue
        config, _ = variant_config_parse(variant.get("config"))
        assert config is not None  # _variant_problems checked it
        cleaned.append((variant["name"], float(variant["weight"]), config))
    names = [c[0] for c in cleaned]
    if len(set(names)) != len(names):
        errors["variants"] = ["variant names must be unique"]
    if problems:
        errors["variants"] = problems
    return cleaned


def _variant_problems(variant: object) -> dict[str, list[str]]:
    if not isinstance(variant, dict):
        return {"variant": ['must be {"name", "weight", "config"}']}
    problems: dict[str, list[str]] = {key: ["unknown field"] for key in set(variant) - {"name", "weight", "config"}}
    if not variant_name_valid(variant.get("name")):
        problems["name"] = [f"required, {VARIANT_NAME_PATTERN}"]
    if not variant_weight_valid(variant.get("weight", 1.0)):
        problems["weight"] = ["must be a number above 0"]
    variant.setdefault("weight", 1.0)
    config, config_errors = variant_config_parse(variant.get("config"))
    problems.update({f"config.{k}": v for k, v in config_errors.items()})
    if config is not None and config.model_version is not None:
        problem = _version_problem(config.model_version)
        if problem:
            problems["config.model_version"] = [problem]
    return problems


def _version_problem(version_id: int) -> str | None:
    version = ModelVersion.objects.filter(pk=version_id).only("kind", "status", "has_tables").first()
    if version is None:
        return f"model version {version_id} does not exist"
    if version.kind != Kind.COLLABORATIVE:
        return f"model version {version_id} is a {version.kind} version; variants serve collaborative ones"
    if version.status not in SERVABLE or not version.has_tables:
        return f"model version {version_id} is {version.status} and has no vectors to serve"
    return None


def experiment_stop(*, experiment_id: int) -> Experiment:
    """Stop a running experiment: its users are served as if it had never run (409 unless running)."""
    with transaction.atomic():
        experiment = _locked(experiment_id)
        if experiment.status != ExperimentStatus.RUNNING:
            raise Conflict(f"experiment {experiment_id} is {experiment.status}, not running")
        experiment.status = ExperimentStatus.STOPPED
        experiment.stopped_at = timezone.now()
        experiment.save(update_fields=["status", "stopped_at"])
        _running_changed()
    return experiment


def experiment_promote(*, experiment_id: int, variant: object) -> Experiment:
    """Record the winner, activate its model version (if it names one), stop the experiment, and
    let the winner's configuration (strategy, diversity, scenario rules) serve the experiment's
    placement while no experiment runs there, in place of any earlier winner's. A running or
    stopped experiment can be promoted once (409 after)."""
    with transaction.atomic():
        _placement_lock(experiment_id)
        experiment = _locked(experiment_id)
        names = {v.name: v for v in experiment.variants.all()}
        if not isinstance(variant, str) or variant not in names:
            raise ValidationFailed(
                f"variant must be one of {', '.join(sorted(names))}", details={"variant": ["unknown variant"]}
            )
        if experiment.status == ExperimentStatus.COMPLETED:
            raise Conflict(f"experiment {experiment_id} already promoted {experiment.winner!r}")
        version = names[variant].config.get("model_version")
        if isinstance(version, int):
            model_version_activate(version_id=version)  # 409 model_not_ready if its vectors are gone
        _placement(experiment).filter(serves_placement=True).update(serves_placement=False)
        experiment.winner = variant
        experiment.status = ExperimentStatus.COMPLETED
        experiment.serves_placement = True
        experiment.stopped_at = experiment.stopped_at or timezone.now()
        experiment.save(update_fields=["winner", "status", "serves_placement", "stopped_at"])
        _running_changed()
    return experiment


def experiment_withdraw(*, experiment_id: int) -> Experiment:
    """The promoted winner's configuration stops serving the placement, which returns to the
    defaults (the model version it activated stays active). 409 unless it serves."""
    with transaction.atomic():
        experiment = _locked(experiment_id)
        if not experiment.serves_placement:
            raise Conflict(f"experiment {experiment_id} has no promoted configuration serving its placement")
        experiment.serves_placement = False
        experiment.save(update_fields=["serves_placement"])
        _running_changed()
    return experiment


def _placement(experiment: Experiment) -> QuerySet[Experiment]:
    """The experiments of the same placement: the same scenario, or all that name none."""
    if experiment.scenario:
        return Experiment.objects.filter(scenario=experiment.scenario)
    return Experiment.objects.filter(Q(scenario__isnull=True) | Q(scenario=""))


def _running_changed() -> None:
    """This process sees the change at once (and again after commit, in case a request re-read the
    running set in between); other processes within RECSYS_EXPERIMENT_CACHE_SECONDS."""
    experiments_running_forget()
    transaction.on_commit(experiments_running_forget)


def _placement_lock(experiment_id: int) -> None:
    """Until this transaction ends, no other promotion of the experiment's placement: two promoted at
    once each cleared the other's flag before either committed, and the second then broke the one
    winner per placement constraint (a 500). Now the second waits and replaces the first's winner."""
    scenario = Experiment.objects.filter(pk=experiment_id).values_list("scenario", flat=True).first()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtext('recsys-experiment-placement'), hashtext(%s))", [scenario or ""]
        )


def _locked(experiment_id: int) -> Experiment:
    experiment = Experiment.objects.select_for_update().filter(pk=experiment_id).first()
    if experiment is None:
        raise NotFound(f"experiment {experiment_id} does not exist", details={"id": [str(experiment_id)]})
    return experiment
