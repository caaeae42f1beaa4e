"""GPU behaviour of the losses (skipped without CUDA): same numbers as on the CPU, deterministic
mode, autocast and TF32 matmuls."""

from __future__ import annotations

import pytest
import torch

from seglab.losses import (
    BCELoss,
    CrossEntropyLoss,
    DeepSupervisionLoss,
    DiceLoss,
    FocalLoss,
    IoULoss,
    MSSSIMLoss,
    TverskyLoss,
    build,
)
from seglab.models import SegOutput

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CASES = [
    ("bce", lambda m: BCELoss(mode=m, ignore_index=255), ("binary", "multilabel")),
    ("ce", lambda m: CrossEntropyLoss(ignore_index=255, label_smoothing=0.1), ("multiclass",)),
    ("dice", lambda m: DiceLoss(mode=m, ignore_index=255), ("binary", "multiclass", "multilabel")),
    ("dice_pi_sq", lambda m: DiceLoss(mode=m, per_image=True, squared=True), ("binary", "multiclass")),
    ("dice_signed", lambda m: DiceLoss(mode=m, signed=True, weight=(0.2, 0.8)), ("binary", "multiclass")),
    ("iou", lambda m: IoULoss(mode=m, ignore_index=255), ("binary", "multiclass")),
    ("tversky", lambda m: TverskyLoss(0.3, 0.7, mode=m), ("binary", "multiclass")),
    ("focal", lambda m: FocalLoss(mode=m, ignore_index=255), ("binary", "multiclass", "multilabel")),
    ("ms_ssim", lambda m: MSSSIMLoss(mode=m), ("binary", "multiclass")),
]
PARAMS = [(name, f, m) for name, f, modes in CASES for m in modes]
IDS = [f"{name}-{m}" for name, _, m in PARAMS]


def _inputs(mode: str, n: int = 2, c: int = 3, size: int = 170) -> tuple[torch.Tensor, torch.Tensor]:
    if mode == "binary":
        t = (torch.rand(n, size, size) < 0.3).long()
        x = torch.randn(n, 1, size, size)
    elif mode == "multiclass":
        t = torch.randint(0, c, (n, size, size))
        x = torch.randn(n, c, size, size)
    else:
        t = (torch.rand(n, c, size, size) < 0.3).long()
        x = torch.randn(n, c, size, size)
    return x, t


def _value_and_grad(
    loss: torch.nn.Module, x: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.clone().requires_grad_()
    value = loss(leaf, t)
    (grad,) = torch.autograd.grad(value, leaf)
    return value.detach().cpu(), grad.cpu()


@pytest.mark.parametrize(("name", "factory", "mode"), PARAMS, ids=IDS)
def test_cuda_matches_cpu(name: str, factory, mode: str) -> None:
    x, t = _inputs(mode)
    loss = factory(mode)
    v_cpu, g_cpu = _value_and_grad(loss, x, t)
    v_gpu, g_gpu = _value_and_grad(loss.cuda(), x.cuda(), t.cuda())
    assert torch.allclose(v_gpu, v_cpu, atol=1e-5, rtol=1e-5)
    assert torch.allclose(g_gpu, g_cpu, atol=1e-4 * g_cpu.abs().max().item(), rtol=1e-3)


@pytest.mark.parametrize(("name", "factory", "mode"), PARAMS, ids=IDS)
def test_cuda_deterministic_mode(name: str, factory, mode: str) -> None:
    x, t = _inputs(mode)
    loss = factory(mode).cuda()
    torch.use_deterministic_algorithms(True)
    try:
        a = _value_and_grad(loss, x.cuda(), t.cuda())
        b = _value_and_grad(loss, x.cuda(), t.cuda())
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize(("name", "factory", "mode"), PARAMS, ids=IDS)
def test_autocast_half_logits(name: str, factory, mode: str) -> None:
    """Half-precision logits from an autocast region are scored in float32: no overflow, no NaN."""
    x, t = _inputs(mode)
    loss = factory(mode).cuda()
    v32, _ = _value_and_grad(loss, x.cuda().half().float(), t.cuda())
    leaf = x.cuda().half().requires_grad_()
    with torch.autocast("cuda", dtype=torch.float16):
        value = loss(leaf, t.cuda())
    value.backward()
    assert value.dtype == torch.float32
    assert torch.isfinite(leaf.grad).all()
    assert torch.allclose(value.detach().cpu(), v32, atol=1e-4, rtol=1e-4)


def test_ms_ssim_ignores_tf32_setting() -> None:
    x, t = _inputs("binary", size=256)
    ref, _ = _value_and_grad(MSSSIMLoss(), x, t)
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        got, _ = _value_and_grad(MSSSIMLoss().cuda(), x.cuda(), t.cuda())
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
    assert torch.allclose(got, ref, atol=1e-5)


def test_deep_supervision_on_cuda() -> None:
    x, t = _inputs("multiclass", size=64)
    aux = [torch.randn(2, 3, 32, 32)]
    cls = torch.randn(2, 3)
    ds = DeepSupervisionLoss(build("ce+dice", mode="multiclass"), weights="halving", cls_loss="bce")
    cpu = ds.terms(SegOutput(x, aux, cls), t)
    gpu = ds.terms(SegOutput(x.cuda(), [a.cuda() for a in aux], cls.cuda()), t.cuda())
    assert set(cpu) == set(gpu)
    for key in cpu:
        assert torch.allclose(gpu[key].cpu(), cpu[key], atol=1e-5), key
