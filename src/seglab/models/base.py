"""``SegmentationModel``: the base class of every semantic model, and the ``SegOutput`` contract.

The contract (see ``docs/design`` and DESIGN.md):

* ``model(x)`` takes ``(N, C_in, H, W)`` floats and returns logits ``(N, num_classes, H, W)``
  (``unet_valid`` returns a smaller map and reports it through ``output_shape``).
* ``model(x, aux=True)`` returns :class:`SegOutput` ``(out, aux, cls)``: the main logits, a list
  of auxiliary logit maps (deep-supervision heads, side outputs, an auxiliary head; may have other
  spatial sizes than ``out``) and an optional image-level logit tensor ``cls`` of shape
  ``(N, num_classes)``. Plain models return ``aux=[]`` and ``cls=None``. The trainer always makes
  this call and hands the result to ``DeepSupervisionLoss``: it never needs a model's name.
* Inputs the model cannot take are rejected at the surface with a message naming the nearest
  valid size; ``pad=True`` (where a model offers it) pads to the next valid size and crops back.

Subclasses implement :meth:`SegmentationModel.forward_seg`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seglab.errors import InvalidTypeError, InvalidValueError

__all__ = ["SegOutput", "SegmentationModel", "nearest_multiples"]


class SegOutput(NamedTuple):
    """Everything a model produces in one call (``model(x, aux=True)``).

    Attributes:
        out: main logits, ``(N, K, H, W)``.
        aux: auxiliary logits, each ``(N, K, h, w)``; ``[]`` for models without any.
        cls: image-level logits ``(N, K)`` (U-Net 3+'s classification-guided module), or ``None``.
    """

    out: Tensor
    aux: list[Tensor]
    cls: Tensor | None = None


def nearest_multiples(size: int, divisor: int) -> tuple[int, int]:
    """The multiples of ``divisor`` just below and just above ``size`` (below is at least ``divisor``)."""
    lower = max(divisor, (size // divisor) * divisor)
    upper = -(-size // divisor) * divisor
    return lower, upper


class SegmentationModel(nn.Module):
    """Base class: input checks, optional padding, and the ``aux`` output contract.

    Args:
        in_channels: channels of the input image.
        num_classes: channels of the output logits.
        size_divisor: H and W must be multiples of this (1: any size).
        pad: pad inputs whose size is not a multiple of ``size_divisor`` (reflect padding at the
            bottom/right) and crop the outputs back, instead of rejecting them.

    Shape:
        - Input: ``(N, in_channels, H, W)`` float.
        - Output: ``(N, num_classes, H, W)`` logits, or :class:`SegOutput` with ``aux=True``.
    """

    def __init__(
        self, in_channels: int, num_classes: int, *, size_divisor: int = 1, pad: bool = False
    ) -> None:
        super().__init__()
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.size_divisor = int(size_divisor)
        self.pad = bool(pad)

    # -- to implement -------------------------------------------------------------------------
    def forward_seg(self, x: Tensor, aux: bool) -> SegOutput:
        """Compute the outputs for a checked input.

        ``aux=False`` lets a model skip work only the auxiliary outputs need (the base class then
        returns ``out`` alone).
        """
        raise NotImplementedError

    # -- contract -----------------------------------------------------------------------------
    def output_shape(self, input_shape: tuple[int, int]) -> tuple[int, int]:
        """Spatial size of the output for an input of ``(H, W)`` (same size for most models)."""
        h, w = input_shape
        return int(h), int(w)

    def check_input(self, x: Tensor) -> None:
        """Raise ``TypeError``/``ValueError`` for inputs this model cannot take."""
        if not isinstance(x, Tensor):
            raise InvalidTypeError(f"{type(self).__name__} expects a torch.Tensor, got {type(x).__name__}.")
        if x.ndim != 4:
            raise InvalidValueError(
                f"{type(self).__name__} expects a batch (N, C, H, W); got shape {tuple(x.shape)}. "
                "Add a batch dimension with x.unsqueeze(0)."
            )
        if not x.is_floating_point():
            raise InvalidTypeError(
                f"{type(self).__name__} expects a floating-point input, got {x.dtype}; convert with x.float() "
                "(and scale intensities, e.g. to [0, 1])."
            )
        if x.shape[1] != self.in_channels:
            raise InvalidValueError(
                f"{type(self).__name__} was built for {self.in_channels} input channel(s); got {x.shape[1]} "
                f"(input shape {tuple(x.shape)}). Build it with in_channels={x.shape[1]}."
            )
        if not self.pad:
            self.check_input_size(int(x.shape[-2]), int(x.shape[-1]))

    def check_input_size(self, h: int, w: int) -> None:
        """Raise ``ValueError`` naming the nearest valid sizes if ``(h, w)`` is not accepted."""
        d = self.size_divisor
        if d > 1 and (h % d or w % d):
            hl, hu = nearest_multiples(h, d)
            wl, wu = nearest_multiples(w, d)
            raise InvalidValueError(
                f"{type(self).__name__} needs H and W divisible by {d}; got {h}x{w}. Nearest valid sizes: "
                f"H in ({hl}, {hu}), W in ({wl}, {wu}) — crop or pad to e.g. {hu}x{wu}, or build the model "
                "with pad=True to pad and crop back automatically."
            )

    def uses_channels_last(self) -> bool:
        """Whether the model's convolutions hold ``channels_last`` weights.

        :meth:`forward` then converts inputs to ``channels_last`` (a layout mismatch would make
        every convolution convert on its own) and returns contiguous outputs.
        ``model.to(memory_format=torch.channels_last)`` switches it on, ``torch.contiguous_format``
        off; the first convolution with a spatial kernel is the witness.
        """
        name = self.__dict__.get("_layout_probe")
        if name is None:  # the first 2-D convolution with a spatial kernel, found once
            name = next(
                (
                    f"{n}.weight"
                    for n, m in self.named_modules()
                    if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)
                ),
                "",
            )
            self.__dict__["_layout_probe"] = name
        if not name:
            return False
        try:
            w = self.get_parameter(name)
        except AttributeError:  # the module tree changed since: look again
            del self.__dict__["_layout_probe"]
            return self.uses_channels_last()
        return w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()

    def forward(self, x: Tensor, aux: bool = False) -> Tensor | SegOutput:
        """Logits ``(N, num_classes, H, W)``; with ``aux=True`` a :class:`SegOutput`."""
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            self.check_input(x)
        if self.uses_channels_last():  # the input in the weights' layout; outputs come back contiguous
            res = self._forward_padded(x.contiguous(memory_format=torch.channels_last), aux)
            res = SegOutput(res.out.contiguous(), [a.contiguous() for a in res.aux], res.cls)
        else:
            res = self._forward_padded(x, aux)
        return res if aux else res.out

    def _forward_padded(self, x: Tensor, aux: bool) -> SegOutput:
        h, w = x.shape[-2:]
        d = self.size_divisor
        padded = self.pad and d > 1 and (h % d != 0 or w % d != 0)
        if padded:
            ph, pw = (-h) % d, (-w) % d
            mode = "reflect" if (ph < h and pw < w) else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        res = self.forward_seg(x, aux)
        if padded:
            res = SegOutput(
                res.out[..., :h, :w],
                [_crop_like(a, x.shape[-2:], (h, w)) for a in res.aux],
                res.cls,
            )
        return res


def _crop_like(t: Tensor, padded_hw: tuple[int, int], hw: tuple[int, int]) -> Tensor:
    """Crop an auxiliary map computed on a padded input back to the unpadded region (any scale)."""
    ph, pw = padded_hw
    sh, sw = t.shape[-2] / ph, t.shape[-1] / pw
    return t[..., : max(1, round(hw[0] * sh)), : max(1, round(hw[1] * sw))]
