"""Fully Convolutional Networks (Long, Shelhamer & Darrell, "Fully Convolutional Networks for
Semantic Segmentation", CVPR 2015).

VGG-16 (torchvision's layer definitions) made fully convolutional: fc6 becomes a 7x7 conv with
4096 channels and fc7 a 1x1 conv, followed by a 1x1 class-score layer. Predictions are
up-sampled by transposed convolutions initialised to bilinear interpolation:

* ``fcn32s``: one 32x up-sampling of the fc7 scores;
* ``fcn16s``: 2x up-sampling, **summed** with scores from pool4, then 16x;
* ``fcn8s``: as 16s, then 2x again, summed with scores from pool3, then 8x.

The geometry follows the reference Caffe models exactly: conv1_1 pads by 100 pixels, pooling rounds
up (``ceil_mode``), and each fusion crops the larger map at the reference offsets (5 for pool4, 9
for pool3, then 19 / 27 / 31 for the final crops), so the output has the input's size for **any**
input size. Score layers start at zero, as in the paper.

``weights`` takes a local torchvision ``vgg16`` state dict (``vgg16-397923af.pth``): the
convolutional layers load as they are and the fully-connected fc6 / fc7 are reshaped into
convolutions. Nothing is downloaded.
"""

from __future__ import annotations

import os
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.vgg import cfgs as _vgg_cfgs
from torchvision.models.vgg import make_layers as _vgg_make_layers

from seglab.errors import InvalidValueError
from seglab.layers.encoder import adapt_first_conv_weight, read_state_dict
from seglab.models.base import EncoderHeadModel
from seglab.models.registry import register_model

__all__ = ["FCN", "bilinear_kernel"]


def bilinear_kernel(channels: int, kernel_size: int) -> Tensor:
    """Weights ``(channels, channels, k, k)`` making a transposed conv a bilinear up-sampling."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    og = torch.arange(kernel_size, dtype=torch.float64)
    filt = 1 - (og - center).abs() / factor  # (k,)
    kernel = (filt[:, None] * filt[None, :]).float()  # (k, k)
    weight = torch.zeros(channels, channels, kernel_size, kernel_size)
    weight[range(channels), range(channels)] = kernel
    return weight


def _upsampler(channels: int, factor: int) -> nn.ConvTranspose2d:
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(channels, 2 * factor))
    return up


def _crop(t: Tensor, offset: int, hw: torch.Size) -> Tensor:
    return t[..., offset : offset + hw[0], offset : offset + hw[1]]


class FCN(EncoderHeadModel):
    """FCN-32s / 16s / 8s on VGG-16.

    Args:
        in_channels: input channels (the first conv is rebuilt when not 3; pretrained RGB filters
            are summed for 1 channel, or cycled and rescaled otherwise).
        num_classes: output classes.
        stride: 32, 16 or 8 (the variant).
        weights: path to a torchvision ``vgg16`` state dict, or ``None`` (random init).
        dropout: dropout after fc6 and fc7 (0.5 in the paper).

    Parameters for 3 -> 21 classes: FCN-32s 136,152,917 (134,346,581 without the 32x up-sampling
    filter), FCN-16s 134,815,994, FCN-8s 134,489,759.

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes, H, W)`` for any ``H, W``.

    Example:
        >>> m = FCN(3, 21, stride=32)
        >>> m(torch.randn(1, 3, 37, 53)).shape
        torch.Size([1, 21, 37, 53])
    """

    resize_logits = False  # the reference crops give the input's size

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 1,
        *,
        stride: int = 8,
        weights: str | os.PathLike | None = None,
        dropout: float = 0.5,
    ) -> None:
        if isinstance(stride, bool) or stride not in (8, 16, 32):
            raise InvalidValueError(f"FCN stride must be 8, 16 or 32; got {stride!r}.")
        super().__init__(in_channels, num_classes)
        self.stride = stride
        # torchvision's VGG-16 layer list (configuration "D"), without its 120 M-parameter classifier
        feats = _vgg_make_layers(_vgg_cfgs["D"])
        first = feats[0]
        feats[0] = nn.Conv2d(in_channels, first.out_channels, 3, padding=100)
        for i, m in enumerate(feats):
            if isinstance(m, nn.MaxPool2d):
                feats[i] = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        # pool3 after index 16, pool4 after 23, pool5 after 30
        self.to_pool3 = feats[:17]
        self.to_pool4 = feats[17:24]
        self.to_pool5 = feats[24:]
        self.fc6 = nn.Conv2d(512, 4096, 7)
        self.fc7 = nn.Conv2d(4096, 4096, 1)
        self.drop = nn.Dropout2d(dropout)
        self.relu = nn.ReLU(inplace=True)
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        if stride == 32:
            self.upscore = _upsampler(num_classes, 32)
        else:
            self.upscore2 = _upsampler(num_classes, 2)
            self.score_pool4 = nn.Conv2d(512, num_classes, 1)
            if stride == 16:
                self.upscore16 = _upsampler(num_classes, 16)
            else:
                self.upscore_pool4 = _upsampler(num_classes, 2)
                self.score_pool3 = nn.Conv2d(256, num_classes, 1)
                self.upscore8 = _upsampler(num_classes, 8)
        for m in (self.score_fr, getattr(self, "score_pool4", None), getattr(self, "score_pool3", None)):
            if m is not None:
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)
        if weights is not None:
            self.load_vgg16(weights)

    def load_vgg16(self, path: str | os.PathLike) -> None:
        """Load a torchvision ``vgg16`` state dict from a local file (fc6/fc7 reshaped to convs)."""
        sd = read_state_dict(path, "VGG-16")
        path = os.fspath(path)
        if "features.0.weight" not in sd or "classifier.0.weight" not in sd:
            raise InvalidValueError(
                f"{path!r} is not a torchvision vgg16 state dict (no features.0.weight / classifier.0.weight)."
            )
        convs = [m for m in (*self.to_pool3, *self.to_pool4, *self.to_pool5) if isinstance(m, nn.Conv2d)]
        keys = sorted(
            {k.rsplit(".", 1)[0] for k in sd if k.startswith("features.")}, key=lambda k: int(k.split(".")[1])
        )
        if len(keys) != len(convs):
            raise InvalidValueError(
                f"{path!r}: expected {len(convs)} conv layers in features, found {len(keys)}."
            )
        with torch.no_grad():
            for conv, key in zip(convs, keys):
                w = sd[f"{key}.weight"]
                if conv is convs[0] and conv.in_channels != w.shape[1]:
                    w = adapt_first_conv_weight(w, conv.in_channels)
                conv.weight.copy_(w)
                conv.bias.copy_(sd[f"{key}.bias"])
            self.fc6.weight.copy_(sd["classifier.0.weight"].view(4096, 512, 7, 7))
            self.fc6.bias.copy_(sd["classifier.0.bias"])
            self.fc7.weight.copy_(sd["classifier.3.weight"].view(4096, 4096, 1, 1))
            self.fc7.bias.copy_(sd["classifier.3.bias"])

    def features(self, x: Tensor) -> list[Tensor]:
        """``[pool3, pool4, fc7 scores]``: the maps the skips and the score layer read."""
        pool3 = self.to_pool3(x)  # (N, 256, ~(H+198)/8, ...)
        pool4 = self.to_pool4(pool3)  # (N, 512, ~(H+198)/16, ...)
        h = self.to_pool5(pool4)  # (N, 512, ~(H+198)/32, ...)
        h = self.drop(self.relu(self.fc6(h)))  # (N, 4096, h5 - 6, w5 - 6)
        h = self.drop(self.relu(self.fc7(h)))
        return [pool3, pool4, self.score_fr(h)]  # scores: (N, K, h5 - 6, w5 - 6)

    def decode(self, feats: list[Tensor], size: torch.Size) -> Tensor:
        """Up-sample the scores, fuse the pool4 (and pool3) scores, crop at the reference offsets."""
        pool3, pool4, score = feats
        if self.stride == 32:
            return _crop(self.upscore(score), 19, size)
        up2 = self.upscore2(score)  # (N, K, ~h4, ~w4)
        fuse4 = up2 + _crop(self.score_pool4(pool4), 5, up2.shape[-2:])  # summation skip from pool4
        if self.stride == 16:
            return _crop(self.upscore16(fuse4), 27, size)
        up4 = self.upscore_pool4(fuse4)  # (N, K, ~h3, ~w3)
        s3 = _crop(self.score_pool3(pool3), 9, up4.shape[-2:])
        return _crop(self.upscore8(up4 + s3), 31, size)


_VARIANTS = {
    32: "FCN-32s: one 32x bilinear-initialised up-sampling of the fc7 scores.",
    16: "FCN-16s: fc7 scores up-sampled 2x and summed with pool4 scores, then 16x.",
    8: "FCN-8s: as FCN-16s, then 2x again and summed with pool3 scores, then 8x.",
}
for _stride, _summary in _VARIANTS.items():
    register_model(
        f"fcn{_stride}s",
        partial(FCN, stride=_stride),
        paper="Long et al., FCN, CVPR 2015",
        input_rule="any size (Caffe geometry: conv1 pad 100, offset crops)",
        example_size=(32, 32),
        summary=_summary,
    )
