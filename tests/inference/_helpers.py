"""Shared helpers for the inference tests: registry models with realistic weights and statistics."""

from __future__ import annotations

import torch
from torch import nn

import seglab
from seglab.models import SegmentationModel, model_info

SEMANTIC = seglab.list_models(task="semantic")


@torch.no_grad()
def realistic(model: nn.Module) -> nn.Module:
    """Give batch-norm layers non-trivial statistics and affine parameters, give zero-initialised
    layers small random weights, and switch to eval mode.

    Without this, folding would be tested against identity statistics (mean 0, variance 1) and
    FCN's zero-initialised score layers would make every comparison trivially exact. The values
    stay mild (variance in [0.5, 1.5]) so the models remain as well conditioned as at
    initialisation: statistics estimated from a few tiny random batches would give near-zero
    variances whose 1 / sqrt(var) amplifies float32 rounding by orders of magnitude.
    """
    g = torch.Generator().manual_seed(1)
    for p in model.parameters():
        if p.ndim > 1 and not p.abs().any():
            p.copy_(torch.randn(p.shape, generator=g) * 0.01)
    for bn in model.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.running_mean is not None:
            bn.running_mean.copy_(0.1 * torch.randn(bn.running_mean.shape, generator=g))
            bn.running_var.copy_(0.5 + torch.rand(bn.running_var.shape, generator=g))
            if bn.affine:
                bn.weight.copy_(1 + 0.1 * torch.randn(bn.weight.shape, generator=g))
                bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=g))
    return model.eval()


def build(name: str, in_channels: int = 3, num_classes: int = 2) -> SegmentationModel:
    """A registered model built with its test options, made :func:`realistic` at its example size."""
    info = model_info(name)
    model = seglab.create_model(name, in_channels=in_channels, num_classes=num_classes, **info.test_options)
    return realistic(model)
