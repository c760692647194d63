from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from shared.checkpoints import load_checkpoint, load_state_dict, read_metadata, save_checkpoint
from shared.errors import InputError
from shared.io import write_text


def test_round_trip_keeps_tensors_and_metadata(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    path = save_checkpoint(
        tmp_path / "m.safetensors",
        model.state_dict(),
        tool="vbp",
        architecture={"name": "mlp", "widths": [3, 4, 2]},
    )
    tensors, meta = load_checkpoint(path, tool="vbp")
    assert meta["tool"] == "vbp" and meta["architecture"]["widths"] == [3, 4, 2]
    assert meta["version"]
    for key, value in model.state_dict().items():
        assert torch.equal(tensors[key], value)
    assert read_metadata(path) == meta


def test_wrong_tool_and_corrupt_file_are_refused(tmp_path: Path) -> None:
    path = save_checkpoint(
        tmp_path / "m.safetensors", {"w": torch.ones(2)}, tool="kdic", architecture={}
    )
    with pytest.raises(InputError, match="not by 'vbp'"):
        load_checkpoint(path, tool="vbp")
    data = path.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=str(bad)):
        load_checkpoint(bad)
    with pytest.raises(InputError, match="no such file"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_foreign_pth_loads_weights_only_and_unwraps(tmp_path: Path) -> None:
    sd = {"module.fc.weight": torch.randn(2, 2), "module.fc.bias": torch.zeros(2)}
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    loaded = load_state_dict(path)
    assert set(loaded) == {"fc.weight", "fc.bias"}
    assert torch.equal(loaded["fc.weight"], sd["module.fc.weight"])


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Trap:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": Trap()}}, path)
    with pytest.raises(InputError, match=r"refused, loading it would run code \(posix.system\)"):
        load_state_dict(path)
    plain = tmp_path / "evil.pkl"  # a plain pickle (protocol 4), not torch.save's format
    with open(plain, "wb") as f:
        pickle.dump({"state_dict": {"w": Trap()}}, f)
    with pytest.raises(InputError, match="not a PyTorch file"):
        load_state_dict(plain)
    assert not marker.exists()


def test_atomic_write_leaves_old_file_when_writer_fails(tmp_path: Path) -> None:
    from shared.io import atomic_write

    target = tmp_path / "f.txt"
    write_text(target, "old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_atomic_writes_get_the_usual_permissions(tmp_path: Path) -> None:
    """Not mkstemp's 0600: what open() would give under the current umask."""
    old = os.umask(0o022)
    try:
        path = write_text(tmp_path / "metrics.json", "{}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_random_bytes_are_not_called_unsafe_and_get_no_advice_to_disable_safety(
    tmp_path: Path,
) -> None:
    path = tmp_path / "noise.pth"
    path.write_bytes(bytes(range(256)) * 3)
    with pytest.raises(InputError) as err:
        load_state_dict(path)
    message = str(err.value)
    assert "not a PyTorch file" in message and "\n" not in message
    assert "trust" not in message and "weights_only=False" not in message


def test_timm_train_checkpoint_loads_with_its_namespace_and_prefers_ema(tmp_path: Path) -> None:
    import argparse

    path = tmp_path / "checkpoint-9.pth.tar"
    torch.save(
        {
            "epoch": 9,
            "arch": "vit_tiny",
            "state_dict": {"w": torch.ones(2)},
            "state_dict_ema": {"w": torch.zeros(2)},
            "args": argparse.Namespace(lr=0.1, model="vit_tiny"),
        },
        path,
    )
    assert torch.equal(load_state_dict(path)["w"], torch.zeros(2))  # EMA, timm's default
    assert torch.equal(load_state_dict(path, ema=False)["w"], torch.ones(2))


def test_damaged_metadata_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "m.safetensors"
    save_file({"w": torch.ones(1)}, str(path), metadata={"toolkit": "{not json"})
    with pytest.raises(InputError, match="damaged toolkit metadata"):
        read_metadata(path)
