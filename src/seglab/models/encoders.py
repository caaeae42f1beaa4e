"""Multi-scale feature extractors (encoders) shared by the architectures.

ResNet-18/34/50/101 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) are
built from torchvision's layer definitions and return one feature map per scale, shallow to deep:

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

import torch
from torch import Tensor, nn
from torchvision.models import resnet18, resnet34, resnet50, resnet101
from torchvision.models.resnet import ResNet

from seglab._options import check_choice
from seglab.errors import InvalidValueError, MissingFileError

__all__ = ["ENCODERS", "OUTPUT_STRIDES", "ResNetEncoder", "adapt_first_conv_weight", "create_encoder"]

ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101")
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


def key_mismatch_details(missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    """One line naming the first few missing, unexpected and wrongly shaped state-dict keys."""
    return "; ".join(
        f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
        if keys
    )


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


def adapt_first_conv_weight(weight: Tensor, in_channels: int) -> Tensor:
    """Map pretrained RGB filters ``(C_out, 3, k, k)`` to ``in_channels`` input channels.

    One channel: the RGB filters are summed (a grey image repeated three times gives the same
    response). Otherwise the RGB filters are cycled over the new channels and rescaled by
    ``3 / in_channels`` to keep the activation scale.

    Args:
        weight: the pretrained first-convolution weight.
        in_channels: the new number of input channels.

    Returns:
        A tensor ``(C_out, in_channels, k, k)``.
    """
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    idx = torch.arange(in_channels) % weight.shape[1]
    return weight[:, idx] * (weight.shape[1] / in_channels)


class ResNetEncoder(nn.Module):
    """A torchvision ResNet without its classifier, returning five feature maps.

    Args:
        name: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        in_channels: input image channels (the first convolution is rebuilt when not 3).
        output_stride: 32 (plain ResNet), 16 (layer4 atrous, rate 2) or 8 (layer3 rate 2,
            layer4 rate 4).
        weights: path to a local torchvision ResNet state dict of the same depth, or ``None``
            (torchvision's random initialisation).

    Attributes:
        out_channels: channels of the five outputs, e.g. ``(64, 256, 512, 1024, 2048)``.
        strides: down-sampling factor of the five outputs, e.g. ``(2, 4, 8, 16, 16)`` at OS 16.
        dilations: atrous rate of the last block of ``layer1`` .. ``layer4``.

    Raises:
        ValueError: unknown name (did-you-mean), invalid ``output_stride`` or ``in_channels``, or
            a weights file that is not a matching torchvision ResNet state dict.
        FileNotFoundError: ``weights`` does not exist.

    Shape:
        ``(N, in_channels, H, W) ->`` a list of five maps ``(N, out_channels[i], ceil(H / s_i),
        ceil(W / s_i))`` (``s_i = strides[i]``, sizes rounded up at each stride-2 step).

    Example:
        >>> enc = ResNetEncoder("resnet18", output_stride=8)
        >>> [tuple(f.shape[1:]) for f in enc(torch.randn(1, 3, 64, 64))]
        [(64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 8, 8), (512, 8, 8)]
    """

    def __init__(
        self,
        name: str = "resnet50",
        *,
        in_channels: int = 3,
        output_stride: int = 32,
        weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        check_choice("encoder", name, ENCODERS)
        output_stride = check_output_stride(output_stride)
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise InvalidValueError(f"in_channels must be a positive integer; got {in_channels!r}.")
        self.name = name
        self.in_channels = in_channels
        self.output_stride = output_stride
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
        self.dilations = (1, *rates)

        self.conv1 = net.conv1
        if in_channels != 3:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        e = 4 if bottleneck else 1
        self.out_channels = (64, 64 * e, 128 * e, 256 * e, 512 * e)
        s3 = 16 if output_stride >= 16 else 8
        self.strides = (2, 4, 8, s3, output_stride)
        if weights is not None:
            self.load_torchvision_weights(weights)

    def forward(self, x: Tensor) -> list[Tensor]:
        """The five feature maps, shallow to deep (see the class docstring)."""
        f0 = self.relu(self.bn1(self.conv1(x)))  # (N, 64, H/2, W/2)
        f1 = self.layer1(self.maxpool(f0))  # (N, c1, H/4, W/4)
        f2 = self.layer2(f1)  # (N, c2, H/8, W/8)
        f3 = self.layer3(f2)  # (N, c3, H/16, W/16), H/8 at OS 8
        f4 = self.layer4(f3)  # (N, c4, H/OS, W/OS)
        return [f0, f1, f2, f3, f4]

    def load_torchvision_weights(self, path: str | os.PathLike) -> None:
        """Load a local torchvision ResNet state dict (ImageNet weights); ``fc.*`` keys are ignored.

        Raises:
            FileNotFoundError: no file at ``path``.
            ValueError: the file is not a state dict of a torchvision ResNet of this depth (the
                message names the missing / unexpected keys and, when it can, the depth it holds).
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise MissingFileError(
                f"ResNet weights file not found: {path!r}. Pass the path of a local torchvision {self.name} "
                "state dict (seglab never downloads weights)."
            )
        sd = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
            raise InvalidValueError(f"{path!r} does not hold a state dict (a mapping of names to tensors).")
        sd = {k: v for k, v in sd.items() if not k.startswith("fc.")}
        own = self.state_dict()
        optional = {k for k in own if k.endswith("num_batches_tracked")}
        missing = sorted(k for k in own if k not in sd and k not in optional)
        unexpected = sorted(k for k in sd if k not in own)
        wrong = sorted(
            k
            for k in own
            if k in sd and k != "conv1.weight" and sd[k].shape != own[k].shape and k not in optional
        )
        if missing or unexpected or wrong:
            guess = _guess_resnet(sd)
            hint = (
                f" The file looks like a torchvision {guess} state dict."
                if guess and guess != self.name
                else ""
            )
            details = key_mismatch_details(missing, unexpected, wrong)
            raise InvalidValueError(
                f"{path!r} is not a torchvision {self.name} state dict ({details}).{hint} Build the encoder "
                "with the matching name, or pass that ResNet's file."
            )
        w = sd["conv1.weight"]
        if w.ndim != 4 or w.shape[0] != 64 or w.shape[2:] != (7, 7):
            raise InvalidValueError(
                f"{path!r}: conv1.weight has shape {tuple(w.shape)}, expected (64, C, 7, 7)."
            )
        sd["conv1.weight"] = adapt_first_conv_weight(w, self.in_channels)
        self.load_state_dict(sd, strict=False)  # only num_batches_tracked may be absent


def _guess_resnet(sd: dict[str, Tensor]) -> str | None:
    """Which torchvision ResNet a state dict holds, from its block counts and block type."""
    counts = tuple(len({k.split(".")[1] for k in sd if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in sd
    for name, blocks in _BLOCKS_PER_STAGE.items():
        if blocks == counts and bottleneck == (name in ("resnet50", "resnet101")):
            return name
    return None


def create_encoder(
    name: str,
    *,
    in_channels: int = 3,
    output_stride: int = 32,
    weights: str | os.PathLike | None = None,
) -> ResNetEncoder:
    """Build an encoder by name (one of :data:`ENCODERS`).

    Args:
        name: ``"resnet18"``, ``"resnet34"``, ``"resnet50"`` or ``"resnet101"``.
        in_channels: input image channels.
        output_stride: 8, 16 or 32.
        weights: local torchvision state-dict path, or ``None``.

    Returns:
        A :class:`ResNetEncoder`.

    Raises:
        ValueError: unknown name (with did-you-mean) or invalid option.

    Example:
        >>> create_encoder("resnet34", output_stride=16).strides
        (2, 4, 8, 16, 16)
    """
    return ResNetEncoder(name, in_channels=in_channels, output_stride=output_stride, weights=weights)
