#!/usr/bin/env python
"""Mutation testing of the core modules with mutmut (pinned in requirements/mutate.txt).

Each group below mutates a few source files and runs only the tests that guard them, in a scratch
copy of the repository (git-tracked files + the built clora3d/_C*.so), so the working tree is never
touched and a run fits on a small machine. Results go to docs/mutation.md (and JSON with --json).

    python tools/mutate.py                  # every group
    python tools/mutate.py --groups evaluate ops_checks --max-children 2
    python tools/mutate.py --report-only    # re-render docs/mutation.md from the saved results

A group's survivors are listed in the report with their diff; each must be killed by a new test or
explained as equivalent in EQUIVALENT below (keyed by mutmut's mutant name).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("mutate")

# group -> (files to mutate, pytest arguments that select the tests guarding them)
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "evaluate": (["clora3d/engine/evaluate.py"], ["tests/test_evaluate.py", "-k", "not ddp"]),
    "ops_checks": (
        ["clora3d/ops/_checks.py", "clora3d/ops/api.py"],
        [
            "tests/test_ops.py",
            "tests/test_mutation_kills_ops_checks.py",
            "tests/test_ops_tracing_checks.py",
            "-k",
            "bad_input or mixed or direct or noncontiguous or formula or exactly or "
            "reference_forced or three_nn_parity or gather_parity or three_interpolate_parity or "
            "other_dtypes or empty or grad or reference_backend_forced or meta_tensor or batch_check or "
            "zero_dim or upper_bounds or names_each or casts_float64 or compiled_kernel or eager_values or "
            "native_feature_dtype or defer_finite or under_compile",
        ],
    ),
    "ops_reference": (
        ["clora3d/ops/reference.py"],
        [
            "tests/test_mutation_kills_ops.py",
            "tests/test_ops.py",
            "-k",
            "reference or native_fps or native_knn or three_nn_parity or formula or gather or "
            "three_interpolate_parity or noncontiguous or chamfer or any_batch_size or query_chunks",
        ],
    ),
    "peft_base": (
        ["clora3d/peft/base.py", "clora3d/peft/registry.py", "clora3d/peft/adapter_io.py", "clora3d/peft/config.py"],
        [
            "tests/test_peft.py",
            "tests/test_mutation_kills_peft.py",
            "tests/test_mutation_kills_peft_api.py",
            "tests/test_peft_compat.py",
        ],
    ),
    "peft_clora": (
        ["clora3d/peft/clora.py"],
        [
            "tests/test_peft_clora.py",
            "tests/test_peft.py",
            "tests/test_mutation_kills_peft.py",
            "tests/test_mutation_kills_peft_layers.py",
            "tests/test_autocast_casts.py",
            # Dynamo cannot trace mutmut's trampolines: the compile test runs in the normal suite only
            "-k",
            "not sade_compiles_without_graph_break",
        ],
    ),
    "peft_lora_simple": (
        ["clora3d/peft/lora.py", "clora3d/peft/simple.py", "clora3d/peft/adapter.py"],
        [
            "tests/test_peft.py",
            "tests/test_mutation_kills_peft.py",
            "tests/test_mutation_kills_peft_layers.py",
            "tests/test_autocast_casts.py",  # LoRA's factors and input under bf16
        ],
    ),
    "storage_checkpoint": (
        ["clora3d/storage.py", "clora3d/engine/checkpoint.py"],
        [
            "tests/test_atomic_writers.py",
            "tests/test_checkpoint.py",
            "tests/test_mutation_kills_storage.py",
            "tests/test_storage_plain.py",
        ],
    ),
}

# mutant name -> why it cannot be killed (it does not change behaviour). Names are mutmut's and
# move when the mutated function changes: re-check this list after editing a module.
EQUIVALENT: dict[str, str] = {
    # the host-side helpers pick an implementation, not a result (custom-op conversion, issue 11)
    "clora3d.ops._checks.x_all_finite__mutmut_3": "torch.ops.clora3d.all_finite and torch.isfinite(t).all() give the same answer; the operator is registered "
    "whenever the extension was imported, so taking it with mod None changes only the speed",
    "clora3d.ops._checks.x_all_finite__mutmut_4": "torch.isfinite(t).all() gives the same answer as the serial operator (the operator only avoids a parallel region)",
    "clora3d.ops._checks.x_index_range__mutmut_3": "torch.ops.clora3d.index_range and torch.aminmax give the same (min, max); the operator is registered "
    "whenever the extension was imported",
    "clora3d.ops._checks.x_index_range__mutmut_4": "torch.aminmax gives the same (min, max) as the serial operator (the operator only avoids a parallel region)",
    "clora3d.ops.api.x_gather_points__mutmut_54": "with B > 0 and no indices the kernel returns the same empty (B, S, K, C) result as the reference path",
    # CLoRA's factored training path and matmul SADE (rewritten for issue 12; old sade/branch entries dropped)
    "clora3d.peft.clora.xǁ_PreProjHookǁ__call____mutmut_33": "a Linear's forward pre-hook gets args == (x,): args[1:] and args[2:] are both empty",
    "clora3d.peft.clora.xǁ_PreProjHookǁ__call____mutmut_44": "a Linear's forward pre-hook gets args == (x,): args[1:] and args[2:] are both empty",
    "clora3d.peft.clora.x__identity_plus_low_rank__mutmut_45": "out is 2-D (the function's output): out.shape[+1] is out.shape[-1]",
    "clora3d.peft.clora.xǁ_SadeBlocksǁforward__mutmut_43": "with S = 1, Q (1, m, p, r, r) or (m, 1, p, r, r) gives the same qbd: the unit dimension is reshaped away into (1, m, pr, pr)",
    "clora3d.peft.clora.x__scalar__mutmut_4": "observable only on a GPU: SADE's eps on the CPU is the same on a CPU run, and CUDA's addcmul refuses a CPU scalar as its input (test_sade_on_cuda_equals_the_cpu and the CUDA case of test_sade_is_float32_under_autocast kill it there); the mutation run has no GPU",
    "clora3d.peft.clora.x__scalar__mutmut_8": "observable only on a GPU: SADE's eps on the CPU is the same on a CPU run, and CUDA's addcmul refuses a CPU scalar as its input (test_sade_on_cuda_equals_the_cpu and the CUDA case of test_sade_is_float32_under_autocast kill it there); the mutation run has no GPU",
    "clora3d.peft.lora.xǁLoRALayerǁcast_input__mutmut_5": "a Linear's forward pre-hook gets args == (x,): args[1:] and args[2:] are both empty",
    "clora3d.engine.evaluate.x__apply_transform__mutmut_2": "unreachable: evaluate_classification always passes a generator when voting",
    "clora3d.engine.evaluate.x__restricted_labels__mutmut_3": "float64 labels holding integer values compare like int64 ones",
    "clora3d.engine.evaluate.x__restricted_labels__mutmut_9": "np.empty defaults to float64; the integer part ids it receives compare the same",
    "clora3d.engine.evaluate.x__restricted_labels__mutmut_11": "np.empty defaults to float64; the integer part ids it receives compare the same",
    "clora3d.engine.evaluate.x__restricted_labels__mutmut_24": "axis=+1 is axis 1, the last axis of the 2-D logits slice",
    "clora3d.engine.evaluate.x_part_seg_miou__mutmut_9": "numpy reshape(None) of the 1-D category array keeps it 1-D",
    "clora3d.engine.evaluate.x_part_seg_miou__mutmut_10": "float category indices are converted with int() where used",
    "clora3d.engine.evaluate.x_part_seg_miou__mutmut_13": "numpy treats reshape(-2) like reshape(-1) for one dimension",
    "clora3d.engine.evaluate.x_part_seg_miou__mutmut_39": "a longer minlength adds never-seen parts, which the metrics skip",
    "clora3d.engine.evaluate.x_part_seg_miou__mutmut_41": "astype(None) is float64, the same as astype(np.float64)",
    "clora3d.engine.evaluate.x_part_seg_miou__mutmut_48": "numpy treats reshape(-2) like reshape(-1) for one dimension",
    "clora3d.engine.evaluate.x_part_seg_miou__mutmut_52": "astype(None) is float64, the same as astype(np.float64)",
    "clora3d.ops._checks.x__native_cpu__mutmut_1": "whether the validation uses the extension's serial helpers or torch reductions is a speed choice: both give the same answer (all finite / min-max index)",
    "clora3d.ops._checks.x__native_cpu__mutmut_2": "whether the validation uses the extension's serial helpers or torch reductions is a speed choice: both give the same answer (all finite / min-max index)",
    "clora3d.ops._checks.x__native_cpu__mutmut_3": "whether the validation uses the extension's serial helpers or torch reductions is a speed choice: both give the same answer (all finite / min-max index)",
    "clora3d.ops._checks.x__native_cpu__mutmut_4": "whether the validation uses the extension's serial helpers or torch reductions is a speed choice: both give the same answer (all finite / min-max index)",
    "clora3d.ops._checks.x__native_cpu__mutmut_5": "whether the validation uses the extension's serial helpers or torch reductions is a speed choice: both give the same answer (all finite / min-max index)",
    "clora3d.ops._checks.x__native_cpu__mutmut_6": "whether the validation uses the extension's serial helpers or torch reductions is a speed choice: both give the same answer (all finite / min-max index)",
    "clora3d.ops._checks.x__native_cpu__mutmut_7": "whether the validation uses the extension's serial helpers or torch reductions is a speed choice: both give the same answer (all finite / min-max index)",
    "clora3d.ops._checks.x_all_finite__mutmut_1": "whether the validation uses the extension's serial helpers or torch reductions is a speed choice: both give the same answer (all finite / min-max index)",
    "clora3d.ops._checks.x_all_finite__mutmut_5": "whether the validation uses the extension's serial helpers or torch reductions is a speed choice: both give the same answer (all finite / min-max index)",
    "clora3d.ops._checks.x_index_range__mutmut_1": "whether the validation uses the extension's serial helpers or torch reductions is a speed choice: both give the same answer (all finite / min-max index)",
    "clora3d.ops._checks.x_index_range__mutmut_5": "whether the validation uses the extension's serial helpers or torch reductions is a speed choice: both give the same answer (all finite / min-max index)",
    "clora3d.ops.reference.x__sqdist__mutmut_18": "the coordinates are (B,M,3) (validated before the reference runs): q[..., 2:4] is q[..., 2:3]",
    "clora3d.ops.reference.x__query_chunks__mutmut_5": "the query chunk size only bounds memory: every chunk size >= 1 gives the same answer",
    "clora3d.ops.reference.x__query_chunks__mutmut_15": "the query chunk size only bounds memory: every chunk size >= 1 gives the same answer",
    "clora3d.ops.reference.x__query_chunks__mutmut_16": "the query chunk size only bounds memory: every chunk size >= 1 gives the same answer",
    "clora3d.ops.reference.x_gather_points__mutmut_7": "for B > 0 the product of idx.shape[1:] is idx[0].numel(): both branches give the same row length",
    "clora3d.ops.reference.x_gather_points__mutmut_12": "with B = 0 the index tensor is empty: any row length reshapes it and the output shape comes from idx.shape",
    "clora3d.ops.reference.x_interpolation_weights__mutmut_4": "the weights are normalised to sum 1: a constant numerator cancels",
    "clora3d.peft.base.xǁPeftMethodǁ_detach__mutmut_14": "get_submodule('') is the model itself: for a top-level path both branches give the same owner",
    "clora3d.peft.base.xǁPeftMethodǁreplace_module__mutmut_7": "get_submodule('') is the model itself: for a top-level path both branches give the same owner",
    "clora3d.peft.base.xǁPeftMethodǁreference_parameter__mutmut_1": "every block's norm1 has the same device and dtype, which is all the reference parameter is used for",
    "clora3d.peft.base.xǁPeftMethodǁsaved_buffer_names__mutmut_10": "a BatchNorm module has no child modules: recurse=True/None lists the same parameters and buffers",
    "clora3d.peft.base.xǁPeftMethodǁsaved_buffer_names__mutmut_11": "a BatchNorm module has no child modules: recurse=True/None lists the same parameters and buffers",
    "clora3d.peft.base.xǁPeftMethodǁsaved_buffer_names__mutmut_14": "the root module is never a BatchNorm, so mname is never empty here",
    "clora3d.peft.base.xǁPeftMethodǁsaved_buffer_names__mutmut_8": "Module._named_members only tests `if recurse`: recurse=None lists the module's own parameters, as recurse=False does",
    "clora3d.peft.base.xǁPeftMethodǁsaved_buffer_names__mutmut_9": "a BatchNorm module has no child modules: recurse=True lists the same parameters as recurse=False",
    "clora3d.peft.registry.x_method_class__mutmut_8": "only close[0] is used and get_close_matches returns the best match first whatever n is: n=1 and the default n=3 suggest the same name",
    "clora3d.peft.registry.x_method_class__mutmut_10": "only close[0] is used and get_close_matches returns the best match first whatever n is: n=1 and n=2 suggest the same name",
    "clora3d.peft.base.xǁPeftMethodǁadapter_state_dict__mutmut_2": "on CPU tensors .to(None) and .to('cpu') both keep the data on the CPU; only a GPU model tells them apart, and the test run has no GPU",
    "clora3d.peft.base.xǁPeftMethodǁadapter_state_dict__mutmut_8": "on CPU tensors .to(None) and .to('cpu') both keep the data on the CPU; only a GPU model tells them apart, and the test run has no GPU",
    "clora3d.storage.x__tmp_name__mutmut_2": "the temp-file pattern accepts a random suffix of any length; only its uniqueness matters",
    "clora3d.storage.x__tmp_name__mutmut_3": "the temp-file pattern accepts a random suffix of any length; only its uniqueness matters",
    "clora3d.storage.x_tensor_checksum__mutmut_6": "on CPU tensors .to(None) and .to('cpu') are the same; only GPU tensors tell them apart, and the test run has no GPU",
    "clora3d.engine.checkpoint.x_load_checkpoint__mutmut_7": "safe_torch_load's default `what` is 'checkpoint', the value passed",
    "clora3d.engine.checkpoint.x_set_rng_state__mutmut_10": "numpy's set_state converts the key array to uint32 itself: float64 keys below 2**32 restore the same state (checked)",
    "clora3d.engine.checkpoint.x_get_rng_state__mutmut_40": "CUDA RNG state only: the test run has no CUDA device",
    "clora3d.engine.checkpoint.x_get_rng_state__mutmut_41": "CUDA RNG state only: the test run has no CUDA device",
    "clora3d.engine.checkpoint.x_get_rng_state__mutmut_42": "CUDA RNG state only: the test run has no CUDA device",
    "clora3d.engine.checkpoint.x_get_rng_state__mutmut_43": "CUDA RNG state only: the test run has no CUDA device",
    "clora3d.engine.checkpoint.x_set_rng_state__mutmut_30": "CUDA RNG state only: the test run has no CUDA device",
    "clora3d.engine.checkpoint.x_set_rng_state__mutmut_31": "CUDA RNG state only: the test run has no CUDA device",
    "clora3d.engine.checkpoint.x_set_rng_state__mutmut_32": "CUDA RNG state only: the test run has no CUDA device",
    "clora3d.engine.checkpoint.x_set_rng_state__mutmut_33": "CUDA RNG state only: the test run has no CUDA device",
    "clora3d.engine.checkpoint.x_set_rng_state__mutmut_34": "CUDA RNG state only: the test run has no CUDA device",
    "clora3d.engine.checkpoint.x_set_rng_state__mutmut_35": "CUDA RNG state only: the test run has no CUDA device",
    "clora3d.engine.checkpoint.x_set_rng_state__mutmut_36": "CUDA RNG state only: the test run has no CUDA device",
    "clora3d.peft.clora.xǁ_ParallelHookǁ__call____mutmut_3": "F.dropout with p = 0 is the identity: taking the dropout branch at p = 0 changes nothing",
    "clora3d.peft.clora.xǁ_ParallelHookǁ__call____mutmut_11": "F.dropout with p = 0 is the identity: taking the dropout branch at p = 0 changes nothing",
    "clora3d.peft.clora.xǁCLoRASpacesǁcomponents__mutmut_10": "einsum labels in upper case name the same contraction",
    "clora3d.peft.simple.x__bias_name__mutmut_6": "every Linear, Conv1d, BatchNorm and LayerNorm has a bias attribute (None without bias): the getattr default is never used",
    "clora3d.peft.adapter.xǁ_InsertPromptsǁ__call____mutmut_4": "F.dropout with p = 0 is the identity: taking the dropout branch at p = 0 changes nothing",
    "clora3d.peft.adapter.xǁ_InsertPromptsǁ__call____mutmut_36": "a Block takes one positional input: args[1:] and args[2:] are both empty",
    "clora3d.ops.api.x_three_interpolate__mutmut_62": "weight was checked to have idx's shape just before, so only its device can differ from idx's, and a second device (a GPU) is not there in the test run",
    "clora3d.ops.api.x_three_interpolate__mutmut_67": "weight was checked to have idx's shape just before, so only its device can differ from idx's, and a second device (a GPU) is not there in the test run",
    "clora3d.ops.api.x_three_interpolate__mutmut_68": "weight was checked to have idx's shape just before, so only its device can differ from idx's, and a second device (a GPU) is not there in the test run",
    # groups peft_clora, peft_lora_simple, storage_checkpoint, second round (issue 17; names as generated on 6a204ce)
    # peft_clora after SADE's written-out backward (names as generated on 2e74022 + the grouping loop of b5148b9)
    "clora3d.peft.clora.x_sade_total__mutmut_22": "observable only on a GPU (CUDA autocast): the CUDA case of test_sade_is_float32_under_autocast kills it there; the mutation run has no GPU",
    "clora3d.peft.clora.x_sade_total__mutmut_23": "observable only on a GPU (CUDA autocast): the CUDA case of test_sade_is_float32_under_autocast kills it there; the mutation run has no GPU",
    "clora3d.peft.clora.xǁ_LRMǁ__init____mutmut_1": "the norm_name default is never read: CLoRA builds every _PreProjHook with its LayerNorm's name, and _ParallelHook (built without one) never uses it",
    "clora3d.peft.clora.xǁ_LRMǁ_set__mutmut_3": "copy_ converts the float64 value to t's dtype with the same rounding as .to(t.dtype)",
    "clora3d.peft.clora.xǁ_PreProjHookǁmerge__mutmut_16": "adding the float64 W' b_j promotes the parameter-dtype bias to float64 exactly, as .to(torch.float64) does: the same sum",
    "clora3d.peft.clora.xǁ_PreProjHookǁmerge__mutmut_31": "adding the float64 b_j promotes the parameter-dtype norm bias to float64 exactly, as .to(torch.float64) does: the same sum",
    "clora3d.peft.clora.xǁ_ParallelHookǁmerge__mutmut_9": "lin.bias and b_j share the model's dtype (p-bit significand): their sum rounded once to it equals the float64 sum rounded to it, since 53 >= 2p + 2 makes double rounding of a sum innocuous, and copy_ stores that dtype",
    "clora3d.peft.clora.xǁ_ParallelHookǁmerge__mutmut_15": "adding the float64 dW^T promotes the parameter-dtype weight to float64 exactly, as .to(torch.float64) does: the same sum",
    "clora3d.peft.clora.xǁ_ParallelHookǁmerge__mutmut_16": "adding it to the float64 weight promotes the parameter-dtype delta() to float64 exactly, as .to(torch.float64) does: the same sum",
    "clora3d.peft.clora.xǁCLoRAǁ_setup__mutmut_66": "with pre_proj d_out is set to d_in, so the bias width d_out equals d_in in both placements",
    "clora3d.peft.lora.xǁLoRALayerǁ__call____mutmut_3": "F.dropout with p = 0 returns its input itself and draws no random numbers: taking the dropout branch at p = 0 changes nothing",
    "clora3d.peft.lora.xǁLoRALayerǁ__call____mutmut_11": "F.dropout with p = 0 returns its input itself and draws no random numbers: taking the dropout branch at p = 0 changes nothing",
    "clora3d.peft.lora.xǁLoRALayerǁmerge__mutmut_8": "copy_ converts the float64 sum to W's dtype with the same rounding as .to(W.dtype)",
    "clora3d.peft.lora.xǁLoRALayerǁmerge__mutmut_10": "adding the float64 dW promotes the parameter-dtype W to float64 exactly, as .to(torch.float64) does: the same sum",
    "clora3d.peft.simple.x__bias_name__mutmut_10": "PeftMethod trains only names of real parameters (base_trainable_names is filtered by model.named_parameters()): a '<prefix>.bias' listed for a module whose bias is None is dropped, so the trainable set is the same",
    "clora3d.storage.x_safe_torch_load__mutmut_35": "an empty string and None are both falsy: no culprit suffix either way",
    "clora3d.storage.x__plain__mutmut_3": "_is_array admits only numpy scalars/arrays and torch tensors, and for a 0-d one .tolist() is the same Python value as .item() (checked: every numpy scalar kind incl. str_, bytes_, void, datetime64; 0-d object arrays; 0-d tensors of each dtype): .tolist() for all changes nothing",
    "clora3d.storage.x__plain__mutmut_5": "_is_array admits only numpy scalars/arrays and torch tensors, and for a 0-d one .tolist() is the same Python value as .item() (checked: every numpy scalar kind incl. str_, bytes_, void, datetime64; 0-d object arrays; 0-d tensors of each dtype): .tolist() for all changes nothing",
    "clora3d.storage.x__plain__mutmut_7": "numpy scalars/arrays and torch tensors (all _is_array admits) have ndim: the getattr default is never used",
    "clora3d.storage.x__plain__mutmut_10": "numpy scalars/arrays and torch tensors (all _is_array admits) have ndim: the getattr default is never used",
    "clora3d.storage.x__plain__mutmut_11": "_is_array admits only numpy scalars/arrays and torch tensors, and for a 0-d one .tolist() is the same Python value as .item() (checked: every numpy scalar kind incl. str_, bytes_, void, datetime64; 0-d object arrays; 0-d tensors of each dtype): .tolist() for all changes nothing",
    "clora3d.storage.x__plain__mutmut_12": "_is_array admits only numpy scalars/arrays and torch tensors, and for a 0-d one .tolist() is the same Python value as .item() (checked: every numpy scalar kind incl. str_, bytes_, void, datetime64; 0-d object arrays; 0-d tensors of each dtype): .tolist() for all changes nothing",
    "clora3d.storage.x__plain__mutmut_13": "numpy scalars/arrays and torch tensors (all _is_array admits) have ndim: the getattr default is never used",
    "clora3d.storage.x__plain__mutmut_26": "a shortcut only: after the numpy branch, None, str, bytes, bool and int fall through every later branch unchanged too (os.fspath returns a str or bytes as it is); only a str/bytes/int subclass that is also a mapping, list, tuple or dataclass (or an int with __fspath__) would differ, and no such hybrid reaches to_plain",
}

OUT_DIR = REPO / "build" / "mutate"
REPORT = REPO / "docs" / "mutation.md"


def _scratch_copy(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for rel in files:
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    for so in (REPO / "clora3d").glob("_C*.so"):
        shutil.copy2(so, dest / "clora3d" / so.name)


def _write_cfg(dest: Path, files: list[str], tests: list[str]) -> None:
    # mutmut reads [tool.mutmut] from pyproject.toml first, else setup.cfg: keep one source
    lines = ["[mutmut]", "source_paths = clora3d/", "only_mutate ="]
    lines += [f"    {f}" for f in files]
    lines += ["pytest_add_cli_args_test_selection ="] + [f"    {t}" for t in tests]
    lines += ["pytest_add_cli_args =", "    -p", "    no:cacheprovider", "    -q", "also_copy =", "    benchmarks/"] + [
        f"    clora3d/{so.name}" for so in (REPO / "clora3d").glob("_C*.so")
    ]  # benchmarks/: tests count ops with benchmarks.step_ops.CountOps
    lines += ["use_git_change_detection = false", ""]
    (dest / "setup.cfg").write_text("\n".join(lines))


def run_group(name: str, max_children: int, mutmut: str) -> dict:
    files, tests = GROUPS[name]
    work = OUT_DIR / name
    _scratch_copy(work)
    _write_cfg(work, files, tests)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.time()
    proc = subprocess.run(
        [mutmut, "run", "--max-children", str(max_children)], cwd=work, env=env, capture_output=True, text=True
    )
    wall = time.time() - t0
    (OUT_DIR / f"{name}.log").write_text(proc.stdout[-20000:] + "\n" + proc.stderr[-20000:])
    status, diffs = collect(work, env)
    if proc.returncode != 0 and all(st not in CAUGHT and st not in SURVIVED for st in status.values()):
        raise RuntimeError(
            f"mutate: mutmut run failed for group {name} before testing any mutant (see "
            f"build/mutate/{name}.log); the previous results are kept"
        )
    return {
        "group": name,
        "files": files,
        "tests": tests,
        "returncode": proc.returncode,
        "wall_s": round(wall),
        "status": status,
        "diffs": diffs,
        "file_sha": {f: _sha(work / f) for f in files},
    }


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


# Reads every mutant's status and, for those not caught, its diff, in one process inside the
# group's scratch copy (one `mutmut show` per mutant costs a second or more each).
_COLLECT = """
import json, sys
from mutmut.__main__ import SourceFileMutationData, walk_mutatable_files
from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
caught = set(json.loads(sys.argv[1]))
out = {}
for path in walk_mutatable_files():
    m = SourceFileMutationData(path=path)
    m.load()
    for k, v in m.exit_code_by_key.items():
        st = status_by_exit_code[v]
        out[k] = [st, "" if st in caught else "# " + k + ": " + st + "\\n" + get_diff_for_mutant(k, path=m.path)]
json.dump(out, sys.stdout)
"""


def _cfg_selection(work: Path) -> tuple[list[str], list[str]]:
    """(files mutated, pytest arguments) as written into the scratch copy's setup.cfg."""
    out: dict[str, list[str]] = {}
    key = None
    for line in (work / "setup.cfg").read_text().splitlines():
        if line.startswith("    ") and key:
            out[key].append(line.strip())
        elif "=" in line:
            key = line.split("=")[0].strip()
            out[key] = []
    return out.get("only_mutate", []), out.get("pytest_add_cli_args_test_selection", [])


def collect(work: Path, env: dict) -> tuple[dict[str, str], dict[str, str]]:
    res = subprocess.run(
        [sys.executable, "-c", _COLLECT, json.dumps(CAUGHT)], cwd=work, env=env, capture_output=True, text=True
    )
    if res.returncode != 0:
        raise RuntimeError(f"mutate: cannot read the mutmut results in {work}: {res.stderr[-2000:]}")
    got = json.loads(res.stdout)
    status = {k: st for k, (st, _) in got.items()}
    diffs = {k: d.strip()[-3000:] for k, (st, d) in got.items() if d}
    return status, diffs


# mutmut statuses: a mutant is caught when a test fails (killed), hangs (timeout) or crashes
# (segfault); it survives when the selected tests pass on it or none of them runs its code
# ("no tests": then no test guards that code, which is as bad as a passing one).
CAUGHT = ("killed", "timeout", "segfault")
SURVIVED = ("survived", "no tests")


def summarise(results: list[dict]) -> str:
    lines = [
        "# Mutation testing of the core",
        "",
        "Generated by `python tools/mutate.py` (`make mutate`) with mutmut "
        f"({_mutmut_version()}); do not edit by hand. Each group mutates the listed files and runs only the",
        "listed tests, in a scratch copy of the repository. Survivors (the tests pass on the mutant, or",
        "no selected test runs its code) are either killed by a new test (then they disappear from the",
        "next run) or explained as equivalent in `tools/mutate.py`. Caught = killed + timeout + segfault;",
        "other = not checked (skipped, interrupted). The metrics (classification accuracy, vote@N,",
        "part-seg Inst./Cls. mIoU) live in `clora3d/engine/evaluate.py` (group evaluate); the checkpoint",
        "and adapter I/O in `clora3d/storage.py`, `clora3d/engine/checkpoint.py` and `clora3d/peft/adapter_io.py`.",
        "",
        "| group | files | tests | mutants | caught | survived | equivalent | other | survivors (non-equivalent) | wall |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    details = []
    tot = {"n": 0, "caught": 0, "surv": 0, "equiv": 0, "other": 0, "real": 0, "wall": 0}
    for r in results:
        st = r["status"]
        n = len(st)
        caught = sum(1 for s in st.values() if s in CAUGHT)
        surv = [m for m, s in st.items() if s in SURVIVED]
        equiv = [m for m in surv if m in EQUIVALENT]
        real = [m for m in surv if m not in EQUIVALENT]
        other = n - caught - len(surv)
        pct = f"{100 * len(real) / n:.1f} %" if n else "-"
        for k, v in (
            ("n", n),
            ("caught", caught),
            ("surv", len(surv)),
            ("equiv", len(equiv)),
            ("other", other),
            ("real", len(real)),
            ("wall", r["wall_s"] or 0),
        ):
            tot[k] += v
        retried = r.get("retried")
        note = f" (survivors re-run: {retried['mutants']}, {retried['wall_s']} s)" if retried else ""
        work = OUT_DIR / r["group"]
        if "file_sha" in r:  # the files as they were when the group ran
            stale = [f for f in r["files"] if r["file_sha"].get(f) != _sha(REPO / f)]
        else:
            stale = [
                f
                for f in r["files"]
                if (work / f).exists() and (REPO / f).exists() and (work / f).read_bytes() != (REPO / f).read_bytes()
            ]
        if stale:
            note += f" **stale: {', '.join(stale)} changed since this run; run the group again**"
        lines.append(
            f"| {r['group']}{note} | {', '.join(f'`{f}`' for f in r['files'])} | `{' '.join(r['tests'])}` | "
            f"{n} | {caught} | {len(surv)} | {len(equiv)} | {other} | {len(real)} ({pct}) | "
            f"{'-' if r['wall_s'] is None else str(r['wall_s']) + ' s'} |"
        )
        if surv or other:
            details.append(f"\n## {r['group']}\n")
            for m in sorted(st):
                if st[m] in CAUGHT:
                    continue
                why = EQUIVALENT.get(m)
                details.append(f"### `{m}`: {st[m]}" + (f" (equivalent: {why})" if why else ""))
                details.append("```diff\n" + r["diffs"].get(m, "") + "\n```")
    if results:
        pct = f"{100 * tot['real'] / tot['n']:.1f} %" if tot["n"] else "-"
        lines.append(
            f"| **all groups** | | | {tot['n']} | {tot['caught']} | {tot['surv']} | {tot['equiv']} | "
            f"{tot['other']} | {tot['real']} ({pct}) | {tot['wall']} s |"
        )
    done = {r["group"] for r in results}
    generated = {m for r in results for m in r["status"]}
    modules = {_module_of(f) for r in results for f in r["files"]}
    orphans = sorted(
        m for m in EQUIVALENT if m.split(".x", 1)[0] in modules and (m not in generated or m not in _survivors(results))
    )
    if orphans:
        lines += [
            "",
            "EQUIVALENT entries of the groups above that name no surviving mutant of their last run (the code "
            "changed, or a test kills it now; remove them): " + ", ".join(f"`{m}`" for m in orphans) + ".",
        ]
    missing = [g for g in GROUPS if g not in done]
    if missing:
        lines += ["", f"Not run yet (no results in build/mutate/): {', '.join(missing)}."]
    return "\n".join(lines + details) + "\n"


def _module_of(path: str) -> str:
    """``clora3d/peft/base.py`` -> ``clora3d.peft.base`` (the prefix of mutmut's mutant names)."""
    return path[: -len(".py")].replace("/", ".")


def _survivors(results: list[dict]) -> set[str]:
    return {m for r in results for m, s in r["status"].items() if s in SURVIVED}


def _mutmut_version() -> str:
    try:
        from importlib.metadata import version

        return f"mutmut {version('mutmut')}"
    except Exception:  # noqa: BLE001
        return "mutmut version unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groups", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    ap.add_argument("--max-children", type=int, default=2)
    ap.add_argument("--report-only", action="store_true", help="re-render the report from build/mutate/*.json")
    ap.add_argument(
        "--retry",
        action="store_true",
        help="re-run only the survivors (not listed as equivalent) of the last run of each group, "
        "in its scratch copy with the current tests (tests are only ever added: the caught "
        "mutants stay caught); the product files must be unchanged since that run",
    )
    ap.add_argument(
        "--collect",
        action="store_true",
        help="re-read the results left in build/mutate/<group>/ (a run that was cut while reading "
        "them) instead of running mutmut; the wall time is taken from the group's log",
    )
    args = ap.parse_args()
    mutmut = shutil.which("mutmut", path=str(Path(sys.executable).parent)) or shutil.which("mutmut")
    if mutmut is None and not args.report_only:
        log.error("mutmut is not installed; pip install -r requirements/mutate.txt")
        return 2
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    if args.retry:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        for g in args.groups:
            work, prev = OUT_DIR / g, json.loads((OUT_DIR / f"{g}.json").read_text())
            files, tests = GROUPS[g]
            changed = [f for f in files if (REPO / f).read_bytes() != (work / f).read_bytes()]
            if changed:
                log.error("%s: %s changed since the last run; run the group again", g, changed)
                return 2
            todo = [m for m, st in prev["status"].items() if st in SURVIVED and m not in EQUIVALENT]
            for rel in subprocess.run(
                ["git", "ls-files", "tests"], cwd=REPO, capture_output=True, text=True, check=True
            ).stdout.split():
                (work / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, work / rel)
            _write_cfg(work, files, tests)
            t0 = time.time()
            proc = (
                subprocess.run(
                    [mutmut, "run", "--max-children", str(args.max_children), *todo],
                    cwd=work,
                    env=env,
                    capture_output=True,
                    text=True,
                )
                if todo
                else None
            )
            new, new_diffs = collect(work, env)  # mutmut keeps only the re-run mutants' results
            status = {m: (new.get(m, st) if m in todo else st) for m, st in prev["status"].items()}
            diffs = {m: d for m, d in prev["diffs"].items() if m not in todo or status[m] not in CAUGHT}
            diffs.update({m: d for m, d in new_diffs.items() if m in todo})
            r = {
                **prev,
                "tests": tests,
                "status": status,
                "diffs": diffs,
                "retried": {
                    "mutants": len(todo),
                    "wall_s": round(time.time() - t0),
                    "returncode": proc.returncode if proc else 0,
                },
            }
            (OUT_DIR / f"{g}.json").write_text(json.dumps(r, indent=1))
            log.info(
                "%s: re-ran %d survivors, %d still survive",
                g,
                len(todo),
                sum(1 for m in todo if status.get(m) in SURVIVED),
            )
    elif args.collect:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        for g in args.groups:
            work = OUT_DIR / g
            status, diffs = collect(work, env)
            files, tests = _cfg_selection(work)
            log_file = OUT_DIR / f"{g}.log"
            wall = round(log_file.stat().st_mtime - (work / "setup.cfg").stat().st_mtime) if log_file.exists() else None
            (OUT_DIR / f"{g}.json").write_text(
                json.dumps(
                    {
                        "group": g,
                        "files": files,
                        "tests": tests,
                        "returncode": None,
                        "wall_s": wall,
                        "status": status,
                        "diffs": diffs,
                    },
                    indent=1,
                )
            )
            log.info("%s: collected %d mutants from %s", g, len(status), work.relative_to(REPO))
    elif not args.report_only:
        for g in args.groups:
            log.info("group %s ...", g)
            r = run_group(g, args.max_children, mutmut)
            (OUT_DIR / f"{g}.json").write_text(json.dumps(r, indent=1))
            log.info(
                "%s: %d mutants, %d survived, %s s",
                g,
                len(r["status"]),
                sum(1 for s in r["status"].values() if s == "survived"),
                r["wall_s"],
            )
    results = [json.loads((OUT_DIR / f"{g}.json").read_text()) for g in GROUPS if (OUT_DIR / f"{g}.json").exists()]
    REPORT.write_text(summarise(results))
    log.info("wrote %s", REPORT.relative_to(REPO))
    return 0


if __name__ == "__main__":
    logging.basicConfig(format="mutate: %(message)s")
    log.setLevel(logging.INFO)
    sys.exit(main())
