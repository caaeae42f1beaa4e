"""Shared test configuration: deterministic, small, CPU-only."""

import os

import pytest
import torch

from tests._optional import REQUIRE_ENV, required

# Keep each test process to one thread: the suite runs in parallel on a 2-core machine.
torch.set_num_threads(int(os.environ.get("SEGLAB_TEST_THREADS", "1")))


def pytest_report_header(config: pytest.Config) -> str:
    if required():
        return f"optional peers: required ({REQUIRE_ENV}=1): a missing one fails its tests"
    return f"optional peers: tests without them are skipped (set {REQUIRE_ENV}=1 to fail instead)"


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
