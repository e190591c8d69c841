# Two entry points: `make demo` (restore the bundled sample) and `make test`.
# Both build a local virtual environment in .venv and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= stabilityai/stable-diffusion-2-1-base

.PHONY: demo test clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first, so the test extra never pulls a CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	# LPIPS linear-layer weights only: its declared torchvision dependency is not wanted.
	$(PY) -m pip install -q --no-deps "lpips==0.1.4"
	touch $@

test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) demo_output
