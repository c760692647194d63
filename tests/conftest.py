"""Test-wide settings: offline hubs, few threads, deterministic seeds."""

from __future__ import annotations

import os

import pytest

from tests.helpers import REPO

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOOLKIT_CACHE", str(REPO / ".cache"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    import torch

    torch.manual_seed(0)
