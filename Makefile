# clora3d: the two set-up commands of the README.
#   make demo   create .venv, install clora3d + its kernels (no test or benchmark packages), run the demo
#   make test   create .venv, install clora3d + its kernels + test packages, run the test suite
# Installs are reproducible: every third-party package comes from a wheel (--only-binary :all:,
# nothing third-party is compiled) at the version pinned in $(LOCK), which `make lock` generates.
# Variables: PYTHON (interpreter that creates the venv), VENV, TORCH (pip spec for torch; a torch other
# than the locked one keeps every other pin), CONSTRAINTS (default: the lock; `make test CONSTRAINTS=`
# installs the newest releases allowed by pyproject.toml instead), FORCE_CUDA=1 (build the CUDA
# kernels even without a GPU, as CI does), DEMO_ARGS (e.g. --quick).

PYTHON ?= python3
VENV ?= .venv
LOCKED_TORCH := torch==2.14.1
TORCH ?= $(LOCKED_TORCH)
LOCK := requirements/lock-linux-x86_64.txt
CONSTRAINTS ?= $(LOCK)
UV_VERSION := 0.13.9
DEMO_ARGS ?=
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip install --only-binary :all: --progress-bar off
NO_TORCH_PINS := $(VENV)/constraints-without-torch.txt
BENCH_PEERS := fpsample pykdtree faiss-cpu scipy open3d

ifeq ($(strip $(CONSTRAINTS)),)
  PIN :=
else ifeq ($(strip $(TORCH)),$(LOCKED_TORCH))
  PIN := -c $(CONSTRAINTS)
else
  PIN := -c $(NO_TORCH_PINS)
endif

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
BUILD := $(BUILD_ENV) MAX_JOBS=$${MAX_JOBS:-2}

.PHONY: env install install-demo demo demo-quick test test-bare test-bare-run test-slow test-torch-range bench lint lint-run lock clean

$(VPY):
	$(PYTHON) -m venv $(VENV)

env: $(VPY)
	@if [ -n "$(strip $(CONSTRAINTS))" ]; then grep -v -E '^(torch|triton|nvidia-|cuda-)' "$(CONSTRAINTS)" > $(NO_TORCH_PINS); fi
	$(PIP) $(PIN) pip setuptools wheel
	$(PIP) $(PIN) "$(TORCH)" "numpy>=1.23,<3"  # numpy with torch: the kernel build imports torch, which warns without it

# clora3d + its kernels, nothing for tests or benchmarks (what `make demo` needs)
install-demo: env
	$(BUILD) $(PIP) $(PIN) --no-build-isolation -e .
	$(VPY) tools/doctor.py

# + pytest, hypothesis, tensorboard (what `make test` needs)
install: env
	$(BUILD) $(PIP) $(PIN) --no-build-isolation -e ".[dev,log]"
	$(VPY) tools/doctor.py

demo: install-demo
	$(VPY) tools/demo.py $(DEMO_ARGS)

demo-quick: install-demo
	$(VPY) tools/demo.py --quick

test: install
	$(VPY) -m pytest -q

# The tests that touch files, tools and the demo, on a machine where the optional packages are
# unusable: open3d installed but unloadable (no libusb) and tensorboard missing (tests/shims).
BARE_TESTS := tests/test_data_io.py tests/test_tools.py tests/test_demo.py tests/test_trainer.py tests/test_doctor.py
test-bare: install
	$(MAKE) test-bare-run
# the same without the install step (CI runs it right after `make test`)
test-bare-run:
	PYTHONPATH=tests/shims/broken_optional $(VPY) -m pytest -q $(BARE_TESTS)

test-slow: install
	$(VPY) -m pytest -q -m slow

# The default suite on the oldest supported torch (clora3d/_build_env.py TORCH_FLOOR) with the oldest
# Python, and on the GPU machines' torch and Python (CUDA kernels compiled), each in its own venv
# (tools/torch_range.sh)
TORCH_RANGE ?= 3.10:2.5.1:cpu 3.12:2.11.0:cuda
test-torch-range:
	bash tools/torch_range.sh $(TORCH_RANGE)

# Benchmark peers are installed here only, one by one, from wheels; one that cannot be installed on
# this platform is skipped and named (the benchmark then runs without it).
bench: install
	@for p in $(BENCH_PEERS); do \
	  if $(PIP) $(PIN) -q $$p >/dev/null 2>&1; then echo "bench: peer $$p installed"; \
	  else echo "bench: peer $$p SKIPPED: no wheel of it installs here (pip install --only-binary :all: $$p failed)"; fi; \
	done
	$(VPY) benchmarks/bench_ops.py
	$(VPY) benchmarks/bench_model.py

# On a machine with a GPU and no internet: build the kernels for this GPU only, run every CUDA test
# (none may skip), the direct bad calls and the torch.compile tests, the kernel and model benchmarks
# on CUDA, and print one report. Uses the interpreter that already has torch (GPU_PYTHON), no venv,
# no pip. GPU_CHECK_ARGS, e.g. --compile (also time torch.compile) or --skip-build.
GPU_PYTHON ?= python3
GPU_CHECK_ARGS ?=
.PHONY: gpu-check
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# Lint: ruff (rules and format settings in pyproject.toml) and clang-format (.clang-format) over csrc/.
# Checks only; nothing is rewritten (`ruff format .` and `clang-format -i FILES` apply the formats).
# Needs no torch: installs just the two tools, at the versions pinned in $(LOCK) (also in the dev extra).
CSRC_FILES = $(shell find csrc -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' | sort)
lint: $(VPY)
	$(PIP) -q -c $(LOCK) ruff clang-format
	$(MAKE) lint-run
# the same without the install step
lint-run:
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/clang-format --dry-run -Werror $(CSRC_FILES)

# Regenerate the lock file from pyproject.toml (extras dev + log) and requirements/lock.in.
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install --only-binary :all: -q uv==$(UV_VERSION)
	.venv-lock/bin/uv pip compile pyproject.toml requirements/lock.in --extra dev --extra log \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --annotation-style line \
	  --custom-compile-command "make lock" -o $(LOCK)

clean:
	rm -rf build *.egg-info clora3d/_C*.so

# Mutation testing of the core modules (not part of `make test`; slow): mutmut pinned in
# requirements/mutate.txt, one scratch copy per group, report in docs/mutation.md.
# MUTATE_ARGS, e.g. --groups evaluate ops_checks --max-children 2.
.PHONY: mutate
mutate: install
	$(VPY) -m pip install -r requirements/mutate.txt
	$(VPY) tools/mutate.py $(MUTATE_ARGS)
