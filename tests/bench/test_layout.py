"""The benchmarks run as scripts (``python bench/x.py``), which puts ``bench/`` first on sys.path: a
benchmark named like one of the project's packages would hide it from everything that script imports
(``bench/experiments.py`` once made every benchmark that starts Django fail on ``experiments.apps``)."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.unit


def test_no_benchmark_shadows_a_project_package():
    packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    scripts = {path.stem for path in (ROOT / "bench").glob("*.py")}
    assert packages, "no project package found"
    assert not scripts & packages, f"bench/ scripts named like project packages: {sorted(scripts & packages)}"
