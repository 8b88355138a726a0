# The README's two commands: `make run` (set up + dvc repro) and `make test` (set up + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Stages call `python`: put the project's environment first on PATH for dvc and its stages.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test e2e clean-outputs

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch/torchvision pinned to the wheels on this machine's disk; pyproject admits newer ones.
	$(BIN)/pip install --quiet "torch==2.14.1" "torchvision==0.29.1" || $(BIN)/pip install --quiet torch torchvision
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

setup: $(BIN)/.installed
	@test -d .dvc || $(BIN)/dvc init --quiet

run: setup
	$(BIN)/dvc repro
	$(BIN)/dvc metrics show

test: setup
	$(BIN)/python -m pytest -q

clean-outputs:
	rm -rf data/poisoned data/truth data/isolation data/abl models metrics plots reports
