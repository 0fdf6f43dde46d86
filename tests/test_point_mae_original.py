"""benchmarks/point_mae_original.py: the stand-ins against brute force, the import isolation, the timing
rows' format, and, where the Point-MAE checkout (build/peers/Point-MAE) and timm are present, the
original classifier built on the CPU: same parameters as clora3d's ViT-S, the same function given the
same weights, and one training step."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import types

import pytest
import torch
from torch import nn

from benchmarks import point_mae_original as pmo

pytestmark = pytest.mark.usefixtures("one_thread")

CHECKOUT = pmo.DEFAULT_CHECKOUT
HAVE_CHECKOUT = (CHECKOUT / "models" / "Point_MAE.py").is_file()
needs_checkout = pytest.mark.skipif(not HAVE_CHECKOUT, reason=f"no Point-MAE checkout at {CHECKOUT}")


def _one_call_timer(calls):
    def timer(device, fn, repeats, warmup):
        calls.append((repeats, warmup))
        fn()
        return [1.0 + len(calls)]

    return timer


def _brute_knn(ref, query, k):  # (B,Nr,D), (B,Nq,D) -> (B,Nq,k) distances and indices, by sorting
    d = ((query[:, :, None, :].double() - ref[:, None, :, :].double()) ** 2).sum(-1).sqrt()
    dist, idx = d.sort(dim=-1)
    return d, dist[..., :k], idx[..., :k]


# ----------------------------------------------------------------------------- kNN stand-in
@pytest.mark.parametrize("transpose_mode", [True, False])
def test_knn_standin_matches_brute_force(transpose_mode):
    g = torch.Generator().manual_seed(0)
    ref, query, k = torch.randn(3, 200, 3, generator=g), torch.randn(3, 40, 3, generator=g), 16
    knn = pmo.knn_cuda_standin().KNN(k=k, transpose_mode=transpose_mode)
    if transpose_mode:
        dist, idx = knn(ref, query)
    else:  # channel-first in, (B, k, Nq) out
        dist, idx = knn(ref.transpose(1, 2), query.transpose(1, 2))
        assert dist.shape == idx.shape == (3, k, 40)
        dist, idx = dist.transpose(1, 2), idx.transpose(1, 2)
    full, bdist, bidx = _brute_knn(ref, query, k)
    assert dist.shape == idx.shape == (3, 40, k)
    assert dist.dtype == torch.float32 and idx.dtype == torch.int64
    torch.testing.assert_close(dist.double(), bdist, atol=1e-4, rtol=0)
    assert (dist[..., 1:] >= dist[..., :-1]).all()  # ascending
    # the returned indices are at the returned distances, and the same sets as brute force (no ties here)
    torch.testing.assert_close(full.gather(-1, idx), dist.double(), atol=1e-4, rtol=0)
    assert torch.equal(idx.sort(-1).values, bidx.sort(-1).values)


def test_knn_standin_has_no_gradient_and_checks_the_batch():
    ref = torch.randn(2, 50, 3, requires_grad=True)
    dist, idx = pmo.TorchKNN(4, transpose_mode=True)(ref, ref[:, :5])
    assert not dist.requires_grad and not idx.requires_grad
    assert torch.equal(idx[..., 0], torch.arange(5).expand(2, 5))  # a query in ref finds itself first
    with pytest.raises(AssertionError, match="ref.shape"):
        pmo.TorchKNN(4, transpose_mode=True)(ref, torch.randn(3, 5, 3))


# ----------------------------------------------------------------------------- other stand-ins
def test_pointnet2_standin_fps_and_gather():
    g = torch.Generator().manual_seed(1)
    xyz = torch.randn(2, 100, 3, generator=g)
    pkg, utils = pmo.pointnet2_standin()
    assert pkg.pointnet2_utils is utils
    idx = utils.furthest_point_sample(xyz, 10)
    assert idx.dtype == torch.int32 and idx.shape == (2, 10)
    for b in range(2):  # brute force: start at 0, then the point farthest from the chosen set
        chosen = [0]
        for _ in range(9):
            d = torch.cdist(xyz[b], xyz[b, chosen]).min(1).values
            chosen.append(int(d.argmax()))
        assert idx[b].tolist() == chosen
    feats = torch.randn(2, 5, 100, generator=g)
    out = utils.gather_operation(feats, idx)
    assert out.shape == (2, 5, 10)
    assert torch.equal(out, torch.stack([feats[b][:, idx[b].long()] for b in range(2)]))


def test_easydict_termcolor_and_chamfer_standins():
    d = pmo.easydict_standin().EasyDict({"a": 1, "b": {"c": 2}}, e=3)
    assert isinstance(d, dict) and d.a == 1 and d.b.c == 2 and d.e == 3 and d.get("a") == 1
    d.f = 4
    assert d["f"] == 4 and "NAME" not in d
    with pytest.raises(AttributeError):
        getattr(d, "missing")  # noqa: B009
    assert pmo.termcolor_standin().colored("x", "red", attrs=["bold"]) == "x"
    stub = pmo.chamfer_stub("ModuleNotFoundError: No module named 'chamfer'")
    with pytest.raises(RuntimeError, match="ChamferDistanceL2.*No module named 'chamfer'.*pre-train"):
        stub.ChamferDistanceL2()


def test_yaml_and_matplotlib_standins_refuse_to_be_used():
    with pytest.raises(RuntimeError, match="PyYAML is not installed .*why.*stand-in"):
        pmo.yaml_standin("why").safe_load("a: 1")
    with pytest.raises(AttributeError, match="matplotlib is not installed .*pyplot.figure"):
        _ = pmo.pyplot_standin("why").figure
    with pytest.raises(RuntimeError, match="matplotlib is not installed"):
        pmo.mplot3d_standin("why").Axes3D()
    assert pmo.matplotlib_standin().__path__ == [] and pmo.mpl_toolkits_standin().__path__ == []  # packages


# Point-MAE's config layout (flow mappings, nested ones before the model's, a trailing comma), not
# its values: the reader without PyYAML must agree with PyYAML on it
CONFIG_TEXT = """optimizer : {
  type: AdamW,
  kwargs: {
  lr : 0.0005,
  weight_decay : 0.05
}}
dataset : {
  train : { _base_: cfgs/dataset_configs/ModelNet40.yaml,
            others: {subset: 'train'}}}
model : {
  NAME: PointTransformer,
  trans_dim: 96,
  drop_path_rate: 0.25,
  scale: 1e-3,
  eps: 1.0e-6,
  name: 'quoted',
  digits: '5',
  flag: true,
  nothing: null,
  cls_dim: 40,
}

npoints: 1024
"""


def test_model_section_without_pyyaml_equals_pyyaml(tmp_path, monkeypatch):
    yaml = pytest.importorskip("yaml")
    want = yaml.safe_load(CONFIG_TEXT)["model"]
    assert pmo.model_section(CONFIG_TEXT) == want
    (tmp_path / "cfgs").mkdir()
    (tmp_path / pmo.CONFIG_FILE).write_text(CONFIG_TEXT)
    with_yaml = pmo.read_config(tmp_path, cls_dim=7)
    monkeypatch.setitem(sys.modules, "yaml", None)  # as on the GPU machine
    assert pmo.read_config(tmp_path, cls_dim=7) == with_yaml == {**want, "cls_dim": 7}


@pytest.mark.parametrize(
    "text", ["other: {a: 1}\n", "model: {a: 1, b: {c: 2}}\n", "model: {a: 1, b}\n", "model:\n  a: 1\n"]
)
def test_model_section_refuses_what_it_cannot_read(tmp_path, monkeypatch, text):
    with pytest.raises(ValueError, match="PyYAML"):
        pmo.model_section(text)
    (tmp_path / "cfgs").mkdir()
    (tmp_path / pmo.CONFIG_FILE).write_text(text)
    monkeypatch.setitem(sys.modules, "yaml", None)
    with pytest.raises(ValueError, match="finetune_modelnet.yaml: .*PyYAML"):
        pmo.read_config(tmp_path)


# ----------------------------------------------------------------------------- import machinery
def test_ensure_module_uses_the_real_module_when_it_imports(tmp_path, monkeypatch):
    (tmp_path / "pmo_fake_real.py").write_text("MARK = 'real'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pmo_fake_real", raising=False)
    made = []
    mod, err = pmo.ensure_module("pmo_fake_real", lambda e: made.append(e) or types.ModuleType("x"))
    monkeypatch.delitem(sys.modules, "pmo_fake_real")
    assert err is None and mod.MARK == "real" and made == []


def test_ensure_module_inserts_a_standin_only_when_missing(tmp_path, monkeypatch):
    # a real package with a missing submodule: the stand-in goes into sys.modules and onto the parent
    (tmp_path / "pmo_fake_pkg").mkdir()
    (tmp_path / "pmo_fake_pkg" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("pmo_fake_pkg", "pmo_fake_pkg.missing"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import pmo_fake_pkg

    mod, err = pmo.ensure_module("pmo_fake_pkg.missing", pmo.chamfer_stub)
    try:
        assert err.startswith("ModuleNotFoundError") and "pmo_fake_pkg.missing" in err
        assert sys.modules["pmo_fake_pkg.missing"] is mod and pmo_fake_pkg.missing is mod
    finally:
        sys.modules.pop("pmo_fake_pkg.missing", None)
        sys.modules.pop("pmo_fake_pkg", None)
    # an installed knn_cuda is used as it is (a fake one here) ...
    (tmp_path / "knn_cuda.py").write_text("class KNN:\n    REAL = True\n")
    monkeypatch.setitem(sys.modules, "knn_cuda", None)  # restored (or removed) after the test
    del sys.modules["knn_cuda"]
    mod, err = pmo.ensure_module("knn_cuda", pmo.knn_cuda_standin)
    assert err is None and mod.KNN.REAL and not hasattr(mod, "STANDIN")
    # ... and one that does not import (None in sys.modules blocks the import) is replaced
    sys.modules["knn_cuda"] = None
    mod, err = pmo.ensure_module("knn_cuda", pmo.knn_cuda_standin)
    assert err.startswith("ModuleNotFoundError") and mod.KNN is pmo.TorchKNN and sys.modules["knn_cuda"] is mod


def _fake_checkout(root):
    for pkg in ("utils", "models"):
        (root / pkg).mkdir(parents=True)
        (root / pkg / "__init__.py").write_text(f"WHO = 'checkout {pkg}'\n")
    (root / "models" / "sub.py").write_text("from utils import WHO\n")
    return root


def test_isolated_import_restores_sys_path_and_sys_modules(tmp_path, monkeypatch):
    root = _fake_checkout(tmp_path / "ck")
    ours = types.ModuleType("utils")  # a module of the same name loaded before
    monkeypatch.setitem(sys.modules, "utils", ours)
    monkeypatch.delitem(sys.modules, "models", raising=False)
    path = list(sys.path)
    with pmo.isolated_import(root) as standins:
        assert sys.path[0] == str(root.resolve()) and "utils" not in sys.modules
        import models.sub
        import utils

        assert utils.WHO == "checkout utils" and models.sub.WHO == "checkout utils"
        sys.modules["pmo_fake_standin"] = types.ModuleType("pmo_fake_standin")
        standins.append("pmo_fake_standin")
    assert sys.path == path
    assert sys.modules["utils"] is ours
    assert not {"models", "models.sub", "pmo_fake_standin"} & set(sys.modules)
    assert models.sub.WHO == "checkout utils"  # what was imported keeps working


def test_isolated_import_restores_after_an_error(tmp_path, monkeypatch):
    root = _fake_checkout(tmp_path / "ck")
    monkeypatch.delitem(sys.modules, "utils", raising=False)
    path = list(sys.path)
    with pytest.raises(ZeroDivisionError), pmo.isolated_import(root):
        import utils  # noqa: F401

        raise ZeroDivisionError
    assert sys.path == path and "utils" not in sys.modules


def test_build_original_rejects_a_missing_checkout_and_a_bad_mode(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Point-MAE checkout"):
        pmo.build_original(tmp_path, device="cpu", pointnet2="standin")
    with pytest.raises(ValueError, match="pointnet2"):
        pmo.build_original(tmp_path, device="cpu", pointnet2="yes")


# ----------------------------------------------------------------------------- timing rows
class _Tiny(nn.Module):
    def __init__(self, classes=5):
        super().__init__()
        self.lin = nn.Linear(3, classes)
        self.frozen = nn.Parameter(torch.ones(2), requires_grad=False)

    def forward(self, pts):
        return self.lin(pts).mean(1)


def test_time_original_rows_have_run_models_format():
    from benchmarks import gpu_bench

    model = _Tiny()
    pts, labels = torch.randn(4, 16, 3), torch.tensor([0, 1, 2, 3])
    w0 = model.lin.weight.detach().clone()
    calls = []
    rows = pmo.time_original(model, pts, labels, ("fp32", "tf32", "bf16"), 3, 2, _one_call_timer(calls))
    assert calls == [(3, 2)] * 6  # step and inference per precision, with the given repeats and warm-up
    assert not torch.equal(model.lin.weight, w0)  # AdamW stepped
    assert [r["precision"] for r in rows] == ["fp32", "tf32", "bf16"]
    for i, r in enumerate(rows):
        assert r["method"] == pmo.METHOD and r["trainable"] == 3 * 5 + 5  # requires_grad only
        assert r["step_ms"] == 2.0 + 2 * i and r["inference_ms"] == 3.0 + 2 * i
        assert r["samples_per_s"] == pytest.approx(1e3 * 4 / r["step_ms"])
        assert r["peak_mib"] is None and (r["batch"], r["points"], r["preset"]) == (4, 16, "vit_s")
    assert torch.get_float32_matmul_precision() == "highest"
    assert all(p.grad is None for p in model.parameters())
    with pytest.raises(ValueError, match="precision"):
        pmo.time_original(model, pts, labels, ("fp16",), 1, 0, _one_call_timer([]))
    ref = gpu_bench.run_model(torch.device("cpu"), quick=True, methods=("full",), precisions=("fp32",))
    assert set(rows[0]) == set(ref[0])


# ----------------------------------------------------------------------------- the real checkout
@needs_checkout
def test_the_checkouts_modelnet_config_is_vit_s():
    assert pmo.read_config(CHECKOUT) == pmo.VIT_S
    assert pmo.read_config(CHECKOUT, cls_dim=15) == {**pmo.VIT_S, "cls_dim": 15}


@pytest.fixture(scope="module")
def original():
    if not HAVE_CHECKOUT:
        pytest.skip(f"no Point-MAE checkout at {CHECKOUT}")
    pytest.importorskip("timm", reason="Point-MAE's model imports timm (not a clora3d test dependency)")
    path, mods = list(sys.path), set(sys.modules)
    torch.manual_seed(0)
    model, info = pmo.build_original(CHECKOUT, cls_dim=40, device="cpu", pointnet2="standin")
    return model, info, path, mods


def test_original_builds_isolated_with_recorded_standins(original):
    model, info, path, mods = original
    assert sys.path == path
    added = set(sys.modules) - mods
    assert not {k for k in added if k.partition(".")[0] in pmo.CLASHING}
    assert not {"knn_cuda", "pointnet2_ops", "pointnet2_ops.pointnet2_utils", "extensions.chamfer_dist"} & added
    assert type(model).__name__ == "PointTransformer" and type(model).__module__ == "models.Point_MAE"
    assert info["vit_s"] and info["config"] == pmo.VIT_S
    assert info["pointnet2_ops"].startswith("stand-in") and "pointnet2_ops" in info["standins"]
    assert info["knn"].startswith(("stand-in", "real"))
    assert type(model.group_divider.knn).__name__ in ("TorchKNN", "KNN")
    assert info["chamfer"].startswith(("stub", "real")) and info["timm"]


@needs_checkout
def test_original_builds_without_pyyaml_and_matplotlib(monkeypatch):
    """The GPU machine has neither (timm may bring PyYAML): the checkout's utils/config.py and
    utils/misc.py import them at module level. Stand-ins, recorded, and the blocked entries put back."""
    pytest.importorskip("timm", reason="Point-MAE's model imports timm (not a clora3d test dependency)")
    blocked = ("yaml", "matplotlib", "matplotlib.pyplot", "mpl_toolkits", "mpl_toolkits.mplot3d")
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)
    model, info = pmo.build_original(CHECKOUT, cls_dim=40, device="cpu", pointnet2="standin")
    assert info["vit_s"] and info["config"] == pmo.VIT_S
    assert set(blocked) <= set(info["standins"])
    assert all(info[name].startswith("stand-in") for name in blocked)
    assert all(sys.modules[name] is None for name in blocked)
    assert model(torch.rand(2, 1024, 3)).shape == (2, 40)


def test_original_has_clora3ds_vit_s_parameters_and_computes_the_same_function(original):
    from clora3d.engine import build

    model, info, *_ = original
    ours = build.build_model({"model": {"NAME": "PointTransformer", "preset": "vit_s", "cls_dim": 40}})
    n = sum(p.numel() for p in model.parameters())
    assert n == info["parameters"] == sum(p.numel() for p in ours.parameters()) == 22_099_752
    theirs = model.state_dict()
    assert {k: v.shape for k, v in theirs.items()} == {k: v.shape for k, v in ours.state_dict().items()}
    ours.load_state_dict(theirs)
    pts = torch.randn(2, 512, 3)
    pts = pts / pts.norm(dim=-1, keepdim=True)  # on a sphere: no point near the origin (pointnet2's FPS skips those)
    model.eval(), ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(pts), ours(pts), atol=1e-5, rtol=1e-4)


def test_original_one_training_step(original):
    model, *_ = original
    pts, labels = torch.randn(2, 128, 3), torch.tensor([3, 7])
    before = model.cls_head_finetune[8].weight.detach().clone()
    calls = []
    (row,) = pmo.time_original(model, pts, labels, ("fp32",), 1, 0, _one_call_timer(calls))
    assert calls == [(1, 0), (1, 0)]
    assert not torch.equal(model.cls_head_finetune[8].weight, before)
    assert row["method"] == "original Point-MAE (full)" and row["trainable"] == 22_099_752
    assert (row["batch"], row["points"]) == (2, 128)


@needs_checkout
def test_require_mode_refuses_without_pointnet2_ops():
    if importlib.util.find_spec("pointnet2_ops") is not None:
        pytest.skip("pointnet2_ops is installed here")
    with pytest.raises(ImportError, match="pointnet2_ops does not import"):
        pmo.build_original(CHECKOUT, device="cpu")


@needs_checkout
def test_an_unbuilt_pointnet2_ops_is_refused_without_importing_it(tmp_path, monkeypatch):
    """A failed peer build leaves the package without _ext; importing it would JIT-compile for the
    architectures its source hard-codes. It is looked up, found unbuilt and refused, never imported."""
    pkg = tmp_path / "pointnet2_ops"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise AssertionError('imported: it would JIT-compile now')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert pmo.pointnet2_ext_built() is False
    with pytest.raises(ImportError, match="pointnet2_ops._ext is not built"):
        pmo.build_original(CHECKOUT, device="cpu")
    assert "pointnet2_ops" not in sys.modules
    (pkg / f"_ext{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"")
    assert pmo.pointnet2_ext_built() is True


def test_require_mode_uses_an_installed_pointnet2_ops_and_leaves_it_loaded(original, tmp_path, monkeypatch):
    """'require' takes pointnet2_ops from the environment (a fake one on the CPU here) and records
    where it came from; a real third-party module stays loaded after the build, as after any import."""
    pkg = tmp_path / "site" / "pointnet2_ops"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / f"_ext{importlib.machinery.EXTENSION_SUFFIXES[0]}").write_bytes(b"")  # built (never loaded here)
    (pkg / "pointnet2_utils.py").write_text(
        "from benchmarks.point_mae_original import _fps as furthest_point_sample\n"
        "from benchmarks.point_mae_original import _gather_operation as gather_operation\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in ("pointnet2_ops", "pointnet2_ops.pointnet2_utils"):
        monkeypatch.setitem(sys.modules, name, None)  # restored (or removed) after the test
        del sys.modules[name]
    model, info = pmo.build_original(CHECKOUT, device="cpu")
    assert info["pointnet2_ops"] == f"real ({pkg / 'pointnet2_utils.py'})"
    assert "pointnet2_ops" not in info["standins"]
    assert sys.modules["pointnet2_ops.pointnet2_utils"].__file__ == str(pkg / "pointnet2_utils.py")
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 128, 3)).shape == (2, 40)
