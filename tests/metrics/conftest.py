"""Fixtures for the metric tests: peer libraries are optional, each test skips without its peer."""

from __future__ import annotations

from types import ModuleType

import pytest

from tests._optional import peer


@pytest.fixture(scope="session")
def smp_metrics() -> ModuleType:
    """``segmentation_models_pytorch.metrics`` (skips the test when smp is not installed)."""
    return peer("segmentation_models_pytorch.metrics")
