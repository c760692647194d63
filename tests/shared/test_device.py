from __future__ import annotations

import pytest
import torch

from shared import device as dev
from shared.errors import InputError


def test_cpu_and_auto_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert dev.select_device("cpu").device == torch.device("cpu")
    choice = dev.select_device("auto")
    assert choice.device.type == "cpu" and "no CUDA" in choice.reason


def test_auto_picks_gpu_with_most_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    free = {0: 5 * 2**30, 1: 70 * 2**30, 2: 20 * 2**30}
    monkeypatch.setattr(dev, "_cuda_free_bytes", lambda i: free[i])
    choice = dev.select_device("auto")
    assert choice.device == torch.device("cuda", 1)
    assert "most free memory" in choice.reason


def test_auto_under_launcher_uses_local_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(dev, "_cuda_free_bytes", lambda i: 2**30 * (10 - i))
    monkeypatch.setenv("LOCAL_RANK", "2")
    assert dev.select_device("auto").device == torch.device("cuda", 2)
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("SLURM_LOCALID", "3")
    assert dev.select_device("cuda").device == torch.device("cuda", 3)


def test_bad_specs_are_input_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match="CUDA is not available"):
        dev.select_device("cuda:0")
    with pytest.raises(InputError, match="expected auto"):
        dev.select_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(InputError, match="has 2 CUDA"):
        dev.select_device("cuda:5")
    with pytest.raises(InputError, match="integer"):
        dev.select_device("cuda:x")


def test_missing_extra_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import deps
    from shared.errors import MissingExtraError

    monkeypatch.setattr(deps, "is_installed", lambda m: m != "timm")
    with pytest.raises(MissingExtraError, match=r"pip install 'efficient-learning-toolkit\[vbp\]'"):
        deps.require("vbp")
    assert deps.extra_status("vbp")["timm"] is None
