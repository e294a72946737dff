# Two entry points do all the set-up on a fresh machine:
#   make demo   - the Gradio demo on the bundled pipeline (http://127.0.0.1:7860; make demo PORT=7861 for another)
#   make test   - the test suite
# Everything lives in .venv; torch is pinned to the CPU build 2.13.0 only when the venv has no torch yet
# (an unpinned install would pull a multi-GB CUDA build).

VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
TORCH  ?= torch==2.13.0
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

MUSICNN := musicnn==0.1.0

.PHONY: demo test sysdeps sysdeps-test venv lint bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# One stamp per set of extras, redone when pyproject.toml changes.
$(VENV)/.stamp-%: pyproject.toml | $(PY)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "$(TORCH)"
	$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(VENV)/torch-constraint.txt
	$(PIP) install -q -c $(VENV)/torch-constraint.txt -e ".[$*]"
	$(PIP) uninstall -y -q torchaudio 2>/dev/null || true
	touch $@

# musicnn ships the offline FAD embedder's weights; its metadata pins numpy<1.17 and TensorFlow, which the
# PyTorch port needs neither of, so it is installed without dependencies.
$(VENV)/.stamp-musicnn: | $(PY)
	$(PIP) install -q --no-deps "$(MUSICNN)"
	touch $@

venv: $(VENV)/.stamp-dev $(VENV)/.stamp-musicnn

# System packages: MMA, FluidSynth, SoundFonts (make-dataset); idempotent.
sysdeps:
	$(SUDO) bash scripts/install_system_deps.sh

# ... plus Chromium for the browser tests and ffmpeg for the audio formats libsndfile cannot read.
sysdeps-test: sysdeps
	$(SUDO) bash scripts/install_system_deps.sh --test

demo: $(VENV)/.stamp-space
	$(PY) app.py $(if $(PORT),--port $(PORT))

# One pytest-xdist worker per core this process may use (nproc: `taskset -c 0 make test` runs one).
JOBS   ?= $(shell nproc)

test: sysdeps-test venv
	$(PY) -m pytest -q -n $(JOBS) --dist worksteal

bench: $(VENV)/.stamp-dev
	$(PY) benchmarks/benchmark_generation.py

lint: $(VENV)/.stamp-dev
	$(VENV)/bin/ruff check mslddm tests

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
