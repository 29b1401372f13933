VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install prepare dev

$(BIN)/featurestore: setup.py
	python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,spark]"
	touch $@

install: $(BIN)/featurestore

# The dbt manifest must exist before the Dagster definitions import.
prepare: install
	cd dbt_features && ../$(BIN)/dbt parse --quiet

demo: prepare
	$(BIN)/featurestore demo

# ensure-services prints the PostgreSQL URL the tests log in with (and installs chromium for the UI test).
# The whole suite, the browser test of the Dagster UI included (`-m "not ui"` leaves its minutes out).
test: prepare
	url=$$(scripts/ensure-services) && FEATURE_STORE_TEST_POSTGRES_URL=$$url $(BIN)/python -m pytest -q

dev: prepare
	$(BIN)/featurestore dev
