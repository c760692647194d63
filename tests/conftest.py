"""Test-wide settings: offline hubs, few threads, deterministic seeds."""

from __future__ import annotations

import os

import pytest

from tests.helpers import REPO

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOOLKIT_CACHE", str(REPO / ".cache"))
# Under pytest-xdist (`make test-fast` runs one worker per core) each worker keeps to one
# thread, so the workers do not fight over the cores.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    import torch

    torch.manual_seed(0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` are skipped, with the reason, where no CUDA device is present; tests
    marked `rebuild` (retraining a shipped reference: minutes each) run only with
    TOOLKIT_REBUILD=1 (`make test-references`); `make test` rebuilds the smallest one only."""
    import torch

    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run `make gpu-check` on a GPU machine)")
    no_rebuild = pytest.mark.skip(reason="rebuilds a shipped reference: make test-references")
    rebuild = os.environ.get("TOOLKIT_REBUILD") == "1"
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(no_gpu)
        if "rebuild" in item.keywords and not rebuild:
            item.add_marker(no_rebuild)
