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

.PHONY: demo test venv system-deps lint bench bench-full clean

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

# The quick benchmark run (about 20 minutes on 2 CPU cores); `bench-full` runs the commands
# recorded in docs/benchmarks.md, 3 seeds per training row (about 8 hours). Both read
# ../shared/data.
bench: venv system-deps
	$(PY) -m pip install --quiet -e ".[benchmarks,distributed]"
	$(PY) benchmarks/weight_map.py --repeats 2
	$(PY) benchmarks/inference.py --sizes 1024 --repeats 1
	$(PY) benchmarks/cpu_options.py --repeats 3
	$(PY) benchmarks/inference_memory.py --size 4096
	$(PY) benchmarks/dask_cluster.py --size 4096 --workers 4
	$(PY) benchmarks/data_pipeline.py --steps 50 --repeats 1
	$(PY) benchmarks/compile.py --steps 10 --repeats 1
	$(PY) benchmarks/training.py --minutes 1
	$(PY) benchmarks/ablation.py --minutes 1
	$(PY) benchmarks/isbi.py --minutes 1
	$(PY) benchmarks/dim.py --minutes 1 --repeats 1
	$(PY) benchmarks/dim_fields.py --minutes 1 --repeats 1 --before-repeats 0
	$(PY) benchmarks/inference_precision.py --steps 30 --repeats 1 --size 1024
	$(PY) benchmarks/dsb_stage1.py --minutes 1 --train-images 40 --no-tta
	$(PY) benchmarks/pretrained.py --minutes 1
	$(PY) benchmarks/fine_tuning.py --minutes 0.5 --repeats 1 --rates 1e-3
	$(PY) benchmarks/correction_loop.py --minutes 0.5 --again 0.25 --repeats 1
	$(HEADLESS) $(PY) benchmarks/widget_calibration.py --minutes 0.5

bench-full: venv system-deps
	$(PY) -m pip install --quiet -e ".[benchmarks,distributed]"
	$(PY) benchmarks/weight_map.py --repeats 5
	$(PY) benchmarks/inference.py --repeats 3
	$(PY) benchmarks/cpu_options.py --repeats 5
	$(PY) benchmarks/inference_memory.py --size 8192
	$(PY) benchmarks/dask_cluster.py --size 8192 --workers 4 --repeats 3
	$(PY) benchmarks/data_pipeline.py --steps 150 --repeats 3 --precision fp32 bf16
	$(PY) benchmarks/compile.py --steps 60 --repeats 3
	$(PY) benchmarks/training.py --minutes 1 2 5 --repeats 3 --plot docs/images/training-time-to-accuracy.png
	$(PY) benchmarks/ablation.py --minutes 5 --repeats 3
	$(PY) benchmarks/isbi.py --minutes 5 20 --repeats 3
	$(PY) benchmarks/training.py --minutes 5 --repeats 3 --head three-class distance paper
	$(PY) benchmarks/dim.py --minutes 5 --repeats 3 --before-repeats 1
	$(PY) benchmarks/dim_fields.py --minutes 5 --repeats 3 --before-repeats 1
	$(PY) benchmarks/inference_precision.py --steps 300 --repeats 3
	$(PY) benchmarks/dsb_stage1.py --minutes 20 --repeats 3
	$(HEADLESS) $(PY) benchmarks/widget_calibration.py --minutes 2
	$(PY) benchmarks/correction_loop.py --repeats 3
	$(PY) benchmarks/correction_loop.py --repeats 3 --again-learning-rate 1e-4
	$(PY) benchmarks/pretrained.py --minutes 1 2 5 --repeats 3
	$(PY) benchmarks/fine_tuning.py --minutes 2 --repeats 3 --rates 1e-3 3e-4 1e-4
	$(PY) benchmarks/fine_tuning.py --minutes 5 --repeats 3 --rates 1e-3 --problems dim

clean:
	rm -rf $(VENV) demo-output .pytest_cache
