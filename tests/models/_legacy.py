"""Reference outputs of every model family, saved from the code before the model-layer refactor.

Each fixture ``fixtures/<case>.pt`` holds the state-dict *layout* of a small model (key -> shape
and dtype), one input and the model's outputs. The weights themselves are not stored: they are a
deterministic function of each key and shape (:func:`make_state`), so a fixture stays a few KB
while the test still loads a full state dict with ``strict=True`` and compares numbers.

The fixtures were written once by ``python -m tests.models._legacy`` at commit ``bfd6485`` (the
code before issue 19). Never regenerate them from newer code: they are the reference.
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

FIXTURES = Path(__file__).parent / "fixtures"

# name -> (registered model, options, in_channels, num_classes, input (H, W))
CASES: dict[str, tuple[str, dict[str, Any], int, int, tuple[int, int]]] = {
    "unet": ("unet", {"base_channels": 4, "depth": 2}, 1, 2, (16, 20)),
    "unet_shuffle": (
        "unet",
        {"base_channels": 4, "depth": 3, "down": "pixel_unshuffle", "up": "pixel_shuffle", "norm": "group"},
        3,
        1,
        (16, 24),
    ),
    "unet_strided": (
        "unet",
        {
            "depth": 2,
            "channels": [4, 6, 8],
            "down": "strided",
            "up": "bilinear",
            "norm": "none",
            "act": "silu",
        },
        2,
        3,
        (12, 8),
    ),
    "unet_valid": ("unet_valid", {"base_channels": 4, "depth": 2}, 1, 2, (44, 52)),
    "unetpp": ("unetpp", {"depth": 2, "channels": [4, 8, 16]}, 1, 2, (16, 20)),
    "unetpp_average": (
        "unetpp",
        {"depth": 3, "channels": [4, 6, 8, 10], "ds_output": "average", "up": "bilinear", "down": "strided"},
        2,
        1,
        (16, 8),
    ),
    "unet3p": (
        "unet3p",
        {"depth": 2, "channels": [4, 8, 16], "cat_channels": 4, "cgm": True},
        1,
        2,
        (16, 20),
    ),
    "unet3p_nearest": (
        "unet3p",
        {
            "depth": 3,
            "channels": [4, 6, 8, 10],
            "cat_channels": 3,
            "up": "nearest",
            "down": "strided",
            "cgm_gate": False,
        },
        3,
        1,
        (16, 24),
    ),
    "fcn32s": ("fcn32s", {}, 3, 2, (20, 18)),
    "fcn16s": ("fcn16s", {}, 1, 2, (20, 18)),
    "fcn8s": ("fcn8s", {}, 3, 3, (20, 18)),
    "deeplabv3": ("deeplabv3", {"encoder": "resnet18", "aux": True}, 3, 2, (32, 28)),
    "deeplabv3_head_conv": (
        "deeplabv3",
        {"encoder": "resnet34", "output_stride": 8, "head_conv": True, "aspp_channels": 16},
        1,
        2,
        (24, 24),
    ),
    "deeplabv3_resnet50": ("deeplabv3", {"aspp_channels": 16}, 3, 2, (20, 20)),
    "deeplabv3plus": ("deeplabv3plus", {"encoder": "resnet18", "aux": True}, 3, 2, (32, 28)),
    "deeplabv3plus_light": (
        "deeplabv3plus",
        {"encoder": "resnet18", "decoder_layout": "light", "separable": False, "aspp_channels": 16},
        2,
        1,
        (32, 32),
    ),
    "pspnet": ("pspnet", {"encoder": "resnet18", "aux": True}, 3, 2, (32, 28)),
    "u2net": ("u2net", {"width": 0.125}, 3, 1, (19, 15)),
    "u2net_small": ("u2net_small", {}, 1, 1, (21, 18)),
    "mask_rcnn": ("mask_rcnn", {"encoder": "resnet18"}, 1, 2, (64, 64)),
}


def make_state(spec: dict[str, tuple[tuple[int, ...], str]]) -> dict[str, Tensor]:
    """Deterministic, well-scaled weights for a state-dict layout (key -> (shape, dtype name)).

    Each tensor comes from a generator seeded by its key, so the values depend only on the key
    and the shape, never on the order in which a model creates its modules.
    """
    state = {}
    for key, (shape, dtype) in spec.items():
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if dtype != "float32":
            state[key] = torch.zeros(shape, dtype=getattr(torch, dtype))
            continue
        r = torch.randn(shape, generator=g)
        leaf = key.rsplit(".", 1)[-1]
        if leaf == "running_var":
            t = 0.5 + torch.rand(shape, generator=g)
        elif leaf == "running_mean":
            t = 0.1 * r
        elif len(shape) > 1:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod()))
            t = r * (1.0 / fan_in) ** 0.5
        elif leaf == "weight":
            t = 1 + 0.1 * r
        else:
            t = 0.1 * r
        state[key] = t
    return state


def spec_of(model: nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    """The state-dict layout of a model: key -> (shape, dtype name)."""
    return {k: (tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in model.state_dict().items()}


def outputs(model: nn.Module, x: Tensor) -> dict[str, Any]:
    """What a fixture compares: eval-mode outputs (all of them for semantic models)."""
    model.eval()
    with torch.no_grad():
        if hasattr(model, "roi_heads"):  # Mask R-CNN: the backbone's FPN maps, summarised per channel
            feats = model.backbone(x)
            return {"fpn_means": torch.stack([f.mean((2, 3))[0] for f in feats.values()])}
        res = model(x, aux=True)
    return {
        "out": res.out.clone(),  # clones: a saved view would carry its whole storage
        "aux": [a.clone() for a in res.aux],
        "cls": None if res.cls is None else res.cls.clone(),
    }


def _write() -> None:  # pragma: no cover - run once, at the commit named above
    import seglab

    FIXTURES.mkdir(exist_ok=True)
    for case, (name, options, in_ch, k, hw) in CASES.items():
        torch.manual_seed(0)
        model = seglab.create_model(name, in_channels=in_ch, num_classes=k, **options)
        spec = spec_of(model)
        model.load_state_dict(make_state(spec))
        x = torch.randn(1, in_ch, *hw, generator=torch.Generator().manual_seed(7))
        res = outputs(model, x)
        for t in [v for v in res.values() if isinstance(v, Tensor)] + res.get("aux", []):
            assert torch.isfinite(t).all() and t.std() > 0, (case, "outputs must be finite and vary")
        torch.save({"spec": spec, "input": x, **res}, FIXTURES / f"{case}.pt")
        print(case, (FIXTURES / f"{case}.pt").stat().st_size, file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    _write()
