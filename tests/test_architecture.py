"""docs/architecture.md's dependency rules, read off the code: the pure modules import no framework
and no impure module, and recsys's core imports nothing of the packages above it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
# docs/architecture.md, "embeddings pure" and the rules' grammar: numpy/scipy in and out, no ORM.
PURE = {
    "embeddings/interactions.py",
    "embeddings/learners.py",
    "embeddings/tuning.py",
    "embeddings/evaluation.py",
    "embeddings/encoders.py",
    "embeddings/cold_items.py",
    "embeddings/ranking/sources.py",
    "embeddings/ranking/features.py",
    "embeddings/ranking/ranker.py",
    "embeddings/ranking/offline.py",
    "recsys/rules/expressions.py",
    "recsys/numbers.py",
    "recsys/loaded_once.py",
}
FRAMEWORKS = {"django", "rest_framework", "celery", "kombu", "redis", "psycopg", "drf_spectacular"}
PROJECT = {"recsys", "embeddings", "api", "experiments"}
# recsys/ operations sit on top, like api/ (docs/architecture.md): the supervisor, admin, demo...
OPERATIONS = {"run.py", "dashboard.py", "demo.py", "dataset_export.py", "dataset_import.py", "urls.py", "celery.py"}
OPERATIONS |= {"tasks.py", "wsgi.py", "web_worker.py", "apps.py", "signals.py"}


def imports(path: Path, *, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def module_path(name: str) -> str:
    return name.replace(".", "/") + ".py"


@pytest.mark.parametrize("path", sorted(PURE))
def test_a_pure_module_imports_no_framework_and_no_impure_module(path):
    found = imports(ROOT / path, module_level_only=False)  # inside functions too: nothing lazy either

    frameworks = {name for name in found if name.split(".")[0] in FRAMEWORKS}
    impure = {name for name in found if name.split(".")[0] in PROJECT and module_path(name) not in PURE}
    assert not frameworks and not impure, (frameworks, impure)


def test_recsys_core_imports_nothing_of_the_packages_above_it_at_module_level():
    offenders = []
    for path in sorted((ROOT / "recsys").rglob("*.py")):
        relative = path.relative_to(ROOT / "recsys")
        if (
            relative.parts[0] in ("management", "migrations")
            or path.name in OPERATIONS
            or path.name.startswith("admin")
        ):
            continue
        above = {name for name in imports(path, module_level_only=True) if name.split(".")[0] in PROJECT - {"recsys"}}
        offenders += [f"{path.relative_to(ROOT)} imports {name}" for name in sorted(above)]

    assert offenders == []


def test_the_pure_list_names_existing_modules():
    assert all((ROOT / path).is_file() for path in PURE)
