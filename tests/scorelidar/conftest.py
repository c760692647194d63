"""Sparse models set torch to one thread on CPU (see patch_spconv_for_cpu); give the rest of
the suite its threads back after each test. Also the cheap shared inputs: simulated scenes
and an untrained tiny model (no training, so tests on them stay fast)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny simulated sequences (00, 01) of three frames each."""
    from scorelidar_cli.api import SimulateOptions, simulate_scenes

    root = tmp_path_factory.mktemp("scorelidar-sim")
    simulate_scenes(SimulateOptions(scenes=2, frames=3, azimuths=128), root)
    return root


@pytest.fixture(scope="session")
def untrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model folder holding the tiny preset at its initial weights (role 'teacher')."""
    from scorelidar_cli.model import build_model
    from scorelidar_cli.pipeline import MODEL_FILE, save_model

    folder = tmp_path_factory.mktemp("scorelidar-untrained")
    torch.manual_seed(0)
    save_model(folder / MODEL_FILE, build_model("tiny"), "teacher")
    return folder
