"""Issue #17 items 3 and 4: vbp reads timm train.py checkpoints (EMA weights by default,
--no-ema for the raw ones), and its pruned models load where vbp_cli cannot be imported:
ONNX, TorchScript and torch.export files, and timm's own loader (config.json)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.helpers import run_cli

NAME = "vit_tiny_patch16_224"
KW = {"img_size": 16, "patch_size": 4, "num_classes": 10, "embed_dim": 48, "depth": 2}
MODEL = ["--model", NAME, "--model-kwargs", json.dumps({**KW, "num_heads": 2})]


def vbp(*args: str, cwd: Path) -> dict:
    res = run_cli("vbp", *args, "--json", cwd=cwd)
    assert res.code == 0, res.stderr
    return json.loads(res.stdout)


def timm_train_checkpoint(path: Path) -> tuple[dict, dict]:
    """A checkpoint as timm's train.py (CheckpointSaver) writes it: raw and EMA weights, the
    optimizer, and the run's argparse.Namespace. Returns (raw, ema) state dicts."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model(NAME, **KW, num_heads=2)
    raw = model.state_dict()
    ema = {k: v + 0.05 * torch.randn_like(v) for k, v in raw.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    args = argparse.Namespace(model=NAME, lr=0.1, model_ema=True, epochs=3)
    state = {"epoch": 2, "arch": NAME, "state_dict": raw, "optimizer": opt.state_dict()}
    state |= {"version": 2, "args": args, "state_dict_ema": ema, "metric": 12.5}
    torch.save(state, path)
    return raw, ema


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("ema")
    raw, ema = timm_train_checkpoint(root / "last.pth.tar")
    vbp("collect-stats", *MODEL, "--checkpoint", "last.pth.tar", "--data", "builtin:digits",
        "--batches", "1", "--batch-size", "16", "--out", "stats", cwd=root)  # fmt: skip
    return root, raw, ema


def test_timm_train_checkpoint_uses_ema_unless_no_ema(ckpt: tuple[Path, dict, dict]) -> None:
    from vbp_cli.api import build_teacher, build_with_weights

    root, raw, ema = ckpt
    for flag, want, which in (("--ema", ema, "ema"), ("--no-ema", raw, "raw")):
        out = root / f"pruned{flag}"
        report = vbp("prune", *MODEL, "--checkpoint", "last.pth.tar", flag, "--stats", "stats",
                     "--ratio", "0", "--out", str(out), cwd=root)  # fmt: skip
        assert report["weights"] == which
        # ratio 0 keeps every weight: the saved model holds exactly the chosen set
        from vbp_cli import load_model

        saved = load_model(out)
        assert all(torch.equal(saved.state_dict()[k], want[k]) for k in want)
        # the teacher finetune rebuilds from the recorded source takes the same weights
        teacher, teacher_which = build_teacher(str(out), None)
        assert teacher_which == which
        assert torch.equal(teacher.state_dict()["head.weight"], want["head.weight"])
    net, _, which = build_with_weights(NAME, checkpoint=root / "last.pth.tar", model_kwargs={
        **KW, "num_heads": 2}, ema=False)  # fmt: skip
    assert which == "raw" and torch.equal(net.state_dict()["head.bias"], raw["head.bias"])
    torch.save(raw, root / "plain.pth")
    assert vbp("evaluate", *MODEL, "--checkpoint", "plain.pth", "--data", "builtin:digits",
               "--no-speed", cwd=root)["weights"] == "plain"  # fmt: skip


def _uniform_stats(model: torch.nn.Module) -> dict:
    """Statistics that make VBP remove the same number of neurons from every MLP: each MLP's
    variances are 0..n-1, so the global ranking alternates between them."""
    from vbp_cli import NeuronStats, find_mlps

    out = {}
    for ref in find_mlps(model):
        var = torch.arange(ref.hidden, dtype=torch.float64)
        out[ref.name] = NeuronStats(10, torch.zeros(ref.hidden, dtype=torch.float64), var * 10)
    return out


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`uneven/`: a VBP-pruned ViT (uneven widths, as VBP's global ranking leaves them);
    `uniform/`: one pruned to the same width in every MLP; both exported for timm (`timm/`);
    inputs and reference logits."""
    from vbp_cli import load_model
    from vbp_cli.api import prune_with_report
    from vbp_cli.models import build_model, save_model

    root = tmp_path_factory.mktemp("export")
    torch.manual_seed(1)
    torch.save(build_model(NAME, model_kwargs={**KW, "num_heads": 2})[0].state_dict(),
               root / "w.pth")  # fmt: skip
    vbp("collect-stats", *MODEL, "--checkpoint", "w.pth", "--data", "builtin:digits",
        "--batches", "1", "--batch-size", "16", "--out", "stats", cwd=root)  # fmt: skip
    vbp("prune", *MODEL, "--checkpoint", "w.pth", "--stats", "stats", "--ratio", "0.4",
        "--out", "uneven", cwd=root)  # fmt: skip
    net, arch = build_model(NAME, model_kwargs={**KW, "num_heads": 2})
    prune_with_report(net, _uniform_stats(net), ratio=0.5)
    (root / "uniform").mkdir()
    save_model(net, arch, root / "uniform" / "model.safetensors")
    for case in ("uneven", "uniform"):  # timm's folder layout: <case>/timm/config.json + weights
        out = vbp("export", "--model", case, "--format", "timm", cwd=root)
        assert out["path"] == f"{case}/timm" and out["max_abs_diff"] < 1e-5
        assert out["loads_with_timm"] == (case == "uniform")
    images = torch.randn(5, 3, 16, 16)
    torch.save(images, root / "images.pt")
    with torch.no_grad():
        for name in ("uneven", "uniform"):
            torch.save(load_model(root / name)(images), root / f"{name}-logits.pt")
    return root


def test_timm_config_says_whether_timm_alone_rebuilds_it(pruned: Path) -> None:
    uneven = json.loads((pruned / "uneven" / "timm" / "config.json").read_text())
    uniform = json.loads((pruned / "uniform" / "timm" / "config.json").read_text())
    assert uneven["architecture"] == NAME and uneven["model_args"]["embed_dim"] == 48
    widths = uneven["vbp"]["mlp_widths"]
    assert len(set(widths.values())) > 1 and not uneven["vbp"]["loads_with_timm"]
    assert "mlp_ratio" not in uneven["model_args"]
    assert set(uniform["vbp"]["mlp_widths"].values()) == {96}
    assert uniform["vbp"]["loads_with_timm"] and int(48 * uniform["model_args"]["mlp_ratio"]) == 96


# The README's loading code, run as written in a process where vbp_cli (and the toolkit's
# `shared`) cannot be imported; for the three exported formats timm is blocked too.
LOADERS = {
    "onnx": """
        import onnxruntime as ort
        session = ort.InferenceSession("uneven/model.onnx")
        logits = session.run(None, {"images": images.numpy()})[0]
    """,
    "torchscript": """
        import torch
        model = torch.jit.load("uneven/model.ts")
        logits = model(images)
    """,
    "pt2": """
        import torch
        model = torch.export.load("uneven/model.pt2").module()
        logits = model(images)
    """,
    "timm-uneven": """
        import json, timm, torch
        from safetensors.torch import load_file
        cfg = json.load(open("uneven/timm/config.json"))
        model = timm.create_model(cfg["architecture"], **cfg["model_args"])
        for name, width in cfg["vbp"]["mlp_widths"].items():  # per-block hidden widths
            mlp = model.get_submodule(name)
            mlp.fc1 = torch.nn.Linear(mlp.fc1.in_features, width)
            mlp.fc2 = torch.nn.Linear(width, mlp.fc2.out_features)
        model.load_state_dict(load_file("uneven/timm/model.safetensors"))
        logits = model.eval()(images)
    """,
    "timm-uniform": """
        import timm
        model = timm.create_model("local-dir:uniform/timm", pretrained=True).eval()
        logits = model(images)
    """,
}

BLOCKER = "raise ImportError('{0} is blocked: the exported model must load without it')\n"


def run_without_vbp(root: Path, code: str, block_timm: bool) -> torch.Tensor:
    blocked = ["vbp_cli", "shared"] + (["timm"] if block_timm else [])
    fakes = root / "-".join(["blocked", *blocked])
    for pkg in blocked:
        (fakes / pkg).mkdir(parents=True, exist_ok=True)
        (fakes / pkg / "__init__.py").write_text(BLOCKER.format(pkg))
    script = "\n".join([
        "import sys",
        f"sys.path.insert(0, {str(fakes)!r})",
        *[f"try:\n    import {p}\n    raise SystemExit('{p} imported')\nexcept ImportError:\n"
          f"    pass" for p in blocked],
        "import numpy as np, torch",
        "images = torch.load('images.pt')",
        "with torch.no_grad():",
        textwrap.indent(textwrap.dedent(code), "    "),
        "np.save('got.npy', np.asarray(logits))",
    ])  # fmt: skip
    res = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    import numpy as np

    return torch.from_numpy(np.load(root / "got.npy"))


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "pt2"])
def test_exported_model_runs_without_vbp(pruned: Path, fmt: str) -> None:
    out = vbp("export", "--model", "uneven", "--format", fmt, cwd=pruned)
    suffix = {"onnx": ".onnx", "torchscript": ".ts", "pt2": ".pt2"}[fmt]
    assert out["path"] == f"uneven/model{suffix}" and out["max_abs_diff"] < 1e-4
    got = run_without_vbp(pruned, LOADERS[fmt], block_timm=True)
    want = torch.load(pruned / "uneven-logits.pt")
    assert got.shape == (5, 10) and torch.allclose(got, want, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["uneven", "uniform"])
def test_pruned_model_loads_with_timm_alone(pruned: Path, case: str) -> None:
    got = run_without_vbp(pruned, LOADERS[f"timm-{case}"], block_timm=False)
    want = torch.load(pruned / f"{case}-logits.pt")
    assert torch.allclose(got, want, atol=1e-5)


def test_onnx_alias_and_conflicts(pruned: Path) -> None:
    out = vbp("export", "--model", "uneven", "--onnx", "alias.onnx", cwd=pruned)
    assert out["format"] == "onnx" and out["onnx"] == "alias.onnx"
    res = run_cli("vbp", "export", "--model", "uneven", "--onnx", "a.onnx", "--format", "pt2",
                  cwd=pruned)  # fmt: skip
    assert res.code == 2 and "--onnx" in res.stderr and not (pruned / "a.onnx").exists()
