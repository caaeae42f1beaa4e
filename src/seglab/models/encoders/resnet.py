"""ResNet-18/34/50/101 encoders (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016).

Built from torchvision's layer definitions, they return one feature map per scale, shallow to deep:

====== ============ =================== ============================================
index  module       stride (OS 32/16/8) channels (18/34 | 50/101)
====== ============ =================== ============================================
0      stem (relu)  2                   64 | 64
1      layer1       4                   64 | 256
2      layer2       8                   128 | 512
3      layer3       16 / 16 / 8         256 | 1024
4      layer4       32 / 16 / 8         512 | 2048
====== ============ =================== ============================================

``output_stride`` 16 or 8 replaces the stride-2 of the last one or two stages with dilation
(atrous convolution, as in DeepLab), so the deep features keep a finer grid while every
convolution keeps its receptive field. The convolution that held the stride keeps the previous
rate and every 3x3 convolution after it uses the doubled rate: the dilated encoder then computes
exactly the plain encoder's features on a denser grid (``layer4`` at OS 16 subsampled 2x equals
``layer4`` at OS 32). For bottleneck ResNets this is torchvision's ``replace_stride_with_dilation``;
torchvision refuses dilation in ``BasicBlock``, so ResNet-18/34 get the same rule applied here
after construction (parameters unchanged, so ImageNet weights still load).

``depth`` below 5 keeps the first ``depth`` maps (strides up to ``2**depth``) and does not build
the later stages.

The encoder's children are named as in torchvision (``conv1``, ``bn1``, ``relu``, ``maxpool``,
``layer1`` .. ``layer4``), so ``torchvision.models._utils.IntermediateLayerGetter`` and
``torchvision.models.detection.backbone_utils.BackboneWithFPN`` accept it as they accept a
torchvision ResNet.

``weights=`` takes the path of a local torchvision ResNet state dict (e.g. the ImageNet file
``resnet50-11ad3fa6.pth``); the ``fc`` keys are ignored, and for ``in_channels != 3`` the first
convolution's RGB filters are adapted (summed for one channel). Nothing is downloaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial

from torch import Tensor, nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from torchvision.models.resnet import ResNet

from seglab._options import RESNETS, check_choice, check_positive_int
from seglab.errors import InvalidValueError
from seglab.layers.encoder import Encoder
from seglab.models.encoders._registry import register_encoder

__all__ = ["OUTPUT_STRIDES", "ResNetEncoder", "check_output_stride"]

OUTPUT_STRIDES = (8, 16, 32)

_TORCHVISION: dict[str, Callable[..., ResNet]] = {
    "resnet18": resnet18,
    "resnet34": resnet34,
    "resnet50": resnet50,
    "resnet101": resnet101,
}
_BLOCKS_PER_STAGE = {
    "resnet18": (2, 2, 2, 2),
    "resnet34": (3, 4, 6, 3),
    "resnet50": (3, 4, 6, 3),
    "resnet101": (3, 4, 23, 3),
}


def check_output_stride(output_stride: object) -> int:
    """Validate an output stride (8, 16 or 32) and return it as an ``int``.

    Raises:
        ValueError: any other value.
    """
    if isinstance(output_stride, bool) or output_stride not in OUTPUT_STRIDES:
        raise InvalidValueError(
            f"output_stride must be one of {OUTPUT_STRIDES} (the encoder's total down-sampling); got "
            f"{output_stride!r}. Use 16 (DeepLab's default) or 8 for finer, costlier features."
        )
    return int(output_stride)  # type: ignore[arg-type]


def _dilate_stage(stage: nn.Sequential, previous: int, dilation: int) -> None:
    """Turn a stride-2 stage into a stride-1 atrous stage, in place (parameters unchanged).

    The convolution that held the stride keeps the ``previous`` rate; every 3x3 convolution after
    it runs at ``dilation``. The stage then computes the undilated stage's output on a grid
    ``dilation / previous`` times denser (subsampling it gives the undilated output exactly); for
    bottleneck blocks this is torchvision's ``replace_stride_with_dilation``.
    """
    rate = previous
    for block in stage:
        for m in block.modules():  # registration order: the main path first, the shortcut last
            if not isinstance(m, nn.Conv2d):
                continue
            strided = m.stride != (1, 1)
            m.stride = (1, 1)
            if m.kernel_size != (1, 1):
                m.dilation = (rate, rate)
                m.padding = (rate * (m.kernel_size[0] - 1) // 2, rate * (m.kernel_size[1] - 1) // 2)
            if strided:
                rate = dilation


class ResNetEncoder(Encoder):
    """A torchvision ResNet without its classifier, returning one feature map per stage.

    Args:
        name: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        in_channels: input image channels (the first convolution is rebuilt when not 3).
        depth: keep the maps down to stride ``2**depth`` (1..5; ``None``: all five).
        output_stride: 32 (plain ResNet; ``None`` means 32), 16 (layer4 atrous, rate 2) or 8
            (layer3 rate 2, layer4 rate 4).
        weights: path to a local torchvision ResNet state dict of the same depth, or ``None``
            (torchvision's random initialisation).

    Attributes:
        out_channels: channels of the outputs, e.g. ``(64, 256, 512, 1024, 2048)``.
        strides: down-sampling factor of the outputs, e.g. ``(2, 4, 8, 16, 16)`` at OS 16.
        dilations: atrous rate of the last block of ``layer1`` .. ``layer4``.

    Raises:
        ValueError: unknown name (did-you-mean), invalid ``output_stride``, ``depth`` or
            ``in_channels``, or a weights file that is not a matching torchvision ResNet state dict.
        FileNotFoundError: ``weights`` does not exist.

    Shape:
        ``(N, in_channels, H, W) ->`` a list of maps ``(N, out_channels[i], ceil(H / s_i),
        ceil(W / s_i))`` (``s_i = strides[i]``, sizes rounded up at each stride-2 step).

    Example:
        >>> import torch
        >>> enc = ResNetEncoder("resnet18", output_stride=8)
        >>> [tuple(f.shape[1:]) for f in enc(torch.randn(1, 3, 64, 64))]
        [(64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 8, 8), (512, 8, 8)]
    """

    def __init__(
        self,
        name: str = "resnet50",
        *,
        in_channels: int = 3,
        depth: int | None = None,
        output_stride: int | None = 32,
        weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        check_choice("encoder", name, RESNETS)
        output_stride = check_output_stride(32 if output_stride is None else output_stride)
        check_positive_int("in_channels", in_channels)
        depth = 5 if depth is None else depth
        if isinstance(depth, bool) or depth not in range(1, 6):
            raise InvalidValueError(
                f"A ResNet encoder's depth is 1..5 (deepest stride 2**depth); got {depth!r}."
            )
        self.name = name
        self.in_channels = in_channels
        self.output_stride = output_stride
        net, self.dilations = _torchvision_resnet(name, output_stride)
        self.conv1 = net.conv1
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        for i in range(1, depth):
            setattr(self, f"layer{i}", getattr(net, f"layer{i}"))
        e = 4 if name in ("resnet50", "resnet101") else 1
        self.out_channels = (64, 64 * e, 128 * e, 256 * e, 512 * e)[:depth]
        self.strides = (2, 4, 8, 16 if output_stride >= 16 else 8, output_stride)[:depth]
        if weights is not None:
            self.load_weights(weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        """The feature maps, shallow to deep (see the class docstring)."""
        return self.first_maps(x, len(self.strides))

    def first_maps(self, x: Tensor, count: int) -> list[Tensor]:
        """The ``count`` shallowest maps; the deeper stages do not run."""
        feats = [self.relu(self.bn1(self.conv1(x)))]  # (N, 64, H/2, W/2)
        if count > 1:
            feats.append(self.layer1(self.maxpool(feats[0])))  # (N, c1, H/4, W/4)
        for i in range(2, count):
            feats.append(getattr(self, f"layer{i}")(feats[-1]))  # (N, c_i, H/s_i, W/s_i)
        return feats

    def load_torchvision_weights(self, path: str | os.PathLike) -> None:
        """Load a local torchvision ResNet state dict (ImageNet weights); ``fc.*`` keys are ignored.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is not a state dict of a torchvision ResNet of this depth (the
                message names the missing / unexpected keys and, when it can, the depth it holds).
        """
        self.load_weights(path)

    def ignored_key(self, key: str) -> bool:
        """The classifier (``fc``) and the stages a shallower encoder does not build."""
        stage = key.split(".", 1)[0]
        return stage == "fc" or (stage.startswith("layer") and not hasattr(self, stage))

    def mismatch_hint(self, state: dict[str, Tensor]) -> str:
        """Names the torchvision ResNet the file holds, when it is another one."""
        guess = _guess_resnet(state)
        return (
            f" The file looks like a torchvision {guess} state dict." if guess and guess != self.name else ""
        )


def _torchvision_resnet(name: str, output_stride: int) -> tuple[ResNet, tuple[int, ...]]:
    """torchvision's ResNet with the last strides traded for dilation, and the stage rates."""
    dilate = {32: (False, False, False), 16: (False, False, True), 8: (False, True, True)}[output_stride]
    bottleneck = name in ("resnet50", "resnet101")
    if bottleneck:
        net = _TORCHVISION[name](weights=None, replace_stride_with_dilation=list(dilate))
    else:
        net = _TORCHVISION[name](weights=None)  # BasicBlock: dilation applied below
    rate, rates = 1, []
    for stage, d in zip((net.layer2, net.layer3, net.layer4), dilate):
        previous = rate
        if d:
            rate *= 2
            if not bottleneck:
                _dilate_stage(stage, previous, rate)
        rates.append(rate)
    return net, (1, *rates)


def _guess_resnet(sd: dict[str, Tensor]) -> str | None:
    """Which torchvision ResNet a state dict holds, from its block counts and block type."""
    counts = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in sd
    for name, blocks in _BLOCKS_PER_STAGE.items():
        if blocks == counts and bottleneck == (name in ("resnet50", "resnet101")):
            return name
    return None


for _name in RESNETS:
    register_encoder(_name, partial(ResNetEncoder, _name))
