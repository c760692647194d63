"""The three training commands on the shared engine: what --sampler-steps trains, exact
resume after preemption, and the Python API without a run folder."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from scorelidar_cli import api, training
from scorelidar_cli.api import DistillOptions, TrainTeacherOptions
from tests.helpers import run_cli

pytest.importorskip("spconv.pytorch")
T = 999  # the last timestep of the schedule (Schedule().steps - 1)


def _distill(
    teacher: Path, data: Path, k: int, monkeypatch: pytest.MonkeyPatch, steps: int = 2
) -> tuple[dict[str, torch.Tensor], list[tuple[int, bool]]]:
    """Distil through the API; every call of the student: (timestep, with gradient)."""
    calls: list[tuple[int, bool]] = []
    real_init = training.Distiller.__init__

    def init(self: training.Distiller, *args: object, **kwargs: object) -> None:
        real_init(self, *args, **kwargs)

        def record(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            t = args[2] if len(args) > 2 else kwargs["t"]
            calls.extend((int(v), torch.is_grad_enabled()) for v in t.unique())

        self.student.register_forward_pre_hook(record, with_kwargs=True)

    with monkeypatch.context() as m:
        m.setattr(training.Distiller, "__init__", init)
        cfg = DistillOptions(teacher=teacher, data=data, sequences="00", steps=steps,
                             sampler_steps=k)  # fmt: skip
        student, metrics = api.distill_model(cfg)
    assert metrics["steps"] == steps and "model" not in metrics  # no run: nothing written
    return {k: v.clone() for k, v in student.state_dict().items()}, calls


def test_sampler_steps_changes_what_the_student_is_trained_on(
    sim: Path, untrained: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """K = 1 (the paper): the student is only ever called, and only trained, at t = T.
    K = 4: its own sampler runs (no gradient) to a random step, and the trained call is at
    that step's smaller timestep; so the weights after the same steps differ, while the same
    K twice gives identical weights."""
    one, calls_one = _distill(untrained, sim, 1, monkeypatch)
    again, _ = _distill(untrained, sim, 1, monkeypatch)
    four, calls_four = _distill(untrained, sim, 4, monkeypatch)
    assert calls_one and {t for t, _ in calls_one} == {T}
    assert all(grad for _, grad in calls_one)  # one trained call per step, nothing else
    trained = [t for t, grad in calls_four if grad]
    assert len(trained) == 2 and min(trained) < T  # trained at a cut point of the sampler
    assert any(not grad and t < T for t, grad in calls_four)  # the no-grad sampler steps ran
    assert all(torch.equal(one[k], again[k]) for k in one)
    assert any(not torch.equal(one[k], four[k]) for k in one)


def test_teacher_trains_from_python_without_a_run(sim: Path) -> None:
    cfg = TrainTeacherOptions(data=sim, preset="tiny", model_config={"n_cond": 128},
                              steps=2, batch_size=1)  # fmt: skip
    net, metrics = api.train_teacher_model(cfg)
    assert net.config.n_cond == 128 and not net.training
    assert metrics["steps"] == 2 and metrics["frames"] == 6 and "model" not in metrics
    assert torch.isfinite(torch.tensor(metrics["final_loss"]))


def test_preset_choices_are_the_models_presets() -> None:
    from scorelidar_cli.model import PRESETS

    assert set(api.PRESET_NAMES) == set(PRESETS)


def _weights(folder: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / name)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["train-teacher", "distill"])
def test_preempted_and_resumed_run_gives_the_same_weights(
    command: str, sim: Path, untrained: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM after step 2 of 4 saves the state and exits 75; --resume finishes with weights
    bit-identical to the uninterrupted run (same frames, noise, optimizer and LR state)."""
    if command == "train-teacher":
        args = ["train-teacher", "--data", sim, "--preset", "tiny", "--batch-size", "1"]
        target, attr, at = training, "teacher_step", 4  # (net, pool, config, schedule, step, ..)
    else:
        args = ["distill", "--teacher", untrained, "--data", sim, "--sampler-steps", "3"]
        target, attr, at = training.Distiller, "step", 3  # (self, pool, trainer, step)
    args += ["--steps", "4", "--checkpoint-every", "0", "--quiet"]
    assert run_cli("scorelidar", *args, "--out", tmp_path / "full").code == 0
    real = getattr(target, attr)

    def preempted(*a: object, **kw: object) -> object:
        out = real(*a, **kw)
        if a[at] == 2:  # step 2: the Run's handler sets its stop flag
            signal.raise_signal(signal.SIGTERM)
        return out

    with monkeypatch.context() as m:
        m.setattr(target, attr, preempted)
        res = run_cli("scorelidar", *args, "--out", tmp_path / "part")
    assert res.code == 75, res.stderr[-2000:]
    assert torch.load(tmp_path / "part" / "resume.pt", weights_only=True)["step"] == 2
    assert not (tmp_path / "part" / "model.safetensors").exists()
    res = run_cli("scorelidar", *args, "--out", tmp_path / "part", "--resume")
    assert res.code == 0, res.stderr[-2000:]
    full, resumed = _weights(tmp_path / "full"), _weights(tmp_path / "part")
    assert full.keys() == resumed.keys()
    assert all(torch.equal(full[k], resumed[k]) for k in full)
