# recsys: `make demo` and `make test` work on a fresh machine with nothing but Python 3.11.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
export RECSYS_INSECURE_DEV_KEY ?= true

.PHONY: demo serve test test-unit lint typecheck install services-start services-status services-stop bench screenshots clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or run make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

## demo: embedded services, migrate, demo data, serve on :8000 with a worker and beat, print curl examples
demo: install
	$(PY) -m recsys.run demo

## serve: web (gunicorn on 127.0.0.1:$$PORT, default 8000), Celery worker and beat; Ctrl-C stops all
serve: install
	$(PY) -m recsys.run serve

## test: the whole suite against the configured services (embedded ones when no URLs are set), in
## TEST_WORKERS pytest-xdist processes (the cores, at most 4; each with its own test database and Redis databases)
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
test: install
	$(PY) -m recsys.run exec -- $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal $(PYTEST_ARGS)

## test-unit: the pure modules' tests alone (learners, tuning, evaluation, encoders, rules...): seconds, nothing started
test-unit: install
	$(PY) -m pytest -m unit -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy's Django plugin loads the settings, which only read the environment: no service is needed.
typecheck: install
	$(VENV)/bin/mypy recsys embeddings api experiments

## bench: ingestion, quality, serving, content and soak benchmarks (needs ../shared/data/ml-latest-small) -> BENCHMARKS.md
bench: install
	$(PY) -m recsys.run exec -- $(PY) bench/ingest.py
	$(PY) -m recsys.run exec -- $(PY) bench/quality.py
	$(PY) -m recsys.run exec -- $(PY) bench/serve.py
	$(PY) -m recsys.run exec -- $(PY) bench/content.py
	$(PY) -m recsys.run exec -- $(PY) bench/soak.py

## screenshots: demo data on a real server, Chromium (apt-get install chromium) saves the admin's pages to docs/screenshots/
screenshots: install
	$(PY) scripts/screenshots.py

## services-start: start the embedded PostgreSQL and Redis and leave them running (for manage.py, a shell, a debugger)
services-start: install
	$(PY) manage.py services start

services-status: install
	$(PY) manage.py services status

services-stop: install
	$(PY) manage.py services stop

clean: services-stop
	rm -rf .data staticfiles
