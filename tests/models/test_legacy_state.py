"""State dicts saved before the model-layer refactor load unchanged and give the same outputs.

The fixtures (see ``tests/models/_legacy.py``) were written by the code at commit ``bfd6485``:
for each model family, the state-dict layout, an input and the outputs. Here the current classes
are built with the same options, load the old state dict with ``strict=True`` (keys of modules
renamed since are mapped by ``SegmentationModel.renamed_keys``; every other key and every shape
must match) and reproduce every output (main, auxiliary, classification).
"""

from __future__ import annotations

import pytest
import torch

import seglab
from tests.models._legacy import CASES, FIXTURES, make_state, outputs, spec_of


@pytest.mark.parametrize("case", sorted(CASES))
def test_old_state_dict_loads_and_reproduces_outputs(case: str) -> None:
    name, options, in_ch, k, _ = CASES[case]
    saved = torch.load(FIXTURES / f"{case}.pt", weights_only=True)
    model = seglab.create_model(name, in_channels=in_ch, num_classes=k, **options)
    spec = {key: (tuple(shape), dtype) for key, (shape, dtype) in saved["spec"].items()}
    model.load_state_dict(make_state(spec), strict=True)
    assert len(spec_of(model)) == len(spec)
    res = outputs(model, saved["input"])
    for key, value in res.items():
        ref = saved[key]
        if isinstance(value, list):
            assert len(value) == len(ref)
            for a, b in zip(value, ref):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        elif value is None:
            assert ref is None
        else:
            assert value.std() > 0  # the reference is not a constant map
            torch.testing.assert_close(value, ref, rtol=1e-5, atol=1e-5)
