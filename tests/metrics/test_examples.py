"""The ``Example:`` sections of the metrics docstrings run and print what they claim."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "seglab.metrics",
    "seglab.metrics.confusion",
    "seglab.metrics.scores",
    "seglab.metrics.meter",
    "seglab.metrics.boundary",
    "seglab.metrics.instance",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False
    )
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
