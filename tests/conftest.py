"""Shared test configuration: deterministic, small, CPU-only."""

import os

import pytest
import torch

# Keep each test process to one thread: the suite runs in parallel on a 2-core machine.
torch.set_num_threads(int(os.environ.get("SEGLAB_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
