# The README's two commands: `make run` (set up + dvc repro) and `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Stages call `python`: put the project's environment first on PATH for dvc and its stages.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup dataset run test test-fast e2e clean-outputs

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch/torchvision pinned to the wheels on this machine's disk; pyproject admits newer ones.
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install --quiet torch torchvision
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

setup: $(BIN)/.installed
	@test -d .dvc || $(BIN)/dvc init --quiet

# The default dataset: found, else Debian's package, else torchvision's download, else one clear
# error before any stage runs (data/default_dataset.py).
dataset: setup
	$(BIN)/python data/default_dataset.py

run: dataset
	$(BIN)/dvc repro
	@echo
	@cat reports/evaluate.md
	@echo
	@echo "Next: plots/ (dvc plots show), reports/suspects.csv and reports/verdict.md,"
	@echo "      and every stage's run in MLflow: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db"

test: dataset
	$(BIN)/python -m pytest -q --durations=25

# Day-to-day: everything but the end-to-end tests (marked e2e), which run real dvc pipelines and
# services. `make test` (the README's command, and CI) runs everything.
test-fast: dataset
	$(BIN)/python -m pytest -q -m "not e2e"

clean-outputs:
	rm -rf data/poisoned data/truth data/isolation data/abl models metrics plots reports
