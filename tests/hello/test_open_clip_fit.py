"""hello in open_clip's ecosystem: weights paths recorded absolute, no silent random CLIP,
open_clip pretrained tags and hf-hub: names resolved from a local cache (offline here: a
fake Hugging Face cache in tmp_path, built the way huggingface_hub lays it out)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from hello_cli.encoders import CONFIG_DIR, EncoderSpec, build_open_clip, resolve_pretrained
from shared.errors import InputError
from tests.helpers import run_cli

REPO = "fake-org/tinyclip-rn"  # a made-up hub repo holding TinyCLIP-RN weights


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, offline Hugging Face cache (huggingface_hub reads both at call time)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def _cache_file(cache: Path, repo: str, name: str, data: bytes) -> Path:
    """huggingface_hub's layout: models--org--name/{refs/main, snapshots/<rev>/<file>}."""
    folder = cache / ("models--" + repo.replace("/", "--"))
    rev = "0" * 40
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(rev)
    path = folder / "snapshots" / rev / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _tiny_weights(seed: int) -> tuple[bytes, dict[str, torch.Tensor]]:
    from safetensors.torch import save

    torch.manual_seed(seed)
    clip, _ = build_open_clip(EncoderSpec("openclip", "TinyCLIP-RN", seed=seed))
    state = {k: v.contiguous() for k, v in clip.state_dict().items()}
    return save(state), state


def _visual(proj: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The projector's image tower (PixelInput holds it as `model`), as CLIP names it."""
    state = proj.encoder.state_dict()
    out = {"visual." + k[6:]: v for k, v in state.items() if k.startswith("model.")}
    assert out and not any("lora" in k for k in out)  # no factors on a built projector
    return out


def test_tag_of_a_real_architecture_resolves_to_the_cached_file(hub: Path) -> None:
    # open_clip maps ViT-B-32/laion2b_s34b_b79k to this hub repo; the safetensors twin first
    repo = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    with pytest.raises(InputError) as info:
        resolve_pretrained("ViT-B-32", "laion2b_s34b_b79k")
    msg = str(info.value)
    assert "\n" not in msg and repo in msg and "open_clip_model.safetensors" in msg
    assert "--encoder-weights" in msg
    cached = _cache_file(hub, repo, "open_clip_model.safetensors", b"not read here")
    assert resolve_pretrained("ViT-B-32", "laion2b_s34b_b79k") == str(cached.resolve())
    assert resolve_pretrained("ViT-B-32", "LAION2B-S34B-B79K") == str(cached.resolve())
    with pytest.raises(InputError, match="not an open_clip tag of ViT-B-32.*laion2b_s34b_b79k"):
        resolve_pretrained("ViT-B-32", "no-such-tag")


@pytest.mark.slow
def test_pretrained_tag_builds_and_reloads_from_the_cache(
    hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import open_clip.pretrained as pretrained

    monkeypatch.setitem(
        pretrained._PRETRAINED, "TinyCLIP-RN", {"fake": pretrained._pcfg(hf_hub=REPO + "/")}
    )
    data, state = _tiny_weights(seed=123)
    _cache_file(hub, REPO, "open_clip_model.safetensors", data)
    res = run_cli("hello", "build-projector", "--encoder", "openclip:TinyCLIP-RN",
                  "--pretrained", "fake", "--classes", "builtin:digits", "--out", "p", "--json",
                  cwd=tmp_path)  # fmt: skip
    assert res.code == 0, res.stderr
    from hello_cli.projector import load_projector

    proj = load_projector(tmp_path / "p")
    assert proj.config.spec.pretrained == "fake"
    assert Path(proj.config.spec.weights).is_absolute()
    visual = _visual(proj)
    assert all(torch.equal(v, state[k]) for k, v in visual.items())
    # the seed-0 random tower differs: the weights really came from the cached file
    random_state = _tiny_weights(seed=0)[1]
    assert any(not torch.equal(random_state[k], v) for k, v in visual.items())


@pytest.mark.slow
def test_hf_hub_name_builds_offline_from_the_cache_and_says_what_is_missing(
    hub: Path, tmp_path: Path
) -> None:
    res = run_cli("hello", "build-projector", "--encoder", f"openclip:hf-hub:{REPO}",
                  "--classes", "builtin:digits", "--out", "none", cwd=tmp_path)  # fmt: skip
    errors = [line for line in res.stderr.splitlines() if line.startswith("hello: error:")]
    assert res.code == 2 and len(errors) == 1 and REPO in errors[0], res.stderr
    assert not (tmp_path / "none").exists()
    model_cfg = json.loads((CONFIG_DIR / "TinyCLIP-RN.json").read_text())
    config = {"model_cfg": model_cfg, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    _cache_file(hub, REPO, "open_clip_config.json", json.dumps(config).encode())
    data, state = _tiny_weights(seed=7)
    _cache_file(hub, REPO, "open_clip_model.safetensors", data)
    res = run_cli("hello", "build-projector", "--encoder", f"openclip:hf-hub:{REPO}",
                  "--classes", "builtin:digits", "--out", "p", "--json", cwd=tmp_path)  # fmt: skip
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1])["encoder_weights"] == f"hf-hub:{REPO}"
    from hello_cli.projector import load_projector

    proj = load_projector(tmp_path / "p")
    visual = _visual(proj)
    assert all(torch.equal(v, state[k]) for k, v in visual.items())
    assert list(proj.encoder.mean.flatten().tolist()) == [0.5] * 3  # the repo's preprocessing


@pytest.mark.slow
def test_weights_paths_are_recorded_absolute(tmp_path: Path, monkeypatch) -> None:
    from safetensors.torch import save_file

    from hello_cli.projector import load_projector

    _, state = _tiny_weights(seed=5)
    (tmp_path / "w").mkdir()
    save_file(state, tmp_path / "w" / "tiny.safetensors")
    shutil.copy(CONFIG_DIR / "TinyCLIP-RN.json", tmp_path / "w" / "mine.json")
    res = run_cli("hello", "build-projector", "--encoder", "openclip:w/mine.json",
                  "--encoder-weights", "w/tiny.safetensors", "--classes", "builtin:digits",
                  "--out", "p", "--quiet", cwd=tmp_path)  # fmt: skip
    assert res.code == 0, res.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # relative paths would no longer resolve from here
    proj = load_projector(tmp_path / "p")
    spec = proj.config.spec
    assert spec.weights == str(tmp_path / "w" / "tiny.safetensors")
    assert spec.name == str(tmp_path / "w" / "mine.json")
    visual = _visual(proj)
    assert all(torch.equal(v, state[k]) for k, v in visual.items())


@pytest.mark.slow
def test_no_weights_is_refused_unless_random_weights_is_asked_for(tmp_path: Path) -> None:
    shutil.copy(CONFIG_DIR / "TinyCLIP-RN.json", tmp_path / "mine.json")
    for encoder in ("openclip:ViT-B-32", "openclip:mine.json"):
        res = run_cli("hello", "build-projector", "--encoder", encoder,
                      "--classes", "builtin:digits", "--out", "p", cwd=tmp_path)  # fmt: skip
        errors = [line for line in res.stderr.splitlines() if line.startswith("hello: error:")]
        assert res.code == 2 and len(errors) == 1, res.stderr
        assert "--encoder-weights" in errors[0] and "--pretrained" in errors[0]
        assert not (tmp_path / "p").exists()
    res = run_cli("hello", "build-projector", "--encoder", "openclip:mine.json",
                  "--random-weights", "--classes", "builtin:digits", "--out", "p", "--json",
                  cwd=tmp_path)  # fmt: skip
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout.splitlines()[-1])["encoder_weights"] == "random"
    # --pretrained needs an open_clip architecture and excludes --encoder-weights
    res = run_cli("hello", "build-projector", "--encoder", "timm:resnet18", "--pretrained", "x",
                  "--classes", "builtin:digits", "--out", "q", cwd=tmp_path)  # fmt: skip
    assert res.code == 2 and "--pretrained x" in res.stderr
