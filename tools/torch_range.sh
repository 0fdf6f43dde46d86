#!/usr/bin/env bash
# `make test-torch-range`: the default test suite on torch releases other than the lock's, each in a
# venv of its own under build/torch-range/ (kept between runs), with the kernels compiled in place
# for that Python (the extension's file name carries the Python version, so the main venv's build
# is untouched).
#
# Each argument is PYTHON:TORCH:KERNELS, e.g. 3.10:2.5.1:cpu (the oldest torch clora3d supports,
# on the oldest Python) or 3.12:2.11.0:cuda (the GPU machines' torch and Python; `cuda` compiles
# the CUDA kernels too, for sm_90, as `make gpu-check` does there). Packages are pinned by
# requirements/torch-range/pyPYTHON-torchTORCH.txt; torch comes from PyPI (about 2.5 GB per venv
# the first time, then pip's cache). Pinned and measured besides the default: 3.13:2.15.0:cuda (the
# newest torch when written, CUDA 13.2 headers built with nvcc 13.0), outside CI because the CI
# machine's pip configuration caps torch at 2.14.1: PIP_CONFIG_FILE=/dev/null lifts that.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {  # a working python3.X: on PATH (a pyenv shim may not run it), else pyenv's own
    local v=$1 p
    for p in "$(command -v "python$v" 2>/dev/null || true)" \
        $(ls -d "$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/"$v".*/bin/python 2>/dev/null | sort -V -r); do
        if [ -n "$p" ] && "$p" -c 'import venv' >/dev/null 2>&1; then
            echo "$p"
            return 0
        fi
    done
    echo "torch-range: no Python $v with venv found (install python$v, or drop it from TORCH_RANGE)" >&2
    return 1
}

status=0
summary=()
for spec in "$@"; do
    IFS=: read -r py torch kernels <<<"$spec"
    name="py$py-torch$torch"
    pins="requirements/torch-range/$name.txt"
    if [ ! -f "$pins" ]; then
        echo "torch-range: $pins is missing: pin the venv of $spec there first" >&2
        exit 2
    fi
    case "$kernels" in
        cpu) build_env=(CLORA3D_CPU_ONLY=1) ;;
        cuda) build_env=(FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0) ;;
        *) echo "torch-range: KERNELS must be cpu or cuda, got '$kernels' in $spec" >&2; exit 2 ;;
    esac
    venv="build/torch-range/$name"
    start=$(date +%s)
    if [ ! -x "$venv/bin/python" ]; then
        python=$(find_python "$py") || exit 2
        "$python" -m venv "$venv"
    fi
    if ! "$venv/bin/python" -m pip install -q --disable-pip-version-check -c "$pins" "torch==$torch" \
        numpy pyyaml h5py tqdm matplotlib plyfile pytest hypothesis ninja setuptools wheel; then
        echo "torch-range: pip could not install torch==$torch for Python $py (message above). If the" \
            "machine's pip configuration caps torch ('pip config list' shows a constraint; this" \
            "project's CI machine caps it at the release it keeps on disk), run the entry with" \
            "PIP_CONFIG_FILE=/dev/null (the pins file still fixes every version)." >&2
        exit 2
    fi
    log="build/torch-range/$name.log"
    echo "torch-range: $name: building the kernels ($kernels) and running the tests (log: $log)"
    if env PATH="$PWD/$venv/bin:$PATH" MAX_JOBS="${MAX_JOBS:-2}" "${build_env[@]}" \
        "$venv/bin/python" setup.py build_ext --inplace >"$log" 2>&1 &&
        "$venv/bin/python" -m pytest -q -p no:cacheprovider >>"$log" 2>&1; then
        result="passed"
    else
        result="FAILED"
        status=1
        # the failures' and errors' own sections first (tracebacks, captured output such as a hung
        # worker's stacks; at most 400 lines, no pipe that could end this script), then the
        # summary: the tail alone had hidden why a test failed
        awk '/^=+ (FAILURES|ERRORS) =+$/ { on = 1 } /^=+ short test summary info =+$/ { on = 0 } on && n++ < 400' "$log"
        tail -40 "$log"
    fi
    line=$(grep -E '^=*.*(passed|failed|error).* in [0-9.]+s' "$log" | tail -1 || true)
    summary+=("$name ($kernels kernels): $result: ${line:-no pytest summary, see $log} [$(($(date +%s) - start)) s]")
done
printf 'torch-range: %s\n' "${summary[@]}"
exit $status
