"""The inputs every fault case draws on, built once per session: tiny valid models and data
of each tool, and bad files of every kind (missing, empty, truncated, random bytes, a pickle
whose loading would run code) next to them."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


class Boom:
    """Pickled as `open(marker, "w")`: whoever unpickles it with code allowed creates the
    marker file, which no fault case may ever see."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, ...]:
        return (io.open, (self.marker, "w"))


@dataclass
class World:
    root: Path  # every input lives under it (snapshotted around each case)
    marker: Path  # must never exist
    files: dict[str, Path] = field(default_factory=dict)
    tmp: Path = Path()  # the current case's own folder (its cwd)

    def __getitem__(self, name: str) -> str:
        return str(self.files[name])

    def p(self, name: str) -> str:
        """A path under the current case's folder."""
        return str(self.tmp / name)


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def booby(path: Path, marker: Path) -> Path:
    """A torch.save'd checkpoint-shaped dict whose unpickling runs `open(marker, 'w')`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": {"w": torch.zeros(2)}, "trap": Boom(marker)}, path)
    return path


def bad_files(w: World, kind: str, valid: Path | None, suffix: str) -> None:
    """w.files[f'{kind}:missing|empty|random|truncated|booby'] for one kind of input."""
    d = w.root / "bad" / kind
    d.mkdir(parents=True, exist_ok=True)
    w.files[f"{kind}:missing"] = d / f"missing{suffix}"
    w.files[f"{kind}:empty"] = _write(d / f"empty{suffix}", b"")
    rng = np.random.default_rng(len(kind))
    w.files[f"{kind}:random"] = _write(d / f"random{suffix}", rng.bytes(4096))
    if valid is not None and valid.is_file():
        data = valid.read_bytes()
        w.files[f"{kind}:truncated"] = _write(d / f"truncated{suffix}", data[: len(data) // 2])
    w.files[f"{kind}:booby"] = booby(d / f"booby{suffix}", w.marker)


def model_dir(w: World, kind: str, name: str, content: Path | bytes | None) -> Path:
    """A run folder whose model file `name` holds `content` (a file to copy, raw bytes, or
    nothing: an empty folder)."""
    d = w.root / "dirs" / kind
    d.mkdir(parents=True, exist_ok=True)
    if isinstance(content, Path):
        shutil.copyfile(content, d / name)
    elif content is not None:
        (d / name).write_bytes(content)
    w.files[f"dir:{kind}"] = d
    return d


# -- per-tool valid inputs -------------------------------------------------------------------
def build_configs(w: World) -> None:
    """--config files: missing, not YAML, not a mapping, binary, a YAML tag that would run
    code, an unknown key, a bad number."""
    d = _dir(w.root / "configs")
    w.files["cfg:missing"] = d / "missing.yaml"
    w.files["cfg:not-yaml"] = _write(d / "not-yaml.yaml", b"steps: [1, 2\nseed: : :\n")
    w.files["cfg:list"] = _write(d / "list.yaml", b"- 1\n- 2\n")
    w.files["cfg:binary"] = _write(d / "binary.yaml", bytes(range(128, 256)))
    code = f'seed: !!python/object/apply:io.open ["{w.marker}", "w"]\n'
    w.files["cfg:python-tag"] = _write(d / "python-tag.yaml", code.encode())
    w.files["cfg:unknown-key"] = _write(d / "unknown-key.yaml", b"no_such_option: 1\n")
    w.files["cfg:seed-negative"] = _write(d / "seed-negative.yaml", b"seed: -5\n")


def build_scorelidar(w: World) -> None:
    from scorelidar_cli.api import SimulateOptions, simulate_scenes
    from scorelidar_cli.model import build_model
    from scorelidar_cli.pipeline import MODEL_FILE, save_model

    root = w.root / "scorelidar"
    simulate_scenes(SimulateOptions(scenes=1, frames=2, azimuths=64), root / "sim")
    torch.manual_seed(0)
    model = root / "tiny"
    model.mkdir(parents=True)
    save_model(model / MODEL_FILE, build_model("tiny"), "teacher")
    w.files["sl:sim"] = root / "sim"
    w.files["sl:model"] = model
    w.files["sl:model_file"] = model / MODEL_FILE
    scans = sorted((root / "sim").rglob("velodyne/*.bin"))
    w.files["sl:scan"] = scans[0]
    # two sequences' first frames: the same name in two folders (cause 2)
    for seq in ("a", "b"):
        shutil.copyfile(scans[0], _dir(root / "same" / seq) / "000000.bin")
    w.files["sl:same"] = root / "same"
    pts = np.fromfile(scans[0], dtype=np.float32).reshape(-1, 4)
    nan = pts.copy()
    nan[::3, 0] = np.nan
    w.files["sl:nan_scan"] = _write(root / "nan.bin", nan.tobytes())
    w.files["sl:inf_npy"] = root / "inf.npy"
    inf = pts[:, :3].copy()
    inf[0, 1] = np.inf
    np.save(root / "inf.npy", inf)
    w.files["sl:odd_bin"] = _write(root / "odd.bin", pts.tobytes()[:-6])  # not N x 4 floats
    w.files["sl:wrong_cols"] = root / "cols.npy"
    np.save(root / "cols.npy", np.zeros((10, 2), np.float32))
    w.files["sl:obj_npy"] = root / "booby.npy"
    np.save(root / "booby.npy", np.array([Boom(w.marker)], dtype=object), allow_pickle=True)
    w.files["sl:bad_ply"] = _write(root / "bad.ply", b"ply\nformat ascii 1.0\nelement vertex 3\n")
    w.files["sl:txt_scan"] = _write(root / "scan.txt", b"1 2 3\n")
    bad_files(w, "sl_scan", scans[0], ".bin")
    bad_files(w, "sl_model", model / MODEL_FILE, ".safetensors")
    for kind in ("empty", "random", "truncated"):
        model_dir(w, f"sl_{kind}", MODEL_FILE, w.files[f"sl_model:{kind}"])
    model_dir(w, "sl_nofile", MODEL_FILE, None)
    # the tiny preset's tensors under the small preset's architecture (wrong width)
    from safetensors.torch import load_file

    from shared.checkpoints import save_checkpoint

    d = _dir(w.root / "dirs" / "sl_wrong_width")
    save_checkpoint(d / MODEL_FILE, load_file(str(model / MODEL_FILE)), tool="scorelidar",
                    architecture=build_model("small").config.to_dict(),
                    extra={"role": "teacher"})  # fmt: skip
    w.files["dir:sl_wrong_width"] = d
    # an empty dataset root and one with a sequence folder but no scans
    w.files["sl:nodata"] = _dir(root / "nodata")
    _dir(root / "noscans" / "sequences" / "00" / "velodyne")
    w.files["sl:noscans"] = root / "noscans"


def build_hello(w: World) -> None:
    import timm

    from shared.builtin_data import DIGITS_CLASS_NAMES
    from shared.checkpoints import save_checkpoint
    from tests.helpers import run_cli

    root = w.root / "hello"
    kwargs = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 1, "num_heads": 2,
              "num_classes": 10}  # fmt: skip
    torch.manual_seed(0)
    teacher = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs)
    w.files["hello:teacher"] = save_checkpoint(
        _dir(root) / "teacher.safetensors",
        teacher.state_dict(),
        tool="reference",
        architecture={"timm_name": "vit_tiny_patch16_224", "model_kwargs": kwargs},
        extra={"class_names": list(DIGITS_CLASS_NAMES)},
    )
    wide = {**kwargs, "embed_dim": 64}  # recorded architecture wider than the tensors
    w.files["hello:teacher_wrong_width"] = save_checkpoint(
        root / "teacher_wrong_width.safetensors",
        teacher.state_dict(),
        tool="reference",
        architecture={"timm_name": "vit_tiny_patch16_224", "model_kwargs": wide},
        extra={"class_names": list(DIGITS_CLASS_NAMES)},
    )
    torch.save(teacher.state_dict(), root / "teacher.pth")
    w.files["hello:teacher_pth"] = root / "teacher.pth"
    w.files["hello:classes"] = _write(root / "classes.txt", "\n".join(DIGITS_CLASS_NAMES).encode())
    w.files["hello:classes_empty"] = _write(root / "classes_empty.txt", b"")
    w.files["hello:classes3"] = _write(root / "classes3.txt", b"zero\none\ntwo\n")
    res = run_cli(
        "hello", "build-projector", "--encoder", "openclip:TinyCLIP-RN", "--classes",
        str(root / "classes.txt"), "--out", str(root / "proj"), "--device", "cpu", "--quiet",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    w.files["hello:projector_dir"] = root / "proj"
    proj = sorted((root / "proj").glob("*.safetensors"))
    w.files["hello:projector"] = proj[0]
    bad_files(w, "hello_ckpt", w.files["hello:teacher"], ".safetensors")
    bad_files(w, "hello_pth", w.files["hello:teacher_pth"], ".pth")


def build_tomerge(w: World) -> None:
    from tomerge_cli import tiny

    root = w.root / "tomerge"
    pipe = root / "pipe"
    tiny.tiny_sd(tokenizer_dir=root / "tok").save_pretrained(pipe)
    w.files["tm:pipe"] = pipe
    from PIL import Image

    refs = _dir(root / "refs")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(refs / f"{i}.png")
    w.files["tm:refs"] = refs
    one = _dir(root / "one_ref")
    shutil.copyfile(refs / "0.png", one / "0.png")
    w.files["tm:one_ref"] = one
    w.files["tm:empty_dir"] = _dir(root / "empty")
    w.files["tm:prompts_empty"] = _write(root / "prompts_empty.txt", b"\n\n")
    w.files["tm:prompts_binary"] = _write(root / "prompts_bin.txt", bytes(range(256)))
    # a pipeline whose UNet weights are damaged or a pickle that runs code
    for kind in ("random", "booby", "truncated"):
        d = root / f"pipe_{kind}"
        shutil.copytree(pipe, d)
        unet = d / "unet"
        weights = sorted(unet.glob("diffusion_pytorch_model*"))[0]
        if kind == "booby":
            weights.unlink()
            booby(unet / "diffusion_pytorch_model.bin", w.marker)
        elif kind == "random":
            weights.write_bytes(np.random.default_rng(1).bytes(4096))
        else:
            data = weights.read_bytes()
            weights.write_bytes(data[: len(data) // 2])
        w.files[f"tm:pipe_{kind}"] = d
    # a CLIP model folder whose weights would run code
    clip = _dir(root / "clip_booby")
    _write(clip / "config.json", json.dumps({"model_type": "clip"}).encode())
    booby(clip / "pytorch_model.bin", w.marker)
    w.files["tm:clip_booby"] = clip
    w.files["tm:clip_empty"] = _dir(root / "clip_empty")
    bad_files(w, "tm_inception", w.files["hello:teacher_pth"], ".pth")
    # the two tensors quality.inception_weights looks at first (stand-in for the 100 MB file
    # where a case fails on a later input)
    stub = {"Conv2d_1a_3x3.conv.weight": torch.zeros(32, 3, 3, 3),
            "fc.weight": torch.zeros(1008, 2048, dtype=torch.float16)}  # fmt: skip
    torch.save(stub, root / "inception_stub.pth")
    w.files["tm:inception_stub"] = root / "inception_stub.pth"
    # the right format, the wrong network: a ViT state_dict as Inception weights
    w.files["tm_inception:wrong"] = w.files["hello:teacher_pth"]


def build_vbp(w: World) -> None:
    import timm

    root = _dir(w.root / "vbp")
    torch.manual_seed(3)
    net = timm.create_model("vit_tiny_patch16_224", **VBP_KW)
    torch.save(net.state_dict(), root / "weights.pth")
    w.files["vbp:weights"] = root / "weights.pth"
    wide = timm.create_model("vit_tiny_patch16_224", **{**VBP_KW, "embed_dim": 64})
    torch.save(wide.state_dict(), root / "wide.pth")
    w.files["vbp:wide"] = root / "wide.pth"
    bad_files(w, "vbp_ckpt", root / "weights.pth", ".pth")
    for kind in ("empty", "random", "truncated"):
        model_dir(w, f"vbp_{kind}", "model.safetensors", w.files[f"hello_ckpt:{kind}"])
    model_dir(w, "vbp_nofile", "model.safetensors", None)
    # a folder holding another tool's model (hello's teacher checkpoint)
    model_dir(w, "vbp_foreign", "model.safetensors", w.files["hello:teacher"])
    # stats folders: empty, random bytes, a pickle that runs code
    for kind in ("empty", "random", "booby"):
        src = w.files[f"vbp_ckpt:{kind}"]
        d = _dir(root / f"stats_{kind}")
        for name in ("stats.safetensors", "stats.pt"):
            shutil.copyfile(src, d / name)
        w.files[f"vbp:stats_{kind}"] = d


VBP_KW = {"img_size": 32, "patch_size": 4, "num_classes": 10, "depth": 2, "num_heads": 2,
          "embed_dim": 48}  # fmt: skip


def build_kdic(w: World) -> None:
    from PIL import Image

    from kdic_cli.models import make_spec, new_model, save_model

    root = _dir(w.root / "kdic")
    torch.manual_seed(0)
    codec = new_model(make_spec("mbt2018-mean", N=16, M=24)).eval()
    codec.update(force=True)
    save_model(root / "codec.safetensors", codec)
    w.files["kdic:codec"] = root / "codec.safetensors"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "img.png")
    Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(root / "small.png")
    w.files["kdic:image"] = root / "img.png"
    w.files["kdic:small"] = root / "small.png"
    from tests.helpers import run_cli

    res = run_cli(
        "kdic", "compress", str(root / "img.png"), "--model", str(root / "codec.safetensors"),
        "-o", str(root / "img.kdic"),
    )  # fmt: skip
    assert res.code == 0, res.stderr
    data = (root / "img.kdic").read_bytes()
    w.files["kdic:bits"] = root / "img.kdic"
    bad_files(w, "kdic_bits", root / "img.kdic", ".kdic")
    bad_files(w, "kdic_img", root / "img.png", ".png")
    bad_files(w, "kdic_model", root / "codec.safetensors", ".safetensors")
    # header: a byte of the height (the version byte would be refused even without a CRC)
    for at, name in ((24, "header"), (len(data) // 2, "middle"), (len(data) - 2, "tail")):
        flipped = bytearray(data)
        flipped[at] ^= 0x5A
        w.files[f"kdic_bits:flip_{name}"] = _write(root / f"flip_{name}.kdic", bytes(flipped))
    w.files["kdic:foreign"] = w.files["hello:teacher"]
    torch.manual_seed(1)
    other = new_model(make_spec("mbt2018-mean", N=8, M=16)).eval()
    other.update(force=True)
    save_model(root / "narrow.safetensors", other)
    w.files["kdic:narrow"] = root / "narrow.safetensors"


def _dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


# -- snapshots -------------------------------------------------------------------------------
_HASHES: dict[tuple[str, int, int, int], str] = {}


def snapshot(*roots: Path) -> dict[str, Any]:
    """Every file and folder under `roots`: its bytes (sha256) and mode. Hashes are cached on
    (path, size, mtime, inode), which any write or atomic replace changes."""
    seen: dict[str, Any] = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                p = Path(dirpath, name)
                seen[str(p)] = ("dir", p.stat().st_mode)
            for name in filenames:
                p = Path(dirpath, name)
                st = p.lstat()
                key = (str(p), st.st_size, st.st_mtime_ns, st.st_ino)
                if key not in _HASHES:
                    _HASHES[key] = hashlib.sha256(p.read_bytes()).hexdigest()
                seen[str(p)] = (_HASHES[key], st.st_mode)
    return seen
