"""Sparse models set torch to one thread on CPU (see patch_spconv_for_cpu); give the rest of
the suite its threads back after each test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _restore_threads() -> Iterator[None]:
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
