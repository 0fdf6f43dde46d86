# clora3d: the two set-up commands of the README.
#   make demo   create .venv, install clora3d + its kernels, run the whole job on synthetic data
#   make test   create .venv, install clora3d + its kernels + test deps, run the test suite
# Variables: PYTHON (interpreter that creates the venv), VENV, TORCH (pip spec for torch),
# FORCE_CUDA=1 (build the CUDA kernels even without a GPU, as CI does), DEMO_ARGS (e.g. --quick).

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1
EXTRAS ?= dev,io,log,bench
DEMO_ARGS ?=
VPY := $(VENV)/bin/python

# Without a GPU (and without FORCE_CUDA) build only the CPU kernels: nvcc is slow and the CUDA
# kernels could not run anyway. CI sets FORCE_CUDA=1 so every commit compiles the CUDA code.
ifeq ($(strip $(FORCE_CUDA)),)
  HAVE_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
  ifeq ($(HAVE_GPU),1)
    BUILD_ENV :=
  else
    BUILD_ENV := CLORA3D_CPU_ONLY=1
  endif
else
  BUILD_ENV := FORCE_CUDA=$(FORCE_CUDA)
endif

.PHONY: env install demo demo-quick test test-slow bench clean

$(VPY):
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --upgrade pip setuptools wheel

env: $(VPY)
	$(VPY) -c "import torch" 2>/dev/null || $(VPY) -m pip install "$(TORCH)"

install: env
	$(BUILD_ENV) MAX_JOBS=$${MAX_JOBS:-2} $(VPY) -m pip install --no-build-isolation -e ".[$(EXTRAS)]"
	$(VPY) tools/doctor.py

demo: install
	$(VPY) tools/demo.py $(DEMO_ARGS)

demo-quick: install
	$(VPY) tools/demo.py --quick

test: install
	$(VPY) -m pytest -q

test-slow: install
	$(VPY) -m pytest -q -m slow

bench: install
	$(VPY) tools/bench_ops.py
	$(VPY) tools/bench_model.py

clean:
	rm -rf build *.egg-info clora3d/_C*.so
