"""What the compiler gives the CUDA kernels (benchmarks/cuda_resources.py): registers, local memory, occupancy.

Needs no GPU: the kernels' ATen-free headers are compiled for sm_90 with nvcc (skipped where nvcc is
not installed). The list of kernels to compile is checked against the .cu files' launches and
dispatches, so that a new kernel or dtype cannot escape the check."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import cuda_resources as cr  # noqa: E402

RECORD = json.loads((REPO / cr.RECORD_JSON).read_text())

_LAUNCH = re.compile(r"(\w+_kernel)\s*<([^;{}]*?)>\s*<<<")
_DISPATCH = re.compile(r"AT_DISPATCH_(\w+)\(([^\[]*?)\w+\.scalar_type\(\)", re.S)
_K_TYPES = {"at::kHalf": "c10::Half", "at::kBFloat16": "c10::BFloat16", "at::kFloat": "float", "at::kDouble": "double"}


def _dispatched_types(macro: str, args: str) -> tuple[str, ...]:
    """The dtypes an AT_DISPATCH macro runs its lambda with (the macros the .cu files may use)."""
    extra = [_K_TYPES[k] for k in re.findall(r"at::k\w+", args)]
    if macro == "FLOATING_TYPES" and not extra:
        return cr.FLOATS
    if macro in ("FLOATING_TYPES_AND", "FLOATING_TYPES_AND2", "FLOATING_TYPES_AND3"):
        n = int(macro[-1]) if macro[-1].isdigit() else 1
        assert len(extra) == n, (macro, args)
        return cr.FLOATS + tuple(extra)
    if macro == "FLOATING_TYPES_AND_HALF" and not extra:
        return cr.FLOATS + ("c10::Half",)
    raise AssertionError(f"AT_DISPATCH_{macro}({args}...): teach tests/test_cuda_resources.py its dtypes")


_CONSTEXPR = re.compile(r"constexpr int (\w+) = (\d+);")


def _launched_instances() -> set[str]:
    """Every kernel instantiation the .cu files launch, read from their source: the dtypes of the
    enclosing AT_DISPATCH macro, the index types of CLORA3D_DISPATCH_INDEX, the headers' constants."""
    constants = {}
    for h in cr.CUDA_DIR.glob("*.cuh"):
        constants.update(_CONSTEXPR.findall(h.read_text()))
    out = set()
    for cu in sorted(cr.CUDA_DIR.glob("*.cu")):
        text = cu.read_text()
        dispatches = [(m.start(), _dispatched_types(m.group(1), m.group(2))) for m in _DISPATCH.finditer(text)]
        assert text.count("AT_DISPATCH_") == len(dispatches), f"{cu.name}: an AT_DISPATCH macro was not parsed"
        for m in _LAUNCH.finditer(text):
            before = [types for pos, types in dispatches if pos < m.start()]
            assert before, f"{cu.name}: {m.group(1)} is launched outside an AT_DISPATCH macro"
            types = before[-1]
            args = [a.strip() for a in re.split(r",(?![^<]*>)", m.group(2))]
            for t in types:
                for index_t in cr.INDEX_TYPES if "index_t" in args else (None,):
                    concrete = []
                    for a in args:
                        if a == "scalar_t":
                            concrete.append(t)
                        elif a in ("acc_t", "at::opmath_type<scalar_t>"):
                            concrete.append("float" if t.startswith("c10::") else t)
                        elif a == "index_t":
                            concrete.append(index_t)
                        else:
                            concrete.append(constants.get(a, a))
                    out.add(f"{m.group(1)}<{', '.join(concrete)}>")
    return out


def test_every_launched_kernel_instantiation_is_compiled_by_the_probe():
    probed = {cr.instance_label(k, args) for k in cr.KERNELS for args in k.instances}
    launched = _launched_instances()
    assert any("c10::BFloat16" in label for label in launched)  # the half-type dispatches were read
    assert len(launched) >= 40  # the parser found the launches
    assert probed == launched, (sorted(probed - launched), sorted(launched - probed))


def test_every_kernel_in_the_headers_is_launched():
    defined = set()
    for h in cr.HEADERS:
        defined.update(
            re.findall(
                r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?(\w+)\s*\(", (cr.CUDA_DIR / h).read_text()
            )
        )
    assert defined == {k.name for k in cr.KERNELS}
    assert {p.name for p in cr.CUDA_DIR.glob("*_kernels.cuh")} == set(cr.HEADERS)


PTXAS_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z1kPf' for 'sm_90'
ptxas info    : Function properties for _Z1kPf
    136 bytes stack frame, 224 bytes spill stores, 200 bytes spill loads
ptxas info    : Used 64 registers, used 1 barriers, 136 bytes cumulative stack size, 2304 bytes smem, 380 bytes cmem[0]
ptxas info    : Compiling entry function '_Z1gPi' for 'sm_90'
ptxas info    : Function properties for _Z1gPi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 24 registers, used 0 barriers, 380 bytes cmem[0]
ptxas info    : Function properties for _Z6helperf
    64 bytes stack frame, 8 bytes spill stores, 8 bytes spill loads
"""


def test_ptxas_report_is_parsed_per_kernel():
    got = cr.parse_ptxas(PTXAS_SAMPLE)
    assert got == {
        "_Z1kPf": {"sm": "90", "registers": 64, "stack": 136, "spill_stores": 224, "spill_loads": 200, "smem": 2304},
        "_Z1gPi": {"sm": "90", "registers": 24, "stack": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0},
    }
    # a non-inlined device function's block (after _Z1gPi's) is not credited to the kernel
    truncated = PTXAS_SAMPLE.rsplit("ptxas info    : Used", 1)[0]
    with pytest.raises(RuntimeError, match="_Z1gPi"):
        cr.parse_ptxas(truncated)


@pytest.mark.parametrize(
    "registers, smem, threads, expected",
    [
        # values of CUDA's occupancy calculator for compute capability 9.0
        (42, 1280, 1024, 0.5),  # 6 x 256 registers a warp: one block of 32 warps
        (32, 0, 256, 1.0),  # 8 blocks of 8 warps
        (64, 0, 256, 0.5),  # 2048 registers a warp: 4 blocks
        (40, 3072, 256, 0.75),  # 1280 a warp: 6 blocks
        (32, 49152, 256, 0.5),  # shared memory: 233472 // (49152 + 1024) = 4 blocks
        (16, 0, 32, 0.5),  # the 32-block limit
        (33, 0, 64, 0.75),  # registers per quarter SM: 12 warps of 1280 registers each, 24 blocks of 2 warps
    ],
)
def test_occupancy_follows_the_calculator(registers, smem, threads, expected):
    assert cr.occupancy(registers, smem, threads, "90") == expected


def test_record_is_complete_and_explains_its_local_memory():
    labels = [r["kernel"] for r in RECORD["rows"]]
    assert labels == [cr.instance_label(k, a) for k in cr.KERNELS for a in k.instances]
    assert cr.local_memory_rows(RECORD["rows"]) == []
    recorded_local = {r["kernel"] for r in RECORD["rows"] if cr.uses_local_memory(r)}
    assert recorded_local == set(cr.EXPECTED_LOCAL_MEMORY)
    # the recipe paths (float32 kNN k <= 32, FPS N <= 8192, Chamfer, three_nn, gather, interpolation)
    floats = [r for r in RECORD["rows"] if "<float" in r["kernel"] and not r["kernel"].startswith("knn_local")]
    assert floats and not any(cr.uses_local_memory(r) for r in floats)


@pytest.fixture(scope="module")
def measured():
    if cr.find_nvcc() is None or shutil.which("c++filt") is None:
        pytest.skip("nvcc (CUDA toolkit) or c++filt not installed: the kernels cannot be compiled here")
    return cr.measure("90")


def test_compiled_kernels_have_no_unexplained_local_memory(measured):
    unexplained = cr.local_memory_rows(measured["rows"])
    assert unexplained == [], (
        f"more stack frame or spills than explained: {unexplained}; see benchmarks/cuda_resources.py"
    )
    stale = set(cr.EXPECTED_LOCAL_MEMORY) - {r["kernel"] for r in measured["rows"] if cr.uses_local_memory(r)}
    assert not stale, f"{sorted(stale)} no longer use local memory: remove them from EXPECTED_LOCAL_MEMORY"


def test_compiled_kernels_match_the_record(measured):
    if measured["nvcc"] != RECORD["nvcc"]:
        pytest.skip(f"the record is of nvcc {RECORD['nvcc']}, this is {measured['nvcc']}")
    # the language standard follows torch's build (c++17 in older torch) and does not change the device code
    assert [f for f in measured["flags"] if not f.startswith("-std=")] == [
        f for f in RECORD["flags"] if not f.startswith("-std=")
    ]
    recorded = {r["kernel"]: r for r in RECORD["rows"]}
    changed = [(recorded.get(m["kernel"]), m) for m in measured["rows"] if recorded.get(m["kernel"]) != m]
    assert not changed and len(recorded) == len(measured["rows"]), f"re-record with `{cr.RECORD_COMMAND}`: {changed}"


def test_known_local_memory_is_bounded_and_any_other_is_flagged():
    rows = {r["kernel"]: dict(r) for r in RECORD["rows"]}
    grown = dict(rows["knn_warp_kernel<double>"], stack=rows["knn_warp_kernel<double>"]["stack"] + 256)
    spilled = dict(rows["knn_warp_kernel<float>"], spill_stores=4)
    assert cr.local_memory_rows([grown, spilled, rows["fps_register_kernel<double, 8>"]]) == [grown, spilled]
