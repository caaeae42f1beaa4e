# seglab developer commands. Each target creates .venv on first use and installs what it needs.
#   make demo   train a U-Net on real cell images (HeLa) and write runs/demo/report.html
#   make test   install the dev extras (onnx, openvino, pt2e, peers, report, nifti, instance, timm) and run the tests and doctests
#   make test-slow   run the tests marked slow
#   make lint   ruff check + format check
#   make bench  run the benchmarks (ratios against peer libraries) into benchmarks/results/*.json
#               (BENCH="unet deeplab" for some entries)
#   make bench-docs   regenerate docs/benchmarks.md from benchmarks/results/*.json
#   make results          train every semantic family on hela and mni-brain (auto recipe, 5 min
#                         each, about 1 h 55 min), evaluate on test, rewrite docs/results.md
#   make results-targets  the named target runs (hela/mni-brain 15 and 60 min, bacteria, quokka,
#                         u2net 60 min; about 4 h 20 min). Both resume and skip finished runs;
#                         RESULTS_ARGS="--only hela-15m" picks entries.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
PYTEST_ARGS ?=
BENCH ?=
# the test targets require every optional peer: a missing one fails its cross-checks (named)
# instead of skipping them; a plain `pytest` skips them and says why
TEST_ENV := SEGLAB_REQUIRE_PEERS=1

.PHONY: demo test test-slow lint format bench bench-docs results results-targets clean install install-dev

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[report]"
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PIP) install -q -e ".[dev,onnx,openvino,pt2e,peers,report,nifti,instance,timm]"
	@touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/seglab demo --overwrite

test: $(VENV)/.installed-dev
	$(TEST_ENV) $(PY) -m pytest -n 2 -q $(PYTEST_ARGS)

test-slow: $(VENV)/.installed-dev
	$(TEST_ENV) $(PY) -m pytest -n 2 -q -m slow $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format src tests benchmarks
	$(VENV)/bin/ruff check --fix src tests benchmarks

bench: $(VENV)/.installed-dev
	$(PY) -m benchmarks $(BENCH) --json-dir benchmarks/results

bench-docs:
	$(PYTHON) -m benchmarks.render

RESULTS_ARGS ?=

results: $(VENV)/.installed-dev
	$(PY) -m seglab.engine.results leaderboard $(RESULTS_ARGS)

results-targets: $(VENV)/.installed-dev
	$(PY) -m seglab.engine.results targets $(RESULTS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache src/*.egg-info
