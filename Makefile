VENV := .venv
BIN := $(VENV)/bin
# The quick loop leaves out what builds with dbt, runs on Spark or drives a browser (markers: conftest.py).
QUICK := not e2e and not spark and not ui

.PHONY: demo test check lint install prepare dev

$(BIN)/featurestore: pyproject.toml setup.py
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,spark]"
	touch $@

install: $(BIN)/featurestore

# The dbt manifest the Dagster definitions are built from: parsed again when a dbt file changes.
MANIFEST := dbt_features/target/manifest.json
$(MANIFEST): $(BIN)/featurestore $(shell find dbt_features -name '*.sql' -o -name '*.yml' | grep -v '/target/')
	cd dbt_features && ../$(BIN)/dbt parse --quiet
	touch $@

prepare: $(MANIFEST)

demo: prepare
	$(BIN)/featurestore demo

# Lint, format and types of the Python, and lint of the dbt models' SQL (rendered by dbt, for an empty DuckDB; dbt's
# templater lints models, and the macros as they render in them).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	FEATURE_STORE_DUCKDB_PATH=$$(mktemp -d)/lint.duckdb $(BIN)/sqlfluff lint --nocolor dbt_features/models

# The quick loop (about 2 minutes): lint, types, and the tests that need no dbt build, Spark or browser, on two
# processes (1.5x faster than one on 2 cores).
check: prepare lint
	url=$$(scripts/ensure-services --no-browser) && FEATURE_STORE_TEST_POSTGRES_URL=$$url \
		$(BIN)/python -m pytest -q -n 2 -m "$(QUICK)" --durations=10

# Everything CI runs: lint, types and the whole suite, the browser test of the Dagster UI and Spark included, on two
# processes. ensure-services starts PostgreSQL and Redis if they are not running and
# prints the URL the tests log in with.
test: prepare lint
	url=$$(scripts/ensure-services) && FEATURE_STORE_TEST_POSTGRES_URL=$$url \
		$(BIN)/python -m pytest -q -n 2 --durations=25

dev: prepare
	$(BIN)/featurestore dev
