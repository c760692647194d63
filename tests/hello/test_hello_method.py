"""The method's pieces on tensors: projector, LoRA, storage, crop selection, online labels."""

from __future__ import annotations

import struct

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hello_cli.augment import AugConfig, apply_aug, mixed_targets, plan_epoch
from hello_cli.encoders import DEFAULT_TEMPLATES, EncoderSpec, build_open_clip, load_by_order
from hello_cli.lora import add_lora, lora_state_dict, zero_lora_
from hello_cli.projector import FILE_NAME, load_projector, save_projector
from shared.builtin_data import DIGITS_CLASS_NAMES
from shared.errors import InputError


def _randomise_factors(module: nn.Module, std: float = 0.05) -> None:
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith(("lora_a", "lora_b")):
                p.normal_(0.0, std)


def test_zero_lora_projector_is_the_zero_shot_classifier(tiny_projector) -> None:
    from open_clip import build_zero_shot_classifier

    clip, tokenizer = build_open_clip(EncoderSpec.parse("openclip:TinyCLIP-RN"))
    w = build_zero_shot_classifier(
        clip, tokenizer, list(DIGITS_CLASS_NAMES), [t.format for t in DEFAULT_TEMPLATES]
    )
    x = torch.rand(6, 3, 32, 32)
    cfg = clip.visual.preprocess_cfg
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = F.normalize(clip.encode_image((x - mean) / std), dim=-1)
        expected = clip.logit_scale.exp() * feats @ w
        tiny_projector.add_lora(rank=4, head_rank=3)
        got = tiny_projector(x)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        _randomise_factors(tiny_projector)
        assert not torch.allclose(tiny_projector(x), expected, atol=1e-3)
        zero_lora_(tiny_projector)
        torch.testing.assert_close(tiny_projector(x), expected, rtol=1e-5, atol=1e-5)


def test_saved_projector_reloads_identically_and_holds_only_factors(
    tiny_projector, tmp_path
) -> None:
    trainable = tiny_projector.add_lora(rank=2, head_rank=3)
    _randomise_factors(tiny_projector)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        before = tiny_projector(x)
    report = save_projector(tiny_projector, tmp_path)
    path = tmp_path / FILE_NAME
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        keys = list(f.keys())
    factors = [k for k in keys if k.endswith(("lora_a", "lora_b"))]
    assert factors and set(keys) - set(factors) == {"log_logit_scale"}  # + one temperature
    assert report["stored_parameters"] == trainable
    assert report["storage_bytes"] == trainable * 4  # float32 factors
    header = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert path.stat().st_size == 8 + header + trainable * 4  # nothing else in the file
    loaded = load_projector(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(x), before)


def test_reload_refuses_factors_that_do_not_match(tiny_projector, tmp_path) -> None:
    from shared.checkpoints import load_checkpoint, save_checkpoint

    tiny_projector.add_lora(rank=2, head_rank=2)
    save_projector(tiny_projector, tmp_path)
    tensors, meta = load_checkpoint(tmp_path / FILE_NAME)
    meta["architecture"]["rank"] = 3  # the file's factors are rank 2
    save_checkpoint(tmp_path / FILE_NAME, tensors, tool="hello", architecture=meta["architecture"])
    with pytest.raises(InputError):
        load_projector(tmp_path)


def test_lora_on_depthwise_and_linear_layers_starts_at_zero() -> None:
    model = nn.Sequential(
        nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 6, 1), nn.Flatten(), nn.Linear(96, 3)
    )
    x = torch.randn(2, 4, 4, 4)
    before = model(x).detach()
    names = add_lora(model, rank=8)
    assert names == ["0", "1", "3"]
    factors = lora_state_dict(model)
    # rank capped at min(out, in * k * k): depthwise 3x3 has 9 inputs per output
    assert factors["0.parametrizations.weight.0.lora_a"].shape == (4, 9)
    assert factors["1.parametrizations.weight.0.lora_a"].shape == (4, 4)
    assert torch.equal(model(x), before)
    _randomise_factors(model)
    assert not torch.allclose(model(x), before)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(factors)


def test_load_by_order_maps_foreign_key_names() -> None:
    a = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    b = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    foreign = {f"net.layer{i}": v for i, v in enumerate(b.state_dict().values())}
    load_by_order(a, foreign, "foreign.pth")
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    swapped = dict(reversed(list(foreign.items())))
    with pytest.raises(InputError, match="does not fit"):
        load_by_order(a, swapped, "foreign.pth")


class _BrightnessTeacher(nn.Module):
    """Class 0's logit grows with the image's brightness: bright crops have low CE."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = 20 * x.mean(dim=(1, 2, 3))
        return torch.stack([score, torch.full_like(score, 5.0)], dim=1)


def test_crop_selection_keeps_the_lowest_ce_crops() -> None:
    from hello_cli.synth import random_crops, synthesize_class, teacher_ce

    ramp = torch.linspace(0, 1, 32).view(1, 1, 32).expand(3, 32, 32)
    real = torch.stack([ramp, ramp.flip(-1), ramp * 0.5])  # 3 images < 4 * ipc patches
    teacher = _BrightnessTeacher()
    images, kept = synthesize_class(
        teacher,
        real,
        0,
        ipc=2,
        image_size=32,
        crops_per_image=6,
        crop_scale=(0.1, 0.5),
        gen=torch.Generator().manual_seed(1),
    )
    gen = torch.Generator().manual_seed(1)  # replay the same crops
    every = torch.cat(
        [teacher_ce(teacher, random_crops(i, 6, 16, (0.1, 0.5), gen), 0) for i in real]
    )
    torch.testing.assert_close(kept.sort().values, every.sort().values[:8])
    assert images.shape == (2, 3, 32, 32)
    # the tiles are the kept patches: each tile's CE is one of the kept scores
    tiles = (
        images.unfold(2, 16, 16).unfold(3, 16, 16).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 16, 16)
    )
    torch.testing.assert_close(teacher_ce(teacher, tiles, 0).sort().values, kept.sort().values)


def test_tile_2x2_places_patches_row_by_row() -> None:
    from hello_cli.synth import tile_2x2

    patches = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 1, 2, 2)
    tiled = tile_2x2(patches)
    assert tiled.shape == (2, 1, 4, 4)
    assert tiled[0, 0, ::2, ::2].tolist() == [[0, 1], [2, 3]]
    assert tiled[1, 0, ::2, ::2].tolist() == [[4, 5], [6, 7]]


def test_augmentation_plan_is_seeded_and_cutmix_targets_sum_to_one() -> None:
    cfg = AugConfig(out_size=16)
    a = plan_epoch(10, (32, 32), 4, cfg, seed=3, epoch=2)
    b = plan_epoch(10, (32, 32), 4, cfg, seed=3, epoch=2)
    c = plan_epoch(10, (32, 32), 4, cfg, seed=3, epoch=3)
    assert all(
        torch.equal(p.boxes, q.boxes) and torch.equal(p.indices, q.indices)
        for p, q in zip(a, b, strict=True)
    )
    assert not all(torch.equal(p.indices, q.indices) for p, q in zip(a, c, strict=True))
    labels = torch.arange(10) % 3
    t = mixed_targets(labels, a[0], 3, 16)
    torch.testing.assert_close(t.sum(1), torch.ones(len(t)))
    images = torch.rand(10, 3, 32, 32)
    assert apply_aug(images, a[0], 16).shape == (4, 3, 16, 16)


class _Recorder(nn.Module):
    """A tiny student that remembers every input it was trained on."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)


def test_online_labels_are_computed_on_the_augmented_image_the_student_sees() -> None:
    from hello_cli.student import StudentConfig, train_student

    images, labels = torch.rand(6, 3, 24, 24), torch.tensor([0, 1, 2, 0, 1, 2])
    labelled: list[torch.Tensor] = []

    def source(x: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        labelled.append(x.clone())
        return torch.zeros(len(x), 3)

    student = _Recorder()
    cfg = StudentConfig(epochs=2, batch_size=4, aug=AugConfig(out_size=16))
    train_student(student, images, labels, 3, source, cfg)
    assert len(labelled) == len(student.seen) == 4
    for shown, lab in zip(student.seen, labelled, strict=True):
        assert torch.equal(shown, lab)
    plain = F.interpolate(images, size=16, mode="bilinear", antialias=True)
    assert not any(torch.allclose(s, plain[: len(s)], atol=1e-3) for s in student.seen)


def test_projector_distillation_sees_the_teachers_augmented_image() -> None:
    """The teacher's target is computed on exactly the (cropped, flipped) image the projector
    is trained on, not on the plain image."""
    from hello_cli.distill import DistillConfig, distill_projector

    images, labels = torch.rand(6, 3, 24, 24), torch.tensor([0, 1, 2, 0, 1, 2])
    teacher, projector = _Recorder(), _Recorder()
    cfg = DistillConfig(epochs=2, batch_size=4, seed=3)
    distill_projector(projector, teacher, images, labels, cfg, aug=AugConfig(out_size=16))
    assert len(teacher.seen) == len(projector.seen) == 4
    for t, p in zip(teacher.seen, projector.seen, strict=True):
        assert torch.equal(t, p)
    plain = F.interpolate(images, size=16, mode="bilinear", antialias=True)
    assert not any(torch.allclose(s, plain[: len(s)], atol=1e-3) for s in teacher.seen)


def test_projector_distillation_also_fits_the_teacher_on_augmented_synthetic_batches() -> None:
    """With a synthetic set, every step adds one batch of it, augmented as the student will
    see it (CutMix included), and teacher and projector see the same pixels; a zero weight
    leaves the training exactly as without the set."""
    from hello_cli.distill import DistillConfig, distill_projector

    images, labels = torch.rand(6, 3, 24, 24), torch.tensor([0, 1, 2, 0, 1, 2])
    synthetic = torch.zeros(5, 3, 32, 32)
    synthetic[:, 0] = 1.0  # red images: their batches are told apart from the real ones
    teacher, projector = _Recorder(), _Recorder()
    cfg = DistillConfig(epochs=2, batch_size=4, seed=3)
    aug = AugConfig(out_size=16)
    distill_projector(projector, teacher, images, labels, cfg, aug=aug, synthetic=synthetic)
    assert len(teacher.seen) == len(projector.seen) == 8  # 4 real + 4 synthetic batches
    for t, p in zip(teacher.seen, projector.seen, strict=True):
        assert torch.equal(t, p)
    red = [bool((b[:, 0] > 0.99).all() and (b[:, 1:] < 0.01).all()) for b in teacher.seen]
    assert red == [False, True] * 4
    # the 5 synthetic images cycle in batches of 4 and 1, at the student's output size
    assert [tuple(b.shape) for b in teacher.seen[1::2]] == [(4, 3, 16, 16), (1, 3, 16, 16)] * 2

    runs = []
    for kwargs in ({}, {"synthetic": torch.rand(5, 3, 32, 32)}):
        torch.manual_seed(0)
        student = _Recorder()
        weight = 0.0 if kwargs else 1.0
        distill_projector(
            student,
            _Recorder(),
            images,
            labels,
            DistillConfig(epochs=2, batch_size=4, synthetic_weight=weight),
            aug=aug,
            **kwargs,
        )
        runs.append(student.net[1].weight.detach().clone())
    assert torch.equal(runs[0], runs[1])


def test_stored_labels_replay_the_teacher_on_the_same_augmentations() -> None:
    from hello_cli.labels import StoredLabels, compute_stored_labels

    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
    images = torch.rand(7, 3, 24, 24)
    aug = AugConfig(out_size=16)
    tensors = compute_stored_labels(teacher, images, epochs=2, batch_size=3, aug=aug, seed=5)
    stored = StoredLabels(tensors, batch_size=3)
    for epoch in range(2):
        for b, plan in enumerate(stored.plan(epoch)):
            x = apply_aug(images, plan, 16)
            with torch.no_grad():
                online = teacher(x)
            torch.testing.assert_close(stored(x, epoch, b), online, atol=2e-2, rtol=1e-2)
    per_value = {"logits": 2, "order": 2, "boxes": 2, "flips": 1, "mix_perm": 2, "mix_box": 2}
    assert stored.storage_bytes == sum(t.numel() * per_value[k] for k, t in tensors.items())
    from hello_cli.labels import stored_label_bytes

    assert stored.storage_bytes == stored_label_bytes(7, 3, 2, 3)


def test_the_label_choices_of_the_cli_are_the_label_sources() -> None:
    from hello_cli.api import LABEL_SOURCES
    from hello_cli.labels import SOURCES

    assert LABEL_SOURCES == SOURCES


def test_class_mismatches_are_refused() -> None:
    from hello_cli.teachers import check_classes

    names = list(DIGITS_CLASS_NAMES)
    teacher3 = nn.Linear(2, 3)
    teacher3.num_classes = 3
    with pytest.raises(InputError, match="3 classes"):
        check_classes(names, teacher=teacher3)
    with pytest.raises(InputError, match="projector has 9 classes"):
        check_classes(names, projector_names=names[:9])
    with pytest.raises(InputError, match="order differ"):
        check_classes(names, teacher_names=sorted(names))
    check_classes(names, teacher_names=names, projector_names=names)


def _preempt_at(run, step: int):  # noqa: ANN001, ANN202
    """A callback for the step's data source that does what SIGTERM does, at call `step`."""
    calls = [0]

    def hit() -> None:
        calls[0] += 1
        if calls[0] == step:
            run._on_signal(15, None)

    return hit, calls


@pytest.mark.slow
def test_student_training_resumes_exactly_after_preemption(tmp_path) -> None:
    from hello_cli.student import StudentConfig, train_student
    from shared.errors import Preempted
    from shared.runs import Run

    images, labels = torch.rand(8, 3, 24, 24), torch.arange(8) % 3
    cfg = StudentConfig(epochs=3, batch_size=4, aug=AugConfig(out_size=16))

    def student() -> nn.Module:
        torch.manual_seed(7)
        return nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(3 * 16 * 16, 3))

    straight = student()
    stats = train_student(straight, images, labels, 3, lambda x, e, b: None, cfg)
    assert stats["steps"] == 6
    resumed = student()
    with pytest.raises(Preempted), Run(tmp_path, tool="hello", command="t") as run:
        hit, _ = _preempt_at(run, 3)

        def hard(x: torch.Tensor, epoch: int, batch: int) -> None:
            hit()

        train_student(resumed, images, labels, 3, hard, cfg, run=run)
    assert (tmp_path / "resume.pt").exists()
    assert not torch.equal(resumed[2].weight, straight[2].weight)
    torch.manual_seed(123)  # the global RNG (dropout) comes back from the resume state
    resumed = student()
    seen: list[tuple[int, int]] = []
    with Run(tmp_path, tool="hello", command="t", resume=True) as run:
        stats = train_student(
            resumed, images, labels, 3, lambda x, e, b: seen.append((e, b)), cfg, run=run
        )
    # continued at step 4 (epoch 1, batch 1), not from scratch
    assert stats["steps"] == 6 and seen == [(1, 1), (2, 0), (2, 1)]
    assert torch.equal(resumed[2].weight, straight[2].weight)


class _Counting(nn.Module):
    """A fixed random linear teacher that calls `hook` on every forward."""

    def __init__(self, hook=None) -> None:  # noqa: ANN001
        super().__init__()
        torch.manual_seed(11)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 3))
        self.hook = hook

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hook is not None:
            self.hook()
        return self.net(x)


@pytest.mark.slow
def test_projector_distillation_resumes_exactly_after_preemption(tmp_path) -> None:
    """Stopped by SIGTERM mid-run and resumed, distillation (with its synthetic-batch stream,
    which cycles on its own epochs) ends with exactly the factors of an uninterrupted run."""
    from hello_cli.distill import DistillConfig, distill_projector
    from shared.errors import Preempted
    from shared.runs import Run

    images, labels = torch.rand(10, 3, 24, 24), torch.arange(10) % 3
    synthetic = torch.rand(7, 3, 24, 24)
    cfg = DistillConfig(epochs=3, batch_size=4, seed=2)  # 3 real, 2 synthetic batches / epoch
    aug = AugConfig(out_size=16)

    class Projector(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(5)
            # an "encoder." parameter group, with its own learning rate, and a head
            self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8))
            self.head = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(x))

    projector = Projector

    def run_distill(proj: nn.Module, teacher: nn.Module, run=None) -> dict:  # noqa: ANN001
        return distill_projector(
            proj, teacher, images, labels, cfg, aug=aug, synthetic=synthetic, run=run
        )

    straight = projector()
    stats = run_distill(straight, _Counting())
    assert stats["steps"] == 9 and stats["final_loss"] > 0
    resumed = projector()
    with pytest.raises(Preempted), Run(tmp_path, tool="hello", command="distill") as run:
        hit, _ = _preempt_at(run, 2 * 4)  # two teacher calls per step: stop after step 4
        run_distill(resumed, _Counting(hit), run=run)
    assert not torch.equal(resumed.head.weight, straight.head.weight)
    resumed = projector()
    with Run(tmp_path, tool="hello", command="distill", resume=True) as run:
        calls = [0]
        stats = run_distill(resumed, _Counting(lambda: calls.__setitem__(0, calls[0] + 1)), run)
    assert stats["steps"] == 9 and calls[0] == 2 * 5  # steps 5..9 only
    for p, q in zip(resumed.parameters(), straight.parameters(), strict=True):
        assert torch.equal(p, q)
    # the resume state holds the trained tensors (not a frozen encoder's weights), and the
    # projector stays in eval mode (its BatchNorm statistics belong to the frozen base)
    state = torch.load(tmp_path / "resume.pt", weights_only=True)
    assert set(state["objects"]["projector"]) == {n for n, _ in resumed.named_parameters()}
    assert state["step"] == 4 and not resumed.training
