# perkchain: `make run` runs the main job, `make test` the whole suite.
# Both create the virtual environment and install the project when needed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The project alone (what `make run` needs), and with its test extras.
RUN_STAMP := $(VENV)/.installed-run
STAMP     := $(VENV)/.installed

.PHONY: install test run lint format bench soak clean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The main job: a local network of 4 validators and an auditor in ./devnet,
# fed the real retail data of data/, then audited; stopped at the end.
run: $(RUN_STAMP)
	$(BIN)/perk replay --home devnet

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .

bench: $(RUN_STAMP)
	$(BIN)/perk bench ledger

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache devnet

# The fault and bad-input soak: a local network under load, faults and bad
# inputs for SOAK_MINUTES; the last line is a JSON summary (see docs/reliability.md).
SOAK_MINUTES ?= 20
soak: $(STAMP)
	$(BIN)/python -m tests.soak --minutes $(SOAK_MINUTES)
