"""The GPU kernel benchmark's peer libraries: copy their sources here, build them on the GPU machine.

The GPU machine has no internet and no package index, so the peers travel as sources in
``build/peers/<name>`` (ignored by git) and are compiled there, for that GPU only, into
``build/peers/site``, which ``benchmarks/gpu_bench.py`` puts on ``sys.path`` (and the Point-MAE
checkout, ``build/peers/Point-MAE``, at its end, for ``extensions.chamfer_dist``).

prepare (here, on a machine with the sources; nothing is compiled)::

    python benchmarks/gpu_peers.py prepare --pointnet2 DIR --point-mae DIR [--knn-cuda DIR]
        [--torch-cluster SDIST|DIR|VERSION]

DIR: a git repository (a bare mirror or a checkout; its HEAD is exported) or a plain folder.
``--torch-cluster 1.6.3`` downloads that sdist with pip. Peers not named keep their sources;
an earlier build (site, work, logs) is removed, so only sources remain to carry.

build (on the GPU machine, offline)::

    python benchmarks/gpu_peers.py build [--arch 9.0] [--jobs N] [--timeout 360] [--nice 10]

Every peer builds at once, each in its own copy of its sources, with ``TORCH_CUDA_ARCH_LIST`` =
the local GPU's capability and ``MAX_JOBS`` a share of ``--jobs``; each build is time-boxed and
logged to ``build/peers/logs/<peer>.log``; one status line per peer; a peer that fails to build
never fails the command (exit status 0 unless the arguments are wrong). A site already built for
the same torch, arch and sources is reused (only failed peers are rebuilt).

Peers: pointnet2_ops (erikwijmans/Pointnet2_PyTorch, pointnet2_ops_lib; its setup.py hard-codes
``TORCH_CUDA_ARCH_LIST`` to architectures CUDA >= 12 rejects: the build copy is patched to honour
the environment), Point-MAE's ``extensions/chamfer_dist`` (module ``chamfer``), knn_cuda
(unlimblue/KNN_CUDA, Point-MAE's kNN; compiled by torch's JIT loader on first import, so it needs
a visible GPU) and torch_cluster (PyPI sdist; its 9 extensions are built by parallel processes).

Standard library only (torch is queried in a subprocess).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "build" / "peers"

# peer name -> its sources under build/peers/ (the layout `prepare` writes, `build` and gpu_bench read)
SRC_DIRS = {
    "pointnet2_ops": "pointnet2_ops_lib",
    "chamfer": "Point-MAE",
    "knn_cuda": "KNN_CUDA",
    "torch_cluster": "torch_cluster",
}
# relative compile cost (number of compiled sources), for sharing --jobs out
WEIGHTS = {"pointnet2_ops": 11, "chamfer": 2, "knn_cuda": 2, "torch_cluster": 27}
SKIP_PARTS = {".git", "figure", "__pycache__"}  # Point-MAE's figure/ holds 1.7 MB of JPEGs
ARCH_ASSIGN = re.compile(r"""os\.environ\[\s*(['"])TORCH_CUDA_ARCH_LIST\1\s*\]\s*=\s*(?P<value>[^\n]+)""")


# ----------------------------------------------------------------------------- patching
def patch_arch_list(path: Path) -> int:
    """Make a hard-coded ``os.environ["TORCH_CUDA_ARCH_LIST"] = "..."`` honour the environment:
    rewrite it as ``os.environ.setdefault(...)``, so the caller's TORCH_CUDA_ARCH_LIST wins and the
    old list only applies when none is set. Returns the number of assignments rewritten (0 when
    already patched). Raises ValueError when the file still assigns the variable some other way."""
    text = path.read_text()
    new, n = ARCH_ASSIGN.subn(lambda m: f'os.environ.setdefault("TORCH_CUDA_ARCH_LIST", {m["value"].strip()})', text)
    left = [ln for ln in new.splitlines() if "TORCH_CUDA_ARCH_LIST" in ln and "setdefault" not in ln]
    left = [ln for ln in left if not ln.lstrip().startswith("#")]
    if any(re.search(r"TORCH_CUDA_ARCH_LIST['\"]\s*\]\s*=|putenv|environ\.update", ln) for ln in left):
        raise ValueError(f"{path}: TORCH_CUDA_ARCH_LIST is still set in a form this patch does not know: {left}")
    if n:
        path.write_text(new)
    return n


# ----------------------------------------------------------------------------- prepare
def _git_dir(src: Path) -> bool:
    """A bare repository (a mirror) or the top of a checkout; not a plain folder inside some repository."""
    if (src / ".git").exists():
        return True
    r = subprocess.run(["git", "-C", str(src), "rev-parse", "--is-bare-repository"], capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == "true"


def _skip(rel: Path) -> bool:
    return bool(SKIP_PARTS & set(rel.parts)) or rel.suffix in (".pyc", ".so", ".o", ".log")


def export_tree(src: Path, dest: Path, subdir: str = "", extra: tuple[str, ...] = ()) -> dict:
    """Copy ``src`` (its HEAD when it is a git repository; else the folder) or its ``subdir`` into
    ``dest``, without .git, figures, logs or build outputs; ``extra``: files of the top folder to
    add (a licence). Returns the provenance."""
    src = src.resolve()
    if dest.exists():
        shutil.rmtree(dest)
    info = {"from": str(src), "subdir": subdir}
    if _git_dir(src):
        info["commit"] = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        with tempfile.TemporaryDirectory() as tmp:
            tar = Path(tmp) / "src.tar"
            cmd = ["git", "-C", str(src), "archive", "--format=tar", "-o", str(tar), "HEAD"]
            subprocess.run(cmd + ([subdir, *extra] if subdir else []), check=True)
            out = Path(tmp) / "x"
            with tarfile.open(tar) as tf:
                tf.extractall(out, filter="data")
            _copy_filtered(out / subdir if subdir else out, dest)
            for f in extra:
                shutil.copy2(out / f, dest / f)
    else:
        _copy_filtered(src / subdir if subdir else src, dest)
        for f in extra:
            shutil.copy2(src / f, dest / f)
    return info


def _copy_filtered(src: Path, dest: Path) -> None:
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src)
        if _skip(rel) or not p.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(p, dest / rel)


def fetch_torch_cluster(spec: str, dest: Path) -> dict:
    """``spec``: an sdist (.tar.gz), an unpacked source folder, or a version to pip-download."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(spec)
        if not path.exists():  # a version: download the sdist (needs pip and the index)
            cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
            cmd += ["--no-build-isolation", "-d", tmp, f"torch-cluster=={spec}"]
            subprocess.run(cmd, check=True)
            (path,) = Path(tmp).glob("torch_cluster-*.tar.gz")
        info = {"from": str(path.resolve()) if Path(spec).exists() else f"PyPI torch-cluster=={spec}"}
        if path.is_file():
            info["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
            with tarfile.open(path) as tf:
                tf.extractall(Path(tmp) / "x", filter="data")
            (path,) = [p for p in (Path(tmp) / "x").iterdir() if p.is_dir()]
        if dest.exists():
            shutil.rmtree(dest)
        _copy_filtered(path, dest)
        shutil.rmtree(dest / "torch_cluster.egg-info", ignore_errors=True)
        m = re.search(r"^__version__ = '([^']+)'", (dest / "setup.py").read_text(), re.M)
        info["version"] = m.group(1) if m else "?"
    return info


def prepare(args) -> int:
    root = Path(args.root)
    src = root
    src.mkdir(parents=True, exist_ok=True)
    for stale in ("site", "work", "logs"):
        shutil.rmtree(root / stale, ignore_errors=True)
    manifest_path = root / "SOURCES.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if args.pointnet2:
        dest = src / SRC_DIRS["pointnet2_ops"]
        manifest["pointnet2_ops"] = export_tree(Path(args.pointnet2), dest, "pointnet2_ops_lib", ("UNLICENSE",))
    if args.point_mae:
        manifest["chamfer"] = export_tree(Path(args.point_mae), src / SRC_DIRS["chamfer"])
    if args.knn_cuda:
        manifest["knn_cuda"] = export_tree(Path(args.knn_cuda), src / SRC_DIRS["knn_cuda"])
    if args.torch_cluster:
        manifest["torch_cluster"] = fetch_torch_cluster(args.torch_cluster, src / SRC_DIRS["torch_cluster"])
    manifest_path.write_text(json.dumps(manifest, indent=1) + "\n")
    # pointnet2_ops: check now that the build's patch will apply to these sources
    p2 = src / SRC_DIRS["pointnet2_ops"] / "setup.py"
    if p2.exists():
        with tempfile.TemporaryDirectory() as tmp:
            shutil.copy(p2, Path(tmp) / "setup.py")
            n = patch_arch_list(Path(tmp) / "setup.py")
        print(f"pointnet2_ops: setup.py sets TORCH_CUDA_ARCH_LIST {n} time(s); the build copy will be patched")
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    for name, info in manifest.items():
        print(f"{name}: {SRC_DIRS[name]} from {info['from']} {info.get('commit') or info.get('version', '')}")
    print(f"{root}: {size / 2**20:.1f} MiB, sources only; carry it to the GPU machine")
    if size > 20 * 2**20:
        print("warning: over 20 MiB", file=sys.stderr)
    return 0


# ----------------------------------------------------------------------------- build
def torch_facts() -> dict:
    code = (
        "import json, sys, torch; c = torch.cuda.is_available(); print(json.dumps({'torch': torch.__version__, "
        "'cuda': torch.version.cuda, 'python': sys.version.split()[0], 'gpu': c, "
        "'capability': '.'.join(map(str, torch.cuda.get_device_capability(0))) if c else None, "
        "'site': str(__import__('pathlib').Path(torch.__file__).parents[1])}))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"gpu_peers: cannot import torch: {r.stderr.strip()[-400:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def cuda_home() -> str | None:
    """The toolkit clora3d's own build uses (clora3d/_build_env.py, standard library only): it sees
    through nvcc wrapper scripts, where torch alone would guess a CUDA_HOME without libcudart."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_clora3d_build_env", ROOT / "clora3d" / "_build_env.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.find_cuda_home(os.environ)


def math_headers_path(home: str | None, site_packages: str) -> list[str]:
    """Include folders for a toolkit without the math-library headers (cusparse.h, cublas_v2.h, which
    torch's ATen/cuda headers include): those of the nvidia-* wheels next to torch, as clora3d's
    setup.py adds them. Empty when the toolkit has them."""
    h = Path(home or "/nonexistent")
    if (h / "include" / "cusparse.h").exists() or any(h.glob("targets/*/include/cusparse.h")):
        return []
    sp = Path(site_packages)
    return [str(d) for d in sorted(sp.glob("nvidia/*/include")) + sorted(sp.glob("nvidia/*/*/include")) if d.is_dir()]


def split_jobs(total: int, names: list[str]) -> dict[str, int]:
    """``total`` compile jobs shared in proportion to compile cost; every peer gets at least one and
    never more than it has sources."""
    w = sum(WEIGHTS[n] for n in names) or 1
    return {n: max(1, min(WEIGHTS[n], round(total * WEIGHTS[n] / w))) for n in names}


def sources_hash(src: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(src.rglob("*")):  # what prepare carries: not the __pycache__ an import leaves
        if p.is_file() and not _skip(p.relative_to(src)):
            h.update(str(p.relative_to(src)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class Cmd:
    argv: list[str]
    cwd: Path
    env: dict = field(default_factory=dict)
    unset: tuple[str, ...] = ()  # variables removed from the environment


# torch_cluster's setup.py builds its 9 extensions one after the other with ninja off (and torch's
# non-ninja compiler hook is not thread-safe, so build_ext --parallel is out): run its setup.py in
# several processes, each keeping only some extensions (setuptools.setup wrapped, file unchanged).
SUBSET_DRIVER = """\
import sys, setuptools
keep = set(sys.argv[1].split(","))
_setup = setuptools.setup
def setup(**kw):
    kw["ext_modules"] = [e for e in kw.get("ext_modules") or [] if e.name.rsplit(".", 1)[-1] in keep]
    return _setup(**kw)
setuptools.setup = setup
sys.argv = ["setup.py", *sys.argv[2:]]
exec(compile(open("setup.py").read(), "setup.py", "exec"), {"__name__": "__main__", "__file__": "setup.py"})
"""


def plan(name: str, work: Path, site: Path, jobs: int, arch: str) -> tuple[list[list[Cmd]], str]:
    """Stages of commands (a stage's commands run at once; stages in order) and a note."""
    py = sys.executable
    env = {"TORCH_CUDA_ARCH_LIST": arch, "MAX_JOBS": str(jobs), "FORCE_CUDA": "1"}
    tmp = work / "_build"
    if name == "pointnet2_ops":
        n = patch_arch_list(work / "setup.py")
        n += patch_arch_list(work / "pointnet2_ops" / "pointnet2_utils.py")  # its JIT fallback
        note = f"arch list patched ({n} assignment(s) now honour TORCH_CUDA_ARCH_LIST={arch})"
        cmd = [py, "setup.py", "build", "--build-base", str(tmp), "--build-lib", str(site)]
        return [[Cmd(cmd, work, env)]], note
    if name == "chamfer":
        ext = work / "extensions" / "chamfer_dist"
        cmd = [py, "setup.py", "build_ext", "--build-lib", str(site), "--build-temp", str(tmp)]
        return [[Cmd(cmd, ext, env)]], "module chamfer; wrapper extensions.chamfer_dist from src/Point-MAE"
    if name == "knn_cuda":
        pkg = site / "knn_cuda"
        if pkg.exists():
            shutil.rmtree(pkg)
        shutil.copytree(work / "knn_cuda", pkg)
        code = f"import sys; sys.path.insert(0, {str(site)!r}); import knn_cuda; print('built', knn_cuda._knn)"
        # torch's JIT loader rebuilds when its flags change: build with TORCH_CUDA_ARCH_LIST unset (the
        # visible GPU, +PTX), as gpu_bench imports it, so that the import there finds it up to date
        cmd = Cmd([py, "-c", code], work, {"MAX_JOBS": str(jobs)}, unset=("TORCH_CUDA_ARCH_LIST",))
        return [[cmd]], "JIT-compiled by its import (arch: the visible GPU's, +PTX) into site/knn_cuda/csrc/_ext"
    if name == "torch_cluster":
        exts = sorted(f"_{p.stem}_cuda" for p in (work / "csrc").glob("*.cpp") if "hip" not in p.name)
        groups = [exts[i::jobs] for i in range(min(jobs, len(exts)))]
        env = {**env, "FORCE_ONLY_CUDA": "1", "MAX_JOBS": "1"}
        stage = []
        for i, g in enumerate(groups):
            argv = [py, "-c", SUBSET_DRIVER, ",".join(g)]
            if i == 0:
                argv += ["build_py", "--build-lib", str(site)]
            argv += ["build_ext", "--build-lib", str(site), "--build-temp", str(tmp / str(i))]
            stage.append(Cmd(argv, work, env))
        return [stage], f"{len(exts)} CUDA extensions in {len(groups)} processes"
    raise ValueError(name)


def _last_error(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    hits = [ln for ln in lines if re.search(r"error|Error|fatal|FAILED|assert", ln)]
    return (hits or lines or ["(empty log)"])[-1][:200]


LIVE: set[subprocess.Popen] = set()  # running builds, each in its own process group


def _kill(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _on_term(signum, frame):  # gpu_check stopping the peer build: take the compilers down too
    for p in list(LIVE):
        _kill(p)
    raise SystemExit(128 + signum)


def run_stage(cmds: list[Cmd], log: Path, deadline: float) -> tuple[str, Path]:
    """Run commands at once, each logged (log, log.1, ...); kill every one at the deadline."""
    procs = []
    for i, c in enumerate(cmds):
        lp = log if i == 0 else log.with_suffix(f".{i}.log")
        fh = open(lp, "a")
        env = {k: v for k, v in {**os.environ, **c.env}.items() if k not in c.unset}
        unset = "".join(f"-u {k} " for k in c.unset)
        fh.write(f"$ (cd {c.cwd}; env {unset}{' '.join(f'{k}={v}' for k, v in c.env.items())} {' '.join(c.argv)})\n")
        fh.flush()
        p = subprocess.Popen(
            c.argv,
            cwd=c.cwd,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # its own process group: a timeout kills nvcc and ninja too
        )
        LIVE.add(p)
        procs.append((p, fh, lp))
    outcome, bad = "ok", log
    for p, fh, lp in procs:
        try:
            rc = p.wait(timeout=max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            rc = None
        if rc is None:
            for q, _, _ in procs:
                if q.poll() is None:
                    _kill(q)
                    q.wait()
            outcome, bad = "timeout", lp
        elif rc != 0 and outcome == "ok":
            outcome, bad = f"rc={rc}", lp
        fh.close()
    LIVE.difference_update(p for p, _, _ in procs)
    return outcome, bad


def build_one(name: str, root: Path, jobs: int, arch: str, timeout: float, facts: dict) -> dict:
    """Build one peer into root/site within ``timeout`` seconds; never raises."""
    t0 = time.time()
    src, site = root / SRC_DIRS[name], root / "site"
    work, log = root / "work" / name, root / "logs" / f"{name}.log"
    for old in [log, *log.parent.glob(f"{name}.*.log")]:
        old.unlink(missing_ok=True)
    res = {"peer": name, "log": str(log.relative_to(ROOT) if log.is_relative_to(ROOT) else log)}
    if name == "knn_cuda" and not facts.get("gpu"):
        return {**res, "status": "skipped", "detail": "needs a visible GPU (built by its import, which asserts one)"}
    try:
        if work.exists():
            shutil.rmtree(work)
        shutil.copytree(src, work, ignore=shutil.ignore_patterns(*SKIP_PARTS))
        stages, res["note"] = plan(name, work, site, jobs, arch)
        res["status"] = "ok"
        for stage in stages:
            outcome, bad = run_stage(stage, log, t0 + timeout)
            if outcome == "timeout":
                res.update(status="timeout", detail=f"time box of {timeout:.0f} s reached")
            elif outcome != "ok":
                res.update(status="FAILED", detail=f"{outcome}: {_last_error(bad)}")
            if outcome != "ok":
                break
    except Exception as exc:  # a peer that cannot be set up is reported, not fatal
        res.update(status="FAILED", detail=f"{type(exc).__name__}: {exc}"[:300])
    res["seconds"] = round(time.time() - t0, 1)
    return res


def status_line(r: dict) -> str:
    secs = f" in {r['seconds']:.0f} s" if "seconds" in r else ""
    tail = f": {r['detail']}" if r.get("detail") else ""
    return f"peer {r['peer']}: {r['status']}{secs}{tail} (log {r['log']})"


def build(args) -> int:
    root = Path(args.root)
    present = [n for n, d in SRC_DIRS.items() if (root / d).is_dir()]
    if not present:
        print(f"gpu_peers: no peer sources under {root} (run `gpu_peers.py prepare` where they are)")
        return 0
    signal.signal(signal.SIGTERM, _on_term)
    if args.nice:
        os.nice(args.nice)  # the builds it starts inherit it: clora3d's own build keeps the CPU first
    home = cuda_home()
    if home and not (os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")):
        os.environ["CUDA_HOME"] = home  # inherited by every build
    facts = torch_facts()
    extra = math_headers_path(os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"), facts["site"])
    if extra:  # CPATH: searched after every -I, so the toolkit's own headers still come first
        os.environ["CPATH"] = os.pathsep.join([*filter(None, [os.environ.get("CPATH")]), *extra])
        print(f"gpu_peers: the toolkit has no cusparse.h: CPATH += {len(extra)} nvidia wheel include folders")
    arch = args.arch or facts["capability"]
    if not arch:
        raise SystemExit("gpu_peers: no GPU visible; give --arch (e.g. --arch 9.0 for an H200)")
    key = {**{k: facts[k] for k in ("torch", "cuda", "python")}, "arch": arch}
    key["sources"] = {n: sources_hash(root / SRC_DIRS[n]) for n in present}
    site, info_path = root / "site", root / "site" / "BUILD_INFO.json"
    done = {}
    if info_path.exists():
        old = json.loads(info_path.read_text())
        if {k: v for k, v in old.items() if k != "results"} == key:
            done = {n: r for n, r in old.get("results", {}).items() if r["status"] == "ok" and n in present}
    if not done and site.exists():
        shutil.rmtree(site)  # built for another torch, GPU or sources
    site.mkdir(parents=True, exist_ok=True)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    todo = [n for n in present if n not in done and (not args.only or n in args.only.split(","))]
    jobs = split_jobs(args.jobs or os.cpu_count() or 1, todo)
    print(
        f"gpu_peers: building {', '.join(todo) or 'nothing'} for TORCH_CUDA_ARCH_LIST={arch} "
        f"(torch {facts['torch']}, CUDA {facts['cuda']}, CUDA_HOME={home}); jobs {jobs}; "
        f"time box {args.timeout:.0f} s each",
        flush=True,
    )
    results = {n: {**r, "status": "ok", "detail": "already built"} for n, r in done.items()}
    threads = []
    for n in todo:

        def work(n=n):
            results[n] = build_one(n, root, jobs[n], arch, args.timeout, facts)
            print(status_line(results[n]), flush=True)

        threads.append(threading.Thread(target=work, daemon=True))
        threads[-1].start()
    for t in threads:
        t.join()
    for n in done:
        print(status_line(results[n]))
    info_path.write_text(json.dumps({**key, "results": results}, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(PEERS), help="peer folder (default build/peers)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="copy peer sources into ROOT (here, not on the GPU machine)")
    p.add_argument("--pointnet2", help="erikwijmans/Pointnet2_PyTorch (git repository or folder)")
    p.add_argument("--point-mae", help="Pang-Yatian/Point-MAE (git repository or folder)")
    p.add_argument("--knn-cuda", help="unlimblue/KNN_CUDA (git repository or folder)")
    p.add_argument("--torch-cluster", help="torch-cluster sdist (.tar.gz), unpacked folder, or a version to download")
    b = sub.add_parser("build", help="build the carried peers into ROOT/site (on the GPU machine)")
    b.add_argument("--arch", default=None, help="TORCH_CUDA_ARCH_LIST (default: the visible GPU's capability)")
    b.add_argument("--jobs", type=int, default=None, help="compile jobs shared by all peers (default: CPU count)")
    b.add_argument("--timeout", type=float, default=360.0, help="time box per peer, seconds")
    b.add_argument("--nice", type=int, default=0, help="lower the builds' CPU priority by this much")
    b.add_argument("--only", default=None, help="comma-separated peer names")
    args = ap.parse_args(argv)
    return prepare(args) if args.cmd == "prepare" else build(args)


if __name__ == "__main__":
    sys.exit(main())
