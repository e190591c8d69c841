# Three entry points: `make weights` (fetch the pre-trained weights), `make demo` (restore the
# bundled sample) and `make test`.
# All build a local virtual environment in .venv and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The converted SD 2.1-base that `make weights` writes; a hub id or any folder also works.
MODEL ?= checkpoints/sd21_base

.PHONY: demo test weights clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	# The CPU build of torch first, so the test extra never pulls a CUDA build.
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[test]"
	# LPIPS linear-layer weights only: its declared torchvision dependency is not wanted.
	$(PY) -m pip install -q --no-deps "lpips==0.1.4"
	touch $@

# `make weights` downloads, checks and converts every pre-trained file into checkpoints/
# (`python -m weights.fetch`; a second run checks and skips).
weights: $(VENV)/.installed
	$(PY) -m weights.fetch --output=checkpoints

# `make demo` restores the bundled low-light + noise sample (upzeroir_jax/assets/) into
# demo_output/ with MODEL (the converted SD 2.1-base in checkpoints/ by default). Without the
# weights it stops with one message naming the one command to run (`make weights`) and listing
# each missing file (exit code 2). `make demo MODEL=tiny` runs the whole pipeline offline on
# random weights into demo_output/smoke_test/ with the tiny model's own small defaults (see
# `upzeroir --help`): not a restoration.
DEMO_INPUT := upzeroir_jax/assets/kodim23_lowlight_noise.png

demo: $(VENV)/.installed
	$(VENV)/bin/upzeroir restore --input=$(DEMO_INPUT) --task=mixed --model=$(MODEL) --overwrite \
	  $(if $(filter tiny,$(MODEL)),--output=demo_output/smoke_test/,--output=demo_output/)

# Two workers, each test file in one of them (module-level compile caches stay shared).
test: $(VENV)/.installed
	$(PY) -m pytest -q -p no:cacheprovider -n 2 --dist loadfile

clean:
	rm -rf $(VENV) demo_output
