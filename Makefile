# The two commands of the README: `make demo` and `make test`.
# Both create (or reuse) a local virtual environment in .venv, install what is
# missing, and run headless under Xvfb when there is no display.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# This exact version installs as a CPU build on our machines; any other version
# (or a bare `torch`) pulls several GB of CUDA packages. Installed first, so the
# package's `torch>=2.2` is already satisfied.
TORCH_VERSION := 2.13.0
STAMP := $(VENV)/.installed-$(TORCH_VERSION)
XVFB_RUN := xvfb-run -a -s "-screen 0 1600x1000x24"
HEADLESS = $(if $(DISPLAY),,$(XVFB_RUN))

.PHONY: demo test venv system-deps lint benchmarks clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "torch==$(TORCH_VERSION)"
	$(PY) -m pip install --quiet -e ".[testing]"
	touch $(STAMP)

venv: $(STAMP)

system-deps:
	@bash scripts/install-system-deps.sh

test: venv system-deps
	$(HEADLESS) $(PY) -m pytest

demo: venv system-deps
	@if [ -n "$$DISPLAY" ]; then \
		$(PY) scripts/demo.py; \
	else \
		$(XVFB_RUN) $(PY) scripts/demo.py --headless --output demo-output; \
	fi

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

benchmarks: venv
	$(PY) benchmarks/weight_map.py

clean:
	rm -rf $(VENV) demo-output .pytest_cache
