# seglab developer commands. Each target creates .venv on first use and installs what it needs.
#   make demo   train a U-Net on real cell images (HeLa) and write runs/demo/report.html
#   make test   install the dev, onnx, peers, report, nifti and timm extras and run the tests and doctests
#   make test-slow   run the tests marked slow
#   make lint   ruff check + format check
#   make bench  run the benchmarks (prints ratios against peer libraries)

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
PYTEST_ARGS ?=

.PHONY: demo test test-slow lint format bench clean install install-dev

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[report]"
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[dev,onnx,peers,report,nifti,timm]"
	@touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/seglab demo

test: $(VENV)/.installed-dev
	$(PY) -m pytest -n 2 -q $(PYTEST_ARGS)

test-slow: $(VENV)/.installed-dev
	$(PY) -m pytest -n 2 -q -m slow $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: $(VENV)/.installed-dev
	$(PY) -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
