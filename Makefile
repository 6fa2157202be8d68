# The two commands: `make demo` (the main job on the embedded default) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
REPOSITORY := build/model_repository
CHECKPOINTS := build/checkpoints
EXPORT_ARGS ?=  # --force: rebuild the checkpoints and re-export even when their inputs are unchanged
DEMO_ARGS ?=  # --all: Locate every sample sign, not a handful

.PHONY: install repository demo test lint samples bench clean

# pip byte-compiles on one core: compileall does it on every core, without the packages' own test
# suites (in a PYTHONDONTWRITEBYTECODE environment nothing is compiled at import).
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --no-compile -e '.[cpu,dev]'
	$(BIN)/python -m compileall -q -j 0 -x '/(testing/_internal|tests?)/' \
		$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')
	touch $@

install: $(INSTALLED)

# Each step reuses its output while a content hash of its inputs (checkpoint bytes, spec, navig
# version and sources, library versions) matches the one recorded beside it. The test session
# (tests/conftest.py) builds these same two folders by the same rule (navig.export.outputs), so
# `make demo` right after `make test` reuses its export.
repository: install
	$(BIN)/navig export demo-checkpoints --preset tiny --out $(CHECKPOINTS) $(EXPORT_ARGS)
	$(BIN)/navig export build $(CHECKPOINTS)/export.yaml --out $(REPOSITORY) $(EXPORT_ARGS)

demo: repository
	$(BIN)/navig demo --model-repository $(REPOSITORY) --samples samples $(DEMO_ARGS)

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

samples: install
	$(BIN)/navig export samples --out samples

clean:
	rm -rf build $(VENV)

# Every figure of the README's Performance section; summary.json checks the targets and each lever.
# Each step prints its wall time ([N s]).
bench: SHELL := /bin/bash
bench: export TIMEFORMAT := [%0R s]
bench: repository
	time $(BIN)/python -m benchmarks.encoders --preset small --repeats 2
	time $(BIN)/python -m benchmarks.vlm_batching --model-repository $(REPOSITORY)
	time $(BIN)/python -m benchmarks.caches --model-repository $(REPOSITORY)
	time $(BIN)/python -m benchmarks.ocr_once
	time $(BIN)/python -m benchmarks.detector_single_pass --preset small
	time $(BIN)/python -m benchmarks.shared_lora --preset small
	time $(BIN)/python -m benchmarks.versus_navig --preset small
	time $(BIN)/python -m benchmarks.vision_cache --preset small
	time $(BIN)/python -m benchmarks.summary --preset small
