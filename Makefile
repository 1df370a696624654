# Two commands matter: `make run` and `make test`. Both install what is missing first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint fuzz bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	@mkdir -p data logs
	$(BIN)/python -m gateway.demo --config config/gateway.toml

test: install
	$(BIN)/python -m pytest -q -n 2 -p no:cacheprovider

# A long run of the fuzz targets (credential extraction, path normalisation, raw request bytes); make test runs
# a few hundred examples of each.
fuzz: install
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-20000} $(BIN)/python -m pytest -q -p no:cacheprovider tests/security/test_fuzz.py --timeout 0

# Ten minutes of mixed traffic against a real gateway; not part of make test or CI.
soak: install
	$(BIN)/python -m bench.soak --minutes $${SOAK_MINUTES:-10}

# Not part of `make test` or CI: several minutes of load on both cores (wrk and nginx are installed when missing).
bench: install
	$(BIN)/python -m bench.run

lint: install
	$(BIN)/ruff check gateway tests bench
	$(BIN)/ruff format --check gateway tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) data logs .pytest_cache .hypothesis
