"""U-Net 3+ (Huang, Lin, Tong, Hu, Zhang, Iwamoto, Han, Chen & Wu, "UNet 3+: A Full-Scale Connected
UNet for Medical Image Segmentation", ICASSP 2020).

U-Net joins each decoder stage to one encoder stage, U-Net++ to the nested nodes of one level; in
both, a decoder stage never sees the finer or coarser scales directly. U-Net 3+ connects every
decoder stage to **every scale** (full-scale skip connections). The decoder stage at level ``i``
(``H / 2^i``) fuses

* the encoder maps of the same and all *finer* levels ``0..i``, max-pooled down to its size
  (fine detail: edges and boundaries), and
* the decoder maps of all *coarser* levels ``i+1..depth-1`` and the bottleneck (level ``depth``),
  bilinearly up-sampled to its size (coarse semantics: where the organ is),

each through its own 3x3 conv-BN-ReLU to ``cat_channels`` (64) maps; the ``depth + 1`` groups are
concatenated (``5 * 64 = 320`` channels at depth 4) and fused by one more 3x3 conv-BN-ReLU. All
decoder stages therefore have the same width, and the whole decoder is smaller than U-Net's.

**Full-scale deep supervision**: a plain 3x3 conv head on every decoder stage and on the
bottleneck gives a side output, bilinearly up-sampled to the input size.

**Classification-guided module (CGM)**: dropout, a 1x1 conv and a global max-pool on the bottleneck
give, per class, an image-level logit that the class is present. Trained with BCE on "is the mask
non-empty" (through ``DeepSupervisionLoss(cls_loss="bce")``), it lets inference zero the masks of
images it classifies as empty, which removes false positives on organ-free slices. The gate is
applied only in evaluation mode, after the graph the losses see; training never takes an argmax or
a threshold, so the CGM's logits get a proper gradient.

The paper's hybrid loss (focal + MS-SSIM + IoU) is the registered default loss spec.

**Encoders.** The full-scale skips read the maps of any registered encoder
(``encoder="resnet34"``): each decoder stage max-pools the finer maps and resizes the coarser ones.

**Volumes.** ``spatial_dims=3`` (and ``pool`` for a per-axis down-sampling) build the same model in
3-D on the name ``unet3p``, with the plain U-Net encoder, as for ``unet``: the full-scale skips
max-pool by each level's factors and resize trilinearly, the CGM max-pools the whole volume.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab._options import check_choice, check_number, check_positive_int
from seglab.layers import ConvNormAct, nd, resize_to
from seglab.models.base import EncoderDecoderModel, SegOutput
from seglab.models.encoders import unet_family_encoder
from seglab.models.registry import register_model

__all__ = ["EMPTY_LOGIT", "UNet3Plus"]

#: Logit written into the masks the classification-guided module judges empty
#: (``sigmoid(-1e4) == 0`` in every float dtype; finite, so later arithmetic stays finite).
EMPTY_LOGIT = -1e4

_UP_MODES = ("bilinear", "nearest")


# -- private blocks ------------------------------------------------------------------------------
def _resize(x: Tensor, size: Sequence[int], mode: str) -> Tensor:
    if mode == "bilinear":  # trilinear for volumes
        return resize_to(x, size)
    return F.interpolate(x, size=tuple(size), mode="nearest")


def _max_pool(x: Tensor, factor: tuple[int, ...]) -> Tensor:
    """Max-pool by ``factor`` per axis (kernel = stride = factor), in 2-D or 3-D."""
    pool = F.max_pool2d if x.ndim == 4 else F.max_pool3d
    return pool(x, 2 if len(set(factor)) == 1 else factor)


class _FullScaleStage(nn.Module):
    """One U-Net 3+ decoder stage: every scale to ``cat_channels`` maps, concatenated, fused.

    Args:
        finer_channels: widths of the encoder maps of levels ``0..level`` (already max-pooled to
            this stage's size when called).
        coarser_channels: widths of the maps of levels ``level+1..depth`` (decoder stages and the
            bottleneck), up-sampled here.
        cat_channels: width of every branch.
        norm: norm name.
        act: activation name.
        up: ``"bilinear"`` or ``"nearest"``.
        spatial_dims: 2 (images) or 3 (volumes).

    Shape:
        ``forward(finer, coarser)``: ``finer[k]`` is ``(N, finer_channels[k], h, w)``, ``coarser[k]``
        is ``(N, coarser_channels[k], h / 2^(k+1), w / 2^(k+1))``; output
        ``(N, cat_channels * (len(finer) + len(coarser)), h, w)``.
    """

    def __init__(
        self,
        finer_channels: Sequence[int],
        coarser_channels: Sequence[int],
        cat_channels: int,
        *,
        norm: str,
        act: str,
        up: str,
        spatial_dims: int = 2,
    ) -> None:
        super().__init__()
        self.up = up
        opts = {"norm": norm, "act": act, "spatial_dims": spatial_dims}
        self.finer = nn.ModuleList(ConvNormAct(c, cat_channels, 3, **opts) for c in finer_channels)
        self.coarser = nn.ModuleList(ConvNormAct(c, cat_channels, 3, **opts) for c in coarser_channels)
        width = cat_channels * (len(finer_channels) + len(coarser_channels))
        self.fuse = ConvNormAct(width, width, 3, **opts)
        self.out_channels = width

    def forward(self, finer: Sequence[Tensor], coarser: Sequence[Tensor]) -> Tensor:
        size = finer[-1].shape[2:]
        parts = [conv(f) for conv, f in zip(self.finer, finer)]  # each (N, cat, h, w)
        parts += [conv(_resize(c, size, self.up)) for conv, c in zip(self.coarser, coarser)]  # (N, cat, h, w)
        return self.fuse(torch.cat(parts, dim=1))  # (N, cat * (depth + 1), h, w)


# -- the model -----------------------------------------------------------------------------------
@register_model(
    "unet3p",
    paper="Huang et al., UNet 3+: A Full-Scale Connected UNet for Medical Image Segmentation, ICASSP 2020",
    input_rule="H, W (and D for spatial_dims=3) divisible by 2**depth (16 by default), or pad=True",
    example_size=(32, 32),
    default_loss="focal+ms_ssim+iou",
    test_options={"channels": (8, 16, 32, 64, 128), "cat_channels": 8, "cgm": True},
    spatial_dims=(2, 3),
)
class UNet3Plus(EncoderDecoderModel):
    """U-Net 3+: full-scale skips, full-scale deep supervision, classification-guided module.

    Args:
        in_channels: input channels.
        num_classes: output channels.
        encoder: ``"unet"`` (the paper's encoder, the options below) or any registered encoder
            (``"resnet34"``, ``"timm:<model>"``, ...); the full-scale skips read its maps.
        weights: a local state dict of the encoder; nothing is downloaded.
        depth: number of down-samplings (1..5); ``None``: 4 for ``encoder="unet"``, all of
            another encoder's stages.
        base_channels: encoder width of the first level, doubled per level (64: the paper's
            ``(64, 128, 256, 512, 1024)``; ``encoder="unet"``).
        channels: explicit encoder widths (``depth + 1`` values) instead of ``base_channels``
            (``encoder="unet"``).
        cat_channels: width of every full-scale branch (64); decoder stages have
            ``cat_channels * (depth + 1)`` channels.
        down: ``"maxpool"`` (the paper), ``"strided"`` or ``"pixel_unshuffle"`` for the encoder
            (``encoder="unet"``); the full-scale skips always max-pool, as in the paper.
        up: ``"bilinear"`` (the paper) or ``"nearest"`` interpolation of the coarser maps and the
            side outputs.
        norm: ``"batch"``, ``"instance"``, ``"group"`` or ``"none"``.
        act: activation name.
        deep_supervision: side-output heads on every decoder stage and the bottleneck.
        cgm: add the classification-guided module (image-level class-presence logits).
        cgm_gate: in evaluation mode, replace the logits of classes the CGM judges absent
            (``sigmoid(cls) < cgm_threshold``) by :data:`EMPTY_LOGIT` in ``out`` and ``aux``
            (settable attribute; ignored without ``cgm``).
        cgm_threshold: probability below which a class counts as absent.
        pad: pad to a multiple of ``2**depth`` (centred) and crop back instead of rejecting
            other sizes.
        spatial_dims: 2 (images) or 3 (volumes ``(N, C, D, H, W)``, the plain U-Net encoder only).
            The registered default loss includes MS-SSIM, which is 2-D only: train a volume model
            with another loss (e.g. ``"focal+iou"``).
        pool: the down-sampling factor per axis, for every level or per level (``encoder="unet"``;
            see :class:`~seglab.models.unet.UNet`).

    Outputs (``model(x, aux=True)``):
        ``out``: the head on the finest decoder stage (level 0). ``aux``: with deep supervision,
        the side outputs of levels ``1, ..., depth - 1`` (decoder stages, finest first) and then
        of the bottleneck (level ``depth``), each up-sampled to the input size; ``[]`` without.
        Nearest to ``out`` first, the order ``DeepSupervisionLoss(weights="halving")`` expects.
        ``cls``: with ``cgm``, image-level presence **logits** ``(N, num_classes)`` (apply a
        sigmoid for probabilities; train with BCE), else ``None``. ``model(x)`` skips the side
        outputs, and skips the CGM unless the evaluation-mode gate needs it.

    Raises:
        ValueError: invalid widths, option names or thresholds.

    Defaults with 3 input channels and 1 class: 26,983,109 parameters; 26,965,249 without the
    deep-supervision heads (the paper's 26.97 M; the reference code's conv biases before
    BatchNorm, which BatchNorm cancels, add 6,528 more). ``cgm=True`` adds ``1024 * K + K``.

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes, H, W)`` with ``H, W`` divisible by
        ``2**depth`` (or any size with ``pad=True``).

    Example:
        >>> m = UNet3Plus(1, 1, channels=(8, 16, 32, 64, 128), cat_channels=8, cgm=True)
        >>> res = m(torch.randn(2, 1, 64, 64), aux=True)
        >>> res.out.shape, len(res.aux), res.cls.shape
        (torch.Size([2, 1, 64, 64]), 4, torch.Size([2, 1]))
    """

    def __init__(
        self, in_channels: int = 3, num_classes: int = 1, *,
        encoder: str = "unet", weights: str | os.PathLike | None = None, depth: int | None = None,
        base_channels: int = 64, channels: Sequence[int] | None = None, down: str = "maxpool",  # encoder="unet"
        cat_channels: int = 64, up: str = "bilinear", norm: str = "batch", act: str = "relu",  # the decoder
        deep_supervision: bool = True, cgm: bool = False, cgm_gate: bool = True, cgm_threshold: float = 0.5,
        pad: bool = False, spatial_dims: int = 2, pool: Sequence[int] | Sequence[Sequence[int]] | None = None,
    ) -> None:  # fmt: skip
        check_positive_int("cat_channels", cat_channels)
        check_number(
            "cgm_threshold (a probability)", cgm_threshold, low=0, high=1, low_open=True, high_open=True
        )
        check_choice("up", up, _UP_MODES)
        plain = {
            "base_channels": base_channels,
            "channels": channels,
            "down": down,
            "spatial_dims": spatial_dims,
            "pool": pool,
        }  # the U-Net encoder's own options
        enc = unet_family_encoder(encoder, type(self), in_channels, depth, {"norm": norm, "act": act}, plain)
        super().__init__(in_channels, num_classes, encoder=enc, pad=pad)
        d = self.depth
        self.channels = ch = tuple(enc.out_channels)
        self.up = up
        self.deep_supervision = bool(deep_supervision)
        self.cgm_gate = bool(cgm_gate)
        self.cgm_threshold = float(cgm_threshold)
        width = cat_channels * (d + 1)
        rank = self.spatial_dims
        self.scales = enc.scale_factors()
        # decoders[i] is the stage at level i (0: the finest); levels i+1..d-1 are decoder stages of
        # the fused width, level d is the deepest encoder map
        self.decoders = nn.ModuleList(
            _FullScaleStage(
                ch[: i + 1],
                [width] * (d - 1 - i) + [ch[d]],
                cat_channels,
                norm=norm,
                act=act,
                up=up,
                spatial_dims=rank,
            )
            for i in range(d)
        )
        head_in = [width] * d + [ch[d]] if self.deep_supervision else [width]
        self.heads = nn.ModuleList(nd("conv", rank)(c, num_classes, 3, padding=1) for c in head_in)
        self.cgm = _cgm(ch[d], num_classes, rank) if cgm else None
        self.finish(weights, self.decoders, self.heads, *([self.cgm] if cgm else []))

    def _gate(self, t: Tensor, present: Tensor) -> Tensor:
        mask = present.reshape(*present.shape, *(1,) * self.spatial_dims)  # (N, K, 1, 1[, 1])
        return t.masked_fill(~mask, EMPTY_LOGIT)  # (N, K, *S)

    def _decode(self, enc: list[Tensor]) -> list[Tensor]:
        """The decoder stages, finest first, then the deepest encoder map (level ``depth``)."""
        d = self.depth
        # pooled[k][m]: encoder level k max-pooled m times, for the finer-scale skips
        pooled = [[f] for f in enc]
        for k in range(d):
            while len(pooled[k]) < d - k:
                factor = self.scales[k + len(pooled[k]) - 1]  # from that level to the next
                pooled[k].append(_max_pool(pooled[k][-1], factor))  # (N, c_k, *s / factor)
        dec: list[Tensor] = [enc[d]]  # deepest first: bottleneck, stage d-1, ..., stage 0
        for i in range(d - 1, -1, -1):
            finer = [pooled[k][i - k] for k in range(i + 1)]  # (N, c_k, H / 2^i, W / 2^i)
            dec.insert(0, self.decoders[i](finer, dec))  # (N, cat * (d + 1), H / 2^i, W / 2^i)
        return dec

    def forward_seg(self, x: Tensor, aux: bool) -> SegOutput:
        size = x.shape[2:]
        enc = self.encoder(x)  # depth + 1 maps, shallow to deep
        dec = self._decode(enc)
        out = self.heads[0](dec[0])  # (N, K, H / s_0, W / s_0)
        if self.encoder.strides[0] > 1:  # an encoder whose finest map is coarser than the input
            out = _resize(out, size, self.up)
        side: list[Tensor] = []
        if aux and self.deep_supervision:
            heads = zip(self.heads[1:], dec[1:])
            side = [_resize(head(t), size, self.up) for head, t in heads]  # depth x (N, K, H, W)
        gate = not self.training and self.cgm_gate
        cls = None
        if self.cgm is not None and (aux or gate):
            cls = self.cgm(enc[-1])  # (N, K) logits
            if gate:
                present = torch.sigmoid(cls) >= self.cgm_threshold  # (N, K)
                out = self._gate(out, present)
                side = [self._gate(s, present) for s in side]
        return SegOutput(out, side, cls)


def _cgm(channels: int, num_classes: int, spatial_dims: int = 2) -> nn.Sequential:
    """The classification-guided module: dropout, 1x1 conv, global max-pool -> ``(N, K)`` logits."""
    conv, pool = nd("conv", spatial_dims), nd("adaptive_max_pool", spatial_dims)
    return nn.Sequential(nn.Dropout(0.5), conv(channels, num_classes, 1), pool(1), nn.Flatten(1))
