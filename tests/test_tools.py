"""Command-line tools: infer (on a hand-written .ply), export (adapter + merged Point-MAE layout),
visualize (PNG files with content) and the one-line user errors with exit code 2."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", TOOLS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _ellipsoid(n: int, axes=(1.0, 0.4, 0.6), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return (v * np.asarray(axes) * 3.0 + np.array([5.0, -2.0, 1.0])).astype(np.float32)


def _write_ascii_ply(path: Path, xyz: np.ndarray) -> Path:
    lines = [
        "ply",
        "format ascii 1.0",
        f"element vertex {len(xyz)}",
        "property float x",
        "property float y",
        "property float z",
        "end_header",
    ]
    lines += [f"{x:.6f} {y:.6f} {z:.6f}" for x, y, z in xyz]
    path.write_text("\n".join(lines) + "\n")
    return path


from np_refs import np_fps as _np_fps  # noqa: E402

MODEL = {"NAME": "PointTransformer", "preset": "tiny", "cls_dim": 40, "drop_path_rate": 0.0}


@pytest.fixture(scope="module")
def merged_model(tmp_path_factory):
    """A tiny 40-class model saved in the official Point-MAE layout + a config naming ModelNet40."""
    from clora3d.models import build_model
    from clora3d.models.checkpoint import save_point_mae_checkpoint

    d = tmp_path_factory.mktemp("merged")
    torch.manual_seed(0)
    model = build_model(dict(MODEL)).eval()
    # make the head decisive so the top class is well separated from the runner-up
    with torch.no_grad():
        for p in model.cls_head_finetune.parameters():
            p.mul_(3.0)
    ckpt = save_point_mae_checkpoint(model, d / "merged.pth")
    cfg = d / "cfg.yaml"
    ds = {"NAME": "ModelNet40", "root": str(d / "nowhere")}
    cfg.write_text(
        yaml.safe_dump(
            {
                "task": "classification",
                "model": dict(MODEL),
                "data": {"npoints": 64},
                "dataset": {"train": dict(ds), "test": ds},
                "log": {"root": str(d / "exp")},
            }
        )
    )
    return model, ckpt, cfg


def test_infer_ply_prints_class_name_and_matches_model(tmp_path, merged_model, capsys):
    from clora3d.data import MODELNET40_CLASSES

    model, ckpt, cfg = merged_model
    xyz = _ellipsoid(300)
    ply = _write_ascii_ply(tmp_path / "thing.ply", xyz)
    infer = _tool("infer")
    assert infer.main(["--cfg", str(cfg), "--ckpt", str(ckpt), str(ply), "--topk", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{ply}: ")
    name = out[0].split(": ", 1)[1].split(" (")[0]
    assert name in MODELNET40_CLASSES
    # independent reference: unit sphere + numpy FPS to 64 points + the model
    x = xyz.astype(np.float64) - xyz.mean(0)
    x /= np.linalg.norm(x, axis=1).max()
    with torch.no_grad():
        prob = torch.softmax(model(torch.from_numpy(x[_np_fps(x, 64)]).float()[None]), -1)[0]
    assert name == MODELNET40_CLASSES[int(prob.argmax())]
    assert infer.main(["--cfg", str(cfg), "--ckpt", str(ckpt), str(ply), "--topk", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    top = res[0]["top"]
    assert [t["class"] for t in top] == [MODELNET40_CLASSES[i] for i in prob.topk(3).indices.tolist()]
    assert top[0]["prob"] == pytest.approx(float(prob.max()), abs=1e-5)
    assert res[0]["points"] == 300 and res[0]["sampling"] == "fps"


def test_infer_folder_of_mixed_formats(tmp_path, merged_model, capsys):
    _, ckpt, cfg = merged_model
    folder = tmp_path / "clouds"
    folder.mkdir()
    np.save(folder / "a.npy", _ellipsoid(200, seed=1))
    np.savetxt(folder / "b.txt", _ellipsoid(40, seed=2))  # fewer points than npoints -> upsampled
    (folder / "notes.md").write_text("not a cloud")
    infer = _tool("infer")
    assert infer.main(["--cfg", str(cfg), "--ckpt", str(ckpt), str(folder), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert [Path(r["file"]).name for r in res] == ["a.npy", "b.txt"]
    assert res[1]["sampling"] == "upsampled" and len(res[0]["top"]) == 5


def _one_line_error(capsys, code: int) -> str:
    cap = capsys.readouterr()
    assert code == 2
    err = cap.err.strip()
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_user_errors_exit_2_with_one_line(tmp_path, merged_model, capsys):
    _, ckpt, cfg = merged_model
    infer = _tool("infer")
    err = _one_line_error(capsys, infer.main(["--cfg", str(cfg), "--ckpt", str(ckpt), str(tmp_path / "missing.ply")]))
    assert "missing.ply" in err and len(err.splitlines()) == 1
    bad = tmp_path / "bad.ply"
    bad.write_text("this is not a ply file\n")
    err = _one_line_error(capsys, infer.main(["--cfg", str(cfg), "--ckpt", str(ckpt), str(bad)]))
    assert "bad.ply" in err
    ply = _write_ascii_ply(tmp_path / "ok.ply", _ellipsoid(100))
    err = _one_line_error(capsys, infer.main(["--cfg", str(cfg), "--ckpt", str(tmp_path / "no.pth"), str(ply)]))
    assert "no.pth" in err
    # a checkpoint for another model: the ViT-S config cannot take tiny weights
    other = tmp_path / "vits.yaml"
    c = yaml.safe_load(Path(cfg).read_text())
    c["model"] = {"NAME": "PointTransformer", "preset": "vit_s", "cls_dim": 40}
    other.write_text(yaml.safe_dump(c))
    err = _one_line_error(capsys, infer.main(["--cfg", str(other), "--ckpt", str(ckpt), str(ply)]))
    assert str(ckpt) in err
    viz = _tool("visualize")
    err = _one_line_error(capsys, viz.main(["curves", str(tmp_path / "norun"), "--out", str(tmp_path / "x.png")]))
    assert "norun" in err
    export = _tool("export")
    err = _one_line_error(capsys, export.main(["--ckpt", str(ckpt), "--cfg", str(cfg)]))
    assert "--adapter" in err


def test_subprocess_error_has_no_traceback(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            str(TOOLS / "visualize.py"),
            "cloud",
            str(tmp_path / "nope.ply"),
            "--out",
            str(tmp_path / "o.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "nope.ply" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------------
# visualize
# ------------------------------------------------------------------------------------------------


def _png_ok(path: Path, min_w: int = 200) -> np.ndarray:
    import matplotlib.image as mpimg

    assert path.is_file() and path.stat().st_size > 1000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[1] >= min_w and img.shape[0] >= 150
    rgb = img[..., :3]
    non_white = (rgb < 0.95).any(-1).mean()
    assert non_white > 0.005, "image is blank"
    return rgb


def test_visualize_cloud_partseg_and_curves(tmp_path, capsys):
    viz = _tool("visualize")
    ply = _write_ascii_ply(tmp_path / "c.ply", _ellipsoid(400))
    assert viz.main(["cloud", str(ply), "--out", str(tmp_path / "cloud.png")]) == 0
    _png_ok(tmp_path / "cloud.png")

    # a labelled ShapeNetPart-style file: x y z nx ny nz part (Chair parts 12..15)
    xyz = _ellipsoid(400, seed=3)
    lab = 12 + (xyz[:, 1] > xyz[:, 1].mean()).astype(int) + 2 * (xyz[:, 0] > xyz[:, 0].mean())
    np.savetxt(tmp_path / "shape.txt", np.concatenate([xyz, np.zeros_like(xyz), lab[:, None]], 1))
    assert viz.main(["partseg", str(tmp_path / "shape.txt"), "--out", str(tmp_path / "parts.png")]) == 0
    rgb = _png_ok(tmp_path / "parts.png")
    # four parts -> at least four distinct saturated colours in the render
    sat = rgb[(rgb.max(-1) - rgb.min(-1)) > 0.2]
    assert len({tuple(np.round(c, 1)) for c in sat}) >= 4

    run = tmp_path / "run"
    run.mkdir()
    rows = ["epoch,train_loss,acc,lr"] + [
        f"{e},{2.0 / (e + 1):.4f},{40 + 10 * e},{1e-3 * (5 - e) / 5:.6f}" for e in range(5)
    ]
    (run / "metrics.csv").write_text("\n".join(rows) + "\n")
    assert viz.main(["curves", str(run), "--out", str(tmp_path / "curves.png")]) == 0
    rgb = _png_ok(tmp_path / "curves.png", min_w=600)  # three panels side by side
    out = capsys.readouterr().out
    assert "curves.png" in out


# ------------------------------------------------------------------------------------------------
# a real run: train 1 epoch with CLoRA, export adapter + merged, infer with both
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from clora3d.data.modelnet import write_fewshot_folds_from_arrays
    from clora3d.engine.config import load_config
    from clora3d.engine.trainer import train

    d = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    axes = [(1, 1, 1), (1, 0.3, 0.3), (0.3, 1, 0.3), (0.3, 0.3, 1), (1, 1, 0.2)]

    def split(n):
        pts = []
        for c in range(5):
            for _ in range(n):
                v = rng.normal(size=(96, 3))
                v /= np.linalg.norm(v, axis=1, keepdims=True)
                pts.append(np.concatenate([v * axes[c], np.zeros((96, 3))], 1).astype(np.float32))
        return pts, np.repeat(np.arange(5), n)

    root = d / "folds"
    write_fewshot_folds_from_arrays(split(4), split(2), root, ways=(5,), shots=(4,), folds=1, eval_sample=2, seed=0)
    ds = {"NAME": "ModelNetFewShot", "root": str(root), "way": 5, "shot": 4, "fold": 0}
    cfg_file = d / "cfg.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "task": "classification",
                "model": {"NAME": "PointTransformer", "preset": "tiny", "cls_dim": 5, "drop_path_rate": 0.0},
                "peft": {"NAME": "clora"},
                "data": {"npoints": 64, "train_sampling": "fps"},
                "scheduler": {"warmup_epochs": 0},
                "train": {"epochs": 1, "batch_size": 5, "num_workers": 0, "device": "cpu"},
                "dataset": {"train": ds, "test": dict(ds)},
                "log": {"root": str(d / "exp"), "tensorboard": False, "progress": False},
            }
        )
    )
    cfg = load_config(cfg_file)
    res = train(cfg, run_dir=str(d / "exp" / "run"))
    return Path(res["run_dir"]), cfg_file


def test_export_adapter_and_merged_then_infer(tmp_path, trained_run, capsys):
    from clora3d.engine.infer import Predictor

    run_dir, cfg_file = trained_run
    ckpt = next(p for p in (run_dir / "ckpt-best.pth", run_dir / "ckpt-last.pth") if p.is_file())
    export = _tool("export")
    adapter, merged = tmp_path / "adapter.pth", tmp_path / "merged.pth"
    assert export.main(["--ckpt", str(ckpt), "--adapter", str(adapter), "--merged", str(merged), "--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["method"] == "clora" and rep["max_abs_diff_merge"] < 1e-4
    blob = torch.load(merged, map_location="cpu", weights_only=True)
    keys = set(blob["base_model"])
    assert {"cls_token", "cls_pos", "blocks.blocks.0.attn.qkv.weight", "norm.weight"} <= keys
    assert any(k.startswith("cls_head_finetune.") for k in keys)
    assert not any("clora" in k.lower() or "lora" in k.lower() for k in keys)
    ad = torch.load(adapter, map_location="cpu", weights_only=True)
    n_adapter = sum(v.numel() for v in ad["state"].values())
    assert 0 < n_adapter < sum(v.numel() for v in blob["base_model"].values())

    ply = _write_ascii_ply(tmp_path / "x.ply", _ellipsoid(200))
    p_run = Predictor.from_checkpoint(ckpt).predict_file(ply, topk=5)
    p_merged = Predictor.from_checkpoint(merged, str(cfg_file)).predict_file(ply, topk=5)
    assert [t["index"] for t in p_run["top"]] == [t["index"] for t in p_merged["top"]]
    for a, b in zip(p_run["top"], p_merged["top"]):
        assert a["prob"] == pytest.approx(b["prob"], abs=1e-5)
    infer = _tool("infer")
    assert infer.main(["--ckpt", str(run_dir), str(ply), "--topk", "2"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.split(": ", 1)[1].split(" (")[0] == p_run["top"][0]["class"]

    err = _one_line_error(capsys, infer.main(["--ckpt", str(adapter), "--cfg", str(cfg_file), str(ply)]))
    assert "adapter" in err and str(adapter) in err

    viz = _tool("visualize")
    assert viz.main(["curves", str(run_dir), "--out", str(tmp_path / "c.png")]) == 0
    _png_ok(tmp_path / "c.png")


def test_infer_and_visualize_part_segmentation(tmp_path, capsys):
    """A part-seg run checkpoint (trainer's format: config + state) -> per-point labels restricted
    to the category's parts, equal to the model's restricted argmax; labels file; PNG render."""
    from clora3d.data import SEG_CLASSES
    from clora3d.engine.checkpoint import atomic_save
    from clora3d.models import build_model

    torch.manual_seed(0)
    mcfg = {"NAME": "PartSegModel", "preset": "tiny", "drop_path_rate": 0.0}
    model = build_model(dict(mcfg)).eval()
    ds = {"NAME": "ShapeNetPart", "root": str(tmp_path / "nowhere")}
    cfg = {
        "task": "partseg",
        "model": mcfg,
        "peft": {"NAME": "full"},
        "data": {"npoints": 128},
        "dataset": {"train": ds, "test": ds},
    }
    ckpt = atomic_save({"config": cfg, "model": model.state_dict(), "epoch": 0}, tmp_path / "ckpt-best.pth")
    xyz = _ellipsoid(128, seed=4)  # exactly npoints: no resampling, labels map 1:1
    f = tmp_path / "chair.npy"
    np.save(f, xyz)
    infer = _tool("infer")
    assert (
        infer.main(
            ["--ckpt", str(ckpt), str(f), "--category", "chair", "--save-labels", str(tmp_path / "labels"), "--json"]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out)[0]
    assert res["category"] == "Chair" and sum(res["part_counts"].values()) == 128
    saved = np.loadtxt(tmp_path / "labels" / "chair.txt")
    labels = saved[:, 3].astype(int)
    assert set(labels.tolist()) <= set(SEG_CLASSES["Chair"])
    x = xyz.astype(np.float64) - xyz.mean(0)
    x /= np.linalg.norm(x, axis=1).max()
    with torch.no_grad():
        logp = model(torch.from_numpy(x).float()[None], torch.eye(16)[[4]])[0].numpy()
    chair = np.array(SEG_CLASSES["Chair"])
    np.testing.assert_array_equal(labels, chair[logp[:, chair].argmax(-1)])
    err = _one_line_error(capsys, infer.main(["--ckpt", str(ckpt), str(f)]))
    assert "--category" in err
    viz = _tool("visualize")
    assert (
        viz.main(["partseg", str(f), "--ckpt", str(ckpt), "--category", "Chair", "--out", str(tmp_path / "p.png")]) == 0
    )
    _png_ok(tmp_path / "p.png")
    assert (
        viz.main(
            ["partseg", str(f), "--labels", str(tmp_path / "labels" / "chair.txt"), "--out", str(tmp_path / "q.png")]
        )
        == 0
    )
    _png_ok(tmp_path / "q.png")


def test_visualize_real_shapenetpart_sample(shared_data, tmp_path):
    """A real ShapeNetPart v0 shape (.pts + .seg with local part ids) renders with its labels."""
    seg_files = sorted(shared_data.glob("shapenetcore_partanno_segmentation_benchmark_v0/*/points_label/*.seg"))
    if not seg_files:
        pytest.skip("no ShapeNetPart v0 sample in the shared data")
    seg = seg_files[0]
    pts = seg.parent.parent / "points" / (seg.stem + ".pts")
    viz = _tool("visualize")
    out = tmp_path / "real.png"
    assert viz.main(["partseg", str(pts), "--labels", str(seg), "--out", str(out), "--quiet"]) == 0
    _png_ok(out)


# ------------------------------------------------------------------------------------------------
# the command line (clora3d/cli/): python -m clora3d, console script, one error path, logging
# ------------------------------------------------------------------------------------------------


def test_python_m_clora3d_without_command_prints_version_and_kernels():
    import clora3d

    r = subprocess.run([sys.executable, "-m", "clora3d"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"clora3d {clora3d.__version__}" and lines[1].startswith("clora3d kernels: ")
    r = subprocess.run(
        [sys.executable, "-m", "clora3d", "--version"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert r.returncode == 0 and r.stdout.strip() == f"clora3d {clora3d.__version__}"
    r = subprocess.run(
        [sys.executable, "-m", "clora3d", "no-such-command"], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert r.returncode == 2 and "invalid choice: 'no-such-command'" in r.stderr


def test_console_script_is_the_cli_main(capsys):
    tomllib = pytest.importorskip("tomllib")
    target = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["clora3d"]
    module, func = target.split(":")
    main = getattr(importlib.import_module(module), func)
    from clora3d import cli

    assert main is cli.main
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("clora3d ")


def test_cli_and_tool_report_the_same_user_error(tmp_path, merged_model, capsys):
    from clora3d import cli

    _, ckpt, cfg = merged_model
    args = ["--cfg", str(cfg), "--ckpt", str(ckpt), str(tmp_path / "missing.ply")]
    err = _one_line_error(capsys, cli.main(["infer", *args]))
    assert "missing.ply" in err and len(err.splitlines()) == 1
    assert _one_line_error(capsys, _tool("infer").main(args)) == err
    # bad usage is argparse's exit 2 with the command's own usage line
    with pytest.raises(SystemExit) as e:
        cli.main(["infer", "--ckpt", str(ckpt)])
    assert e.value.code == 2 and "usage: clora3d infer" in capsys.readouterr().err


def test_cli_interrupt_exits_130_with_the_hint(monkeypatch, capsys):
    import clora3d.engine.config as config
    from clora3d import cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(config, "load_config", interrupted)
    assert cli.main(["train", "--cfg", "x.yaml"]) == 130
    assert capsys.readouterr().err == "interrupted; continue with --resume\n"


def test_cli_logging_levels_go_to_stderr_and_are_restored(tmp_path, monkeypatch, capsys):
    """-v / default / -q (before or after the command): clora3d's messages on stderr at that level,
    the result on stdout; the logging state is what it was once the command returns."""
    import logging

    import clora3d.data.synthetic as syn
    from clora3d import cli

    def fake_write(out, **kw):
        logging.getLogger("clora3d.data.synthetic").debug("DEBUG-LINE")
        logging.getLogger("clora3d.data.synthetic").warning("WARN-LINE")

    monkeypatch.setattr(syn, "write_modelnet40", fake_write)
    ours, root = logging.getLogger("clora3d"), logging.getLogger()
    level, handlers = ours.level, list(root.handlers)
    base = ["make-synthetic", "--root", str(tmp_path), "--format", "modelnet40"]
    seen = {}
    for flags in ([], ["-v"], ["-q"], ["-qq"]):
        for argv in ([*flags, *base], [*base, *flags]):
            assert cli.main(argv) == 0
            cap = capsys.readouterr()
            assert cap.out == f"modelnet40 -> {tmp_path / 'ModelNet' / 'modelnet40_normal_resampled'}\n"
            got = ("DEBUG-LINE" in cap.err, "done in" in cap.err, "warning: WARN-LINE" in cap.err)
            assert seen.setdefault(tuple(flags), got) == got, argv  # the same before and after the command
            assert ours.level == level and root.handlers == handlers
    assert seen == {
        (): (False, True, True),
        ("-v",): (True, True, True),
        ("-q",): (False, False, True),
        ("-qq",): (False, False, False),
    }


def test_library_imports_none_of_the_applications():
    code = (
        "import importlib.util, sys\n"
        "import clora3d, clora3d.ops, clora3d.data, clora3d.models, clora3d.profile, clora3d.engine.infer\n"
        "print(sorted(m for m in sys.modules if m.startswith(('clora3d.cli', 'benchmarks'))))\n"
        "print([n for n in ('clora3d.doctor', 'clora3d.ops.bench', 'clora3d.profile.bench_model')\n"
        "       if importlib.util.find_spec(n) is not None])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["[]", "[]"]
