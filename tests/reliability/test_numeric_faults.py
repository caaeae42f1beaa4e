"""Numbers that used to pass silently (issue 21 item 8): float targets outside [0, 1], NaN logits
through MS-SSIM, and NaN or infinite float options."""

from __future__ import annotations

import math

import pytest
import torch

from seglab import losses
from seglab.engine.config import TrainConfig
from seglab.errors import InvalidValueError
from seglab.losses import functional as LF

from ._faults import TRAIN, assert_one_line_error, run_cli


def _pair() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 48, 48, generator=gen)
    target = (torch.rand(2, 48, 48, generator=gen) > 0.5).float()
    return logits, target


@pytest.mark.filterwarnings("ignore:MS-SSIM")
@pytest.mark.parametrize("spec", ["bce", "dice", "focal", "iou", "tversky", "ms_ssim"])
def test_float_targets_outside_0_1_are_refused(spec: str) -> None:
    logits, target = _pair()
    loss = losses.build(spec)
    soft = loss(logits, target * 0.8 + 0.1)  # soft labels in [0, 1] are fine
    assert math.isfinite(soft.item())
    with pytest.raises(InvalidValueError) as err:
        loss(logits, target * 255)  # a 0/255 mask passed as float: BCE was -12700, Dice -0.98
    text = str(err.value)
    assert "expects float targets in [0, 1]" in text and "got values in [0, 255]" in text
    assert "Divide a 0/255 mask by 255" in text and "\n" not in text
    with pytest.raises(InvalidValueError, match=r"got values in \[-1, 1\]"):
        loss(logits, target * 2 - 1)
    nan_target = target.clone()
    nan_target[0, 0, 0] = float("nan")
    with pytest.raises(InvalidValueError, match="expects float targets in"):
        loss(logits, nan_target)


def test_ms_ssim_propagates_nan_logits() -> None:
    logits, target = _pair()
    logits = torch.cat([logits, logits]).repeat(1, 1, 4, 4)  # 192 x 192: all five scales
    target = torch.cat([target, target]).repeat(1, 4, 4)
    logits[1, 0, 100, 100] = float("nan")
    per_image = LF.ms_ssim_loss(logits, target, reduction="none")
    assert math.isfinite(per_image[0, 0].item()) and math.isnan(per_image[1, 0].item())  # was 1.0
    assert math.isnan(losses.build("focal+ms_ssim+iou")(logits, target).item())
    # the trainer's non-finite check sees it; a negative term (anti-correlated luminance) still gives
    # MS-SSIM 0, not NaN
    anti = LF.ms_ssim(torch.rand(1, 1, 192, 192), torch.zeros(1, 1, 192, 192) - 1.0)
    assert anti.item() == 0.0


@pytest.mark.parametrize(
    ("key", "section", "value"),
    [
        ("max_time", None, float("nan")),
        ("max_time", None, float("inf")),
        ("min_delta", None, float("nan")),
        ("lr", "optim", float("nan")),
        ("grad_clip", "optim", float("inf")),
        ("weight_decay", "optim", float("nan")),
        ("momentum", "optim", float("nan")),
        ("warmup_epochs", "optim", float("nan")),
        ("min_lr_ratio", "optim", float("nan")),
        ("poly_power", "optim", float("-inf")),
        ("cls_weight", "loss", float("nan")),
        ("std", "data", [float("nan")]),
        ("mean", "data", [float("inf")]),
        ("aux_weights", "loss", [1.0, float("nan")]),
    ],
)
def test_nan_and_inf_options_are_refused(key: str, section: str | None, value: object) -> None:
    data = {key: value} if section is None else {section: {key: value}}
    name = key if section is None else f"{section}.{key}"
    with pytest.raises(InvalidValueError, match=rf"^{name}(\[\d\])? must be a finite number"):
        TrainConfig.from_dict(data)


def test_cli_max_time_nan_is_one_line(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = run_cli(
        capsys, *TRAIN, "--data", "synthetic", "--max-time", "nan", "--out", str(tmp_path / "r")
    )
    assert_one_line_error(code, err, "max_time must be a finite number in (0, inf); got nan")
