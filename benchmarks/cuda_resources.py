"""What the compiler gives each CUDA kernel: registers, spills, stack, shared memory, occupancy. No GPU needed.

``python benchmarks/cuda_resources.py [--arch 90] [--json F]``

The device code of clora3d's kernels lives in ATen-free headers (``csrc/cuda/*_kernels.cuh``), so
every kernel the ``.cu`` files launch can be compiled on its own in a few seconds: this script writes
one translation unit that takes the address of each instantiation the ``.cu`` files dispatch (same
template arguments, dtypes and index types; ``KERNELS``), compiles it with nvcc for one architecture
with the flags of the extension's build (``-O3`` and torch's ``COMMON_NVCC_FLAGS``) and reads
ptxas's resource report (``--resource-usage``).

That is the part of a kernel's speed that can be read without running it: a kernel that spills
registers or keeps an array in local memory ("stack frame") reads and writes device memory where the
design meant registers, and registers or shared memory per thread bound how many warps an SM keeps
in flight ("occupancy" here: resident warps per SM at the launch's block size, out of the SM's
maximum, from the architecture's limits as CUDA's cuda_occupancy.h applies them). The local
memory that is known is explained and bounded in ``EXPECTED_LOCAL_MEMORY``;
``tests/test_cuda_resources.py`` fails when a kernel gets more stack frame or spills than that allows
(any, for the others), and when the record (``docs/bench/cuda_resources.json``,
rendered into docs/ops.md) no longer matches what the same nvcc version compiles.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CUDA_DIR = ROOT / "csrc" / "cuda"
RECORD_JSON = "docs/bench/cuda_resources.json"
RECORD_COMMAND = f"python benchmarks/cuda_resources.py --arch 90 --json {RECORD_JSON}"
HEADERS = ("fps_kernels.cuh", "knn_kernels.cuh", "nearest_kernels.cuh", "gather_kernels.cuh")

FLOATS = ("float", "double")
ALL_TYPES = ("float", "double", "c10::Half", "c10::BFloat16")
INDEX_TYPES = ("int32_t", "int64_t")


def _opmath(t: str) -> str:
    """at::opmath_type: half types compute and accumulate in float."""
    return "float" if t.startswith("c10::") else t


@dataclass(frozen=True)
class Kernel:
    """One kernel template: its namespace, the template-argument lists the .cu files instantiate, and
    the block size of its launch (``threads``; for FPS the largest, fps_plan's choice depends on N)."""

    name: str
    namespace: str
    instances: tuple[tuple[str, ...], ...]
    threads: int


def _per_type(types, extra=()):
    return tuple((t, *extra) for t in types)


#: every kernel the .cu files launch, with the template arguments of their dispatches
KERNELS = (
    Kernel("fps_register_kernel", "fps_detail", _per_type(FLOATS, ("4",)) + _per_type(FLOATS, ("8",)), 1024),
    Kernel("fps_generic_kernel", "fps_detail", _per_type(FLOATS), 1024),
    Kernel("knn_warp_kernel", "knn_detail", _per_type(FLOATS), 256),
    Kernel("knn_local_kernel", "knn_detail", _per_type(FLOATS, ("128",)), 256),
    Kernel("pairwise_sqdist_kernel", "knn_detail", _per_type(FLOATS), 256),
    Kernel("chamfer_forward_kernel", "nearest_detail", _per_type(FLOATS), 256),
    Kernel("chamfer_backward_kernel", "nearest_detail", _per_type(FLOATS), 256),
    Kernel("three_nn_kernel", "nearest_detail", _per_type(FLOATS), 256),
    Kernel("gather_forward_kernel", "gather_detail", tuple((t, i) for t in ALL_TYPES for i in INDEX_TYPES), 256),
    *(
        Kernel(name, "gather_detail", tuple((t, _opmath(t), i) for t in ALL_TYPES for i in INDEX_TYPES), 256)
        for name in ("gather_backward_kernel", "three_interpolate_forward_kernel", "three_interpolate_backward_kernel")
    ),
)

#: local memory (stack frame, spill stores, spill loads; bytes) that is known, as upper bounds, and why
#: (what the SASS shows, read with cuobjdump -sass, nvcc 13.0); every other kernel must have none
_KNN_LIST = "its sorted list of 32 < k <= 128 neighbours is a thread-local array, by design"
EXPECTED_LOCAL_MEMORY = {
    "knn_local_kernel<float, 128>": (
        (1040, 4, 4),
        f"{_KNN_LIST}; the 4 spilled bytes are stored before the reference loop and loaded after it",
    ),
    "knn_local_kernel<double, 128>": ((1536, 0, 0), _KNN_LIST),
    "knn_warp_kernel<double>": (
        (16, 12, 12),
        "12 bytes stored before the reference loop and loaded after it (the call of the finite-coordinate "
        "device assert needs the registers); the loop itself has no local-memory access",
    ),
    "fps_register_kernel<double, 8>": (
        (136, 224, 200),
        "8 points of 4 doubles per thread are 64 registers, the whole budget at 1024 threads: it spills "
        "in the step loop (float64 FPS with 4096 < N <= 8192 only)",
    ),
}

#: per-SM limits of the architectures this script knows (CUDA occupancy calculator's table)
SM_LIMITS = {
    "80": {"regs": 65536, "warps": 64, "blocks": 32, "smem": 167936, "reserved_smem": 1024},
    "86": {"regs": 65536, "warps": 48, "blocks": 16, "smem": 102400, "reserved_smem": 1024},
    "89": {"regs": 65536, "warps": 48, "blocks": 24, "smem": 102400, "reserved_smem": 1024},
    "90": {"regs": 65536, "warps": 64, "blocks": 32, "smem": 233472, "reserved_smem": 1024},
}


def instance_label(kernel: Kernel, args: tuple[str, ...]) -> str:
    return f"{kernel.name}<{', '.join(args)}>"


def probe_source(kernels=KERNELS) -> str:
    """One translation unit that instantiates every kernel of ``kernels`` (by taking its address)."""
    lines = [
        "// generated by benchmarks/cuda_resources.py: every kernel instantiation the .cu files launch",
        "#include <cstdint>",
        "#include <c10/macros/Macros.h>",
        "#include <c10/util/BFloat16.h>",
        "#include <c10/util/Half.h>",
        "// the gather family accumulates in float / double only (half types in float), so CUDA's atomicAdd",
        "// compiles what common.cuh's gpuAtomicAddNoReturn does for these types",
        "#define CLORA3D_ATOMIC_ADD(ptr, value) atomicAdd((ptr), (value))",
        *(f'#include "{h}"' for h in HEADERS),
        "",
        "void* const clora3d_probe_kernels[] = {",
    ]
    for k in kernels:
        for args in k.instances:
            lines.append(f"    reinterpret_cast<void*>(&clora3d::{k.namespace}::{k.name}<{', '.join(args)}>),")
    lines.append("};")
    return "\n".join(lines) + "\n"


def find_nvcc() -> str | None:
    """nvcc of the toolkit the extension's build would use (clora3d._build_env), else the PATH's."""
    import importlib.util
    import os

    # by its path, as setup.py does: importing the clora3d package would load the compiled extension
    spec = importlib.util.spec_from_file_location("clora3d_build_env", ROOT / "clora3d" / "_build_env.py")
    build_env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_env)
    home = build_env.find_cuda_home(os.environ)
    nvcc = Path(home) / "bin" / build_env._nvcc_name() if home else None
    return str(nvcc) if nvcc is not None and nvcc.exists() else shutil.which("nvcc")


def nvcc_release(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60)
    m = re.search(r"release [\d.]+, V([\d.]+)", out.stdout)
    if not m:
        raise RuntimeError(f"cuda_resources: cannot read the version of {nvcc}: {out.stdout.strip()!r}")
    return m.group(1)


def _cpp_extension():
    import logging

    # importing cpp_extension warns when no CUDA runtime is found, which is the normal case here
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from torch.utils import cpp_extension

    return cpp_extension


def compile_flags(arch: str) -> list[str]:
    ext = _cpp_extension()
    return [
        f"-gencode=arch=compute_{arch},code=sm_{arch}",
        f"-std={_torch_cxx_standard()}",
        "-O3",
        *ext.COMMON_NVCC_FLAGS,
        f"-I{CUDA_DIR}",
        *(f"-I{p}" for p in ext.include_paths()),
        "--resource-usage",
    ]


def _torch_cxx_standard() -> str:
    """The C++ standard torch's extension build passes to nvcc (c++20 in recent torch, c++17 in older
    ones), read from torch's own build code; c++17 when it cannot be read. The device code does not
    depend on it: both give the same resources (checked with nvcc 13.0)."""
    import inspect

    try:
        found = re.findall(r"c\+\+(\d\d)", inspect.getsource(_cpp_extension().BuildExtension.build_extensions))
    except (OSError, TypeError):
        found = []
    return f"c++{max(found)}" if found else "c++17"


_ENTRY = re.compile(r"Compiling entry function '([^']+)' for 'sm_(\d+)'")
_FUNC = re.compile(r"Function properties for (\S+)")
_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def parse_ptxas(text: str) -> dict[str, dict]:
    """ptxas's ``--resource-usage`` report -> {mangled name: registers, stack, spill stores/loads, smem}."""
    out: dict[str, dict] = {}
    current = None
    described = None  # the function the "Function properties" block is about: a kernel or a device function
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = out.setdefault(m.group(1), {"sm": m.group(2)})
            described = None
            continue
        if current is None:
            continue
        m = _FUNC.search(line)
        if m:
            described = m.group(1)
            continue
        m = _PROPS.search(line)
        if m and described is not None and out.get(described) is current:
            current.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = _USED.search(line)
        if m:
            current["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            current["smem"] = int(s.group(1)) if s else 0
    missing = [name for name, r in out.items() if "registers" not in r or "stack" not in r]
    if missing:
        raise RuntimeError(f"cuda_resources: ptxas reported no resources for {missing}")
    return out


def demangle(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if cxxfilt is None:
        raise RuntimeError("cuda_resources: c++filt (binutils) is needed to read ptxas's kernel names")
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True, check=True)
    return dict(zip(names, out.stdout.splitlines()))


def _signature_key(demangled: str) -> str:
    """'void clora3d::knn_detail::knn_warp_kernel<float>(...)' -> 'knn_warp_kernel<float>' (spaces normalised)."""
    head = demangled.split("(")[0].removeprefix("void ")
    head = re.sub(r"^clora3d::\w+::", "", head)
    head = re.sub(r"\b(?:long long|long)\b", "int64_t", head)
    return re.sub(r"\s+", "", head)


def _label_key(label: str) -> str:
    return re.sub(r"\s+", "", label).replace("int32_t", "int")


def occupancy(registers: int, smem: int, threads: int, arch: str) -> float:
    """Resident warps per SM / the SM's maximum, for blocks of ``threads`` (static shared memory
    ``smem``). As CUDA's cuda_occupancy.h: registers allocated in units of 256 per warp, from each of
    the SM's four register-file quarters (so whole warps per quarter), 1 KiB of shared memory reserved
    per block."""
    lim = SM_LIMITS[arch]
    warps = -(-threads // 32)
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    by_regs = (lim["regs"] // 4 // regs_per_warp) * 4 // warps
    by_warps = lim["warps"] // warps
    by_smem = lim["smem"] // (smem + lim["reserved_smem"]) if smem else lim["blocks"]
    blocks = min(lim["blocks"], by_regs, by_warps, by_smem)
    return blocks * warps / lim["warps"]


def measure(arch: str = "90", nvcc: str | None = None) -> dict:
    """Compile the probe for sm_``arch`` and return the record: nvcc version, flags, one row per kernel."""
    if arch not in SM_LIMITS:
        raise ValueError(f"cuda_resources: --arch {arch} unknown; known: {', '.join(SM_LIMITS)}")
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise RuntimeError("cuda_resources: nvcc not found (set CUDA_HOME or put the toolkit's nvcc on PATH)")
    flags = compile_flags(arch)
    with tempfile.TemporaryDirectory(prefix="clora3d-cuda-resources-") as tmp:
        src = Path(tmp) / "probe.cu"
        src.write_text(probe_source())
        proc = subprocess.run(
            [nvcc, *flags, "-c", str(src), "-o", str(Path(tmp) / "probe.o")],
            capture_output=True,
            text=True,
            timeout=900,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"cuda_resources: nvcc failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    resources = parse_ptxas(proc.stdout + proc.stderr)
    names = demangle(list(resources))
    by_key = {_signature_key(names[m]): r for m, r in resources.items()}
    rows = []
    for k in KERNELS:
        for args in k.instances:
            label = instance_label(k, args)
            r = by_key.get(_label_key(label))
            if r is None:
                raise RuntimeError(f"cuda_resources: ptxas reported nothing for {label}; it reported {sorted(by_key)}")
            rows.append(
                {
                    "kernel": label,
                    "threads": k.threads,
                    "registers": r["registers"],
                    "stack": r["stack"],
                    "spill_stores": r["spill_stores"],
                    "spill_loads": r["spill_loads"],
                    "smem": r["smem"],
                    "occupancy": round(occupancy(r["registers"], r["smem"], k.threads, arch), 4),
                }
            )
    if len(by_key) != len(rows):
        raise RuntimeError(f"cuda_resources: ptxas reported {len(by_key)} kernels for {len(rows)} instantiations")
    return {"nvcc": nvcc_release(nvcc), "arch": f"sm_{arch}", "flags": flags_for_record(flags), "rows": rows}


def flags_for_record(flags: list[str]) -> list[str]:
    """The flags without the machine's include paths."""
    return [f for f in flags if not f.startswith("-I")]


LOCAL_FIELDS = ("stack", "spill_stores", "spill_loads")


def local_memory_rows(rows: list[dict]) -> list[dict]:
    """Rows with more stack frame or spills than EXPECTED_LOCAL_MEMORY allows them (none when unlisted)."""
    bad = []
    for r in rows:
        bounds = EXPECTED_LOCAL_MEMORY.get(r["kernel"], ((0, 0, 0), ""))[0]
        if any(r[f] > b for f, b in zip(LOCAL_FIELDS, bounds)):
            bad.append(r)
    return bad


def uses_local_memory(row: dict) -> bool:
    return bool(row["stack"] or row["spill_stores"] or row["spill_loads"])


def table(record: dict) -> str:
    lines = [
        "| kernel | threads / block | registers | stack frame (B) | spill stores / loads (B) | static smem (B) | occupancy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        lines.append(
            f"| `{r['kernel']}` | {r['threads']} | {r['registers']} | {r['stack']} | "
            f"{r['spill_stores']} / {r['spill_loads']} | {r['smem']} | {r['occupancy']:.0%} |"
        )
    return "\n".join(lines)


def docs_block(record: dict, json_path: str = RECORD_JSON) -> str:
    """docs/ops.md's table of the record (``record``: what ``--json`` writes)."""
    notes = "\n".join(f"- `{label}`: {why}." for label, (_, why) in EXPECTED_LOCAL_MEMORY.items())
    return (
        f"From `{json_path}`, written by `{RECORD_COMMAND}` with nvcc {record['nvcc']} for {record['arch']} "
        f"(rendered by `tools/render_bench_tables.py`; `tests/test_cuda_resources.py` compiles the kernels again "
        f"and fails on more stack frame or spills than explained below (any, elsewhere), or on a difference from "
        f"the record with the same nvcc). "
        f"FPS launches up to 1024 threads (fewer for small N); occupancy is at the block size shown, "
        f"from {record['arch']}'s per-SM limits and the static shared memory only (fps_generic_kernel's "
        f"shared-memory path, N > 8192, adds 4 values per point of dynamic shared memory, 128 KiB and more: one "
        f"block per SM there). The local memory in the table, explained:\n\n{notes}\n\n" + table(record)
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="90", help=f"compute capability without the dot ({', '.join(SM_LIMITS)})")
    ap.add_argument("--json", default=None, help=f"write the record ({RECORD_JSON} is docs/ops.md's)")
    args = ap.parse_args(argv)
    try:
        record = measure(args.arch)
    except (RuntimeError, ValueError) as e:
        print(e, file=sys.stderr)
        return 2
    print(table(record))
    bad = local_memory_rows(record["rows"])
    for r in bad:
        print(f"unexpected local memory: {r['kernel']} (stack {r['stack']} B, spills {r['spill_stores']} B)")
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
