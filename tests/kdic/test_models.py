"""Model specs, toolkit checkpoints and foreign compressai checkpoints."""

from __future__ import annotations

import pytest
import torch

from tests.kdic.conftest import tiny


def test_compressai_training_checkpoint_loads_with_its_entropy_tables(tmp_path) -> None:
    """What compressai's examples/train.py saves: a dict with "state_dict" (CDF buffers
    sized by update()); loaded without unpickling code, the outputs match exactly."""
    from kdic_cli.models import fingerprint, load_model

    model = tiny("mbt2018-mean")
    model.update(force=True)
    path = tmp_path / "checkpoint_best_loss.pth.tar"
    torch.save({"epoch": 3, "state_dict": model.state_dict(), "loss": 1.0}, path)
    loaded, _ = load_model(path, arch=model.kdic_spec)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x)["x_hat"], model(x)["x_hat"])
    assert fingerprint(loaded) == fingerprint(model)
    assert model.compress(x)["strings"] == loaded.compress(x)["strings"]


def test_mismatched_checkpoint_is_bad_input(tmp_path) -> None:
    from kdic_cli.models import load_model, make_spec
    from shared.errors import InputError

    path = tmp_path / "c.pth"
    torch.save({"state_dict": tiny("mbt2018-mean").state_dict()}, path)
    with pytest.raises(InputError, match="do not fit"):
        load_model(path, arch=make_spec("mbt2018-mean", N=32, M=24))
    with pytest.raises(InputError, match="--arch"):
        load_model(path)


def test_toolkit_checkpoint_round_trip_for_a_narrowed_student(tmp_path) -> None:
    from kdic_cli.models import fingerprint, load_model, save_model
    from kdic_cli.student import build_student

    student, info = build_student(tiny("mbt2018-mean"), [torch.rand(2, 3, 64, 64)], 0.5)
    student.update(force=True)
    save_model(tmp_path / "s.safetensors", student, extra={"kdic_student": info})
    loaded, meta = load_model(tmp_path / "s.safetensors")
    assert meta["kdic_student"]["eb"] == info["eb"]
    assert fingerprint(loaded) == fingerprint(student)


def test_zoo_specs() -> None:
    from kdic_cli.models import make_spec
    from shared.errors import InputError

    assert make_spec("mbt2018-mean", quality=5) == {"name": "mbt2018-mean", "N": 192, "M": 320}
    assert make_spec("bmshj2018-hyperprior", quality=1)["N"] == 128
    with pytest.raises(InputError):
        make_spec("no-such-codec")
