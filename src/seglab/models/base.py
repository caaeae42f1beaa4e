"""``SegmentationModel``: the base class of every semantic model, and the ``SegOutput`` contract.

The contract:

* ``model(x)`` takes ``(N, C_in, H, W)`` floats and returns logits ``(N, num_classes, H, W)``
  (``unet_valid`` returns a smaller map and reports it through ``output_shape``). A volume model
  (``spatial_dims=3``, the same registered names) takes ``(N, C_in, D, H, W)`` and returns
  ``(N, num_classes, D, H, W)``; its ``size_divisor`` is one integer, or one per axis when the axes
  are pooled differently (``pool=(1, 2, 2)``).
* ``model(x, aux=True)`` returns :class:`SegOutput` ``(out, aux, cls)``: the main logits, a list
  of auxiliary logit maps (deep-supervision heads, side outputs, an auxiliary head; may have other
  spatial sizes than ``out``) and an optional image-level logit tensor ``cls`` of shape
  ``(N, num_classes)``. Plain models return ``aux=[]`` and ``cls=None``. The trainer always makes
  this call and hands the result to ``DeepSupervisionLoss``: it never needs a model's name.
* Inputs the model cannot take are rejected at the surface with a message naming the nearest
  valid size; ``pad=True`` (where a model offers it) pads to the next valid size and crops back.
* Every model declares its size rule: :attr:`SegmentationModel.size_divisor`,
  :meth:`SegmentationModel.output_shape` and :meth:`SegmentationModel.pad_to_divisor` (centred
  padding, :func:`seglab._shapes.pad_to_multiple`). Inference and export ask these; they never
  guess.

Subclasses implement :meth:`SegmentationModel.forward_seg`. Two bases compose a model from a
registered encoder: :class:`EncoderDecoderModel` (a decoder over the encoder's maps: the U-Net
family, FPN) and :class:`EncoderHeadModel` (encoder, head, resize, auxiliary head: DeepLab v3/v3+,
PSPNet, FCN).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
from torch import Tensor, nn

from seglab._options import check_positive_int, check_positive_ints
from seglab._shapes import pad_to_multiple
from seglab.errors import InvalidTypeError, InvalidValueError
from seglab.layers.conv import ConvNormAct, check_spatial_dims, init_weights
from seglab.layers.encoder import Encoder
from seglab.layers.sampling import resize_to

__all__ = [
    "EncoderDecoderModel",
    "EncoderHeadModel",
    "FCNHead",
    "SegOutput",
    "SegmentationModel",
    "nearest_multiples",
]


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
    """Base class: input checks, the declared size rule, optional padding, the ``aux`` contract.

    Args:
        in_channels: channels of the input image.
        num_classes: channels of the output logits.
        size_divisor: H and W must be multiples of this (1: any size); or one value per spatial
            axis (a volume pooled differently along its depth).
        pad: pad inputs whose size is not a multiple of ``size_divisor`` (centred, see
            :meth:`pad_to_divisor`) and crop the outputs back, instead of rejecting them.
        spatial_dims: 2 (images ``(N, C, H, W)``) or 3 (volumes ``(N, C, D, H, W)``).

    Raises:
        ValueError: ``in_channels``, ``num_classes`` or ``size_divisor`` below 1.
        TypeError: any of them not an integer.

    Shape:
        - Input: ``(N, in_channels, H, W)`` float.
        - Output: ``(N, num_classes, H, W)`` logits, or :class:`SegOutput` with ``aux=True``.
    """

    #: ``(old key prefix, new key prefix)`` pairs for state dicts saved before a module was
    #: renamed; :meth:`load_state_dict` renames such keys, so old checkpoints load unchanged.
    renamed_keys: tuple[tuple[str, str], ...] = ()

    def __init__(
        self, in_channels: int, num_classes: int, *, size_divisor: int | tuple[int, ...] = 1, pad: bool = False,
        spatial_dims: int = 2,
    ) -> None:  # fmt: skip
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if isinstance(size_divisor, int):
            self.size_divisor: int | tuple[int, ...] = check_positive_int("size_divisor", size_divisor)
        else:
            divs = check_positive_ints("size_divisor", size_divisor, length=self.spatial_dims)
            self.size_divisor = divs[0] if len(set(divs)) == 1 else divs
        self.pad = bool(pad)
        if self.renamed_keys:
            self._register_load_state_dict_pre_hook(_rename_old_keys, with_module=True)

    # -- to implement -------------------------------------------------------------------------
    def forward_seg(self, x: Tensor, aux: bool) -> SegOutput:
        """Compute the outputs for a checked input.

        ``aux=False`` lets a model skip work only the auxiliary outputs need (the base class then
        returns ``out`` alone).
        """
        raise NotImplementedError

    # -- contract -----------------------------------------------------------------------------
    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Spatial size of the output for an input of ``(H, W)`` (``(D, H, W)`` for a volume model;
        the same size for most models).

        Example:
            >>> SegmentationModel(1, 1).output_shape((30, 45))
            (30, 45)
        """
        return tuple(int(s) for s in input_shape)

    def divisors(self) -> tuple[int, ...]:
        """:attr:`size_divisor` per spatial axis.

        Example:
            >>> SegmentationModel(1, 1, size_divisor=(1, 4, 4), spatial_dims=3).divisors()
            (1, 4, 4)
        """
        d = self.size_divisor
        return (d,) * self.spatial_dims if isinstance(d, int) else tuple(d)

    def pad_to_divisor(self, x: Tensor) -> tuple[Tensor, tuple[slice, ...]]:
        """Pad ``x`` (centred) to multiples of :attr:`size_divisor`; return it and the crop back.

        Args:
            x: ``(N, C, H, W)`` (``(N, C, D, H, W)`` for a volume model).

        Returns:
            ``(padded, crop)``: ``model(padded)[crop]`` has the input's size (for models whose
            output has their input's size).

        Example:
            >>> m = SegmentationModel(1, 1, size_divisor=16)
            >>> p, crop = m.pad_to_divisor(torch.zeros(1, 1, 30, 45))
            >>> tuple(p.shape[-2:]), tuple(p[crop].shape[-2:])
            ((32, 48), (30, 45))
        """
        return pad_to_multiple(x, self.size_divisor, spatial_dims=self.spatial_dims)

    def check_input(self, x: Tensor) -> None:
        """Raise ``TypeError``/``ValueError`` for inputs this model cannot take."""
        if not isinstance(x, Tensor):
            raise InvalidTypeError(f"{type(self).__name__} expects a torch.Tensor, got {type(x).__name__}.")
        if x.ndim != 2 + self.spatial_dims:
            layout = "(N, C, H, W)" if self.spatial_dims == 2 else "(N, C, D, H, W) (a volume model)"
            raise InvalidValueError(
                f"{type(self).__name__} expects a batch {layout}; got shape {tuple(x.shape)}. "
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
            self.check_input_size(*(int(s) for s in x.shape[2:]))

    def check_input_size(self, *size: int) -> None:
        """Raise ``ValueError`` naming the nearest valid sizes if ``(h, w)`` (``(d, h, w)``) is not accepted."""
        if len(size) != 2 or not isinstance(self.size_divisor, int):
            return self._check_axes_size(size)
        h, w = size
        d = self.size_divisor
        if d > 1 and (h % d or w % d):
            hl, hu = nearest_multiples(h, d)
            wl, wu = nearest_multiples(w, d)
            raise InvalidValueError(
                f"{type(self).__name__} needs H and W divisible by {d}; got {h}x{w}. Nearest valid sizes: "
                f"H in ({hl}, {hu}), W in ({wl}, {wu}) — crop or pad to e.g. {hu}x{wu}, or build the model "
                "with pad=True to pad and crop back automatically."
            )
        return None

    def _check_axes_size(self, size: tuple[int, ...]) -> None:
        """The size check of a volume model, or of a divisor per axis."""
        divs = self.divisors()
        if any(s % d for s, d in zip(size, divs)):
            near = [nearest_multiples(s, d) for s, d in zip(size, divs)]
            axes = ", ".join("DHW"[-len(size) :])
            raise InvalidValueError(
                f"{type(self).__name__} needs {axes} divisible by {divs}; got {'x'.join(map(str, size))}. "
                f"Nearest valid sizes: {', '.join(f'{lo} or {hi}' if lo != hi else str(lo) for lo, hi in near)} — crop or pad to e.g. "
                f"{'x'.join(str(hi) for _, hi in near)}, or build the model with pad=True."
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
        if not (self.pad and any(s % d for s, d in zip(x.shape[2:], self.divisors()))):
            return self.forward_seg(x, aux)  # (the sizes stay symbolic for a dynamic-shape export)
        size = tuple(int(s) for s in x.shape[2:])
        xp, crop = self.pad_to_divisor(x)
        res = self.forward_seg(xp, aux)
        return SegOutput(res.out[crop], [_crop_scaled(a, xp.shape[2:], size) for a in res.aux], res.cls)


def _crop_scaled(t: Tensor, padded: tuple[int, ...], size: tuple[int, ...]) -> Tensor:
    """Crop a map computed on a centred-padded input back to the unpadded region (any scale, any rank)."""
    index = []
    for n, p, s in zip(t.shape[-len(size) :], padded, size):
        scale = n / p
        start = round((p - s) // 2 * scale)  # pad_amounts' "before"
        index.append(slice(start, start + max(1, round(s * scale))))
    return t[(..., *index)]


def _rename_old_keys(module: SegmentationModel, state_dict: dict, prefix: str, *args: object) -> None:
    """Load-state-dict pre-hook: rename keys saved under a module's old names (in place)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        for old, new in module.renamed_keys:
            if rest.startswith(old) and prefix + new + rest[len(old) :] not in state_dict:
                state_dict[prefix + new + rest[len(old) :]] = state_dict.pop(key)
                break


class EncoderDecoderModel(SegmentationModel):
    """A decoder over the feature maps of a registered encoder: U-Net, U-Net++, U-Net 3+, FPN.

    The subclass builds its encoder (``create_encoder``, without weights), calls this
    ``__init__``, builds its decoder and calls :meth:`finish`, which initialises the encoder and
    the decoder in that order and then loads the encoder's local weights.

    Args:
        in_channels: input channels.
        num_classes: output channels.
        encoder: the encoder.
        size_divisor: the input size rule (default: the encoder's deepest stride).
        pad: pad inputs to the divisor (centred) and crop back.

    Attributes:
        depth: the encoder's number of maps minus one.
    """

    renamed_keys = (
        ("stem.", "encoder.stem."),
        ("downs.", "encoder.downs."),
        ("encoders.", "encoder.encoders."),
    )

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        *,
        encoder: Encoder,
        size_divisor: int | None = None,
        pad: bool,
    ) -> None:
        per_axis = encoder.size_divisor if isinstance(encoder.size_divisor, tuple) else encoder.strides[-1]
        divisor = per_axis if size_divisor is None else size_divisor
        super().__init__(
            in_channels, num_classes, size_divisor=divisor, pad=pad, spatial_dims=encoder.spatial_dims
        )
        self.encoder = encoder
        self.depth = len(encoder.strides) - 1

    def finish(self, weights: str | os.PathLike | None, *decoder: nn.Module) -> None:
        """Initialise the encoder (when built without) and the ``decoder`` modules (He, in that
        order), then load the encoder's local ``weights`` (``None``: none)."""
        self.encoder.initialise()
        init_weights(*decoder)
        if weights is not None:
            self.encoder.load_weights(weights)

    def to_input_size(self, logits: Tensor, size: torch.Size) -> Tensor:
        """Logits at the finest map's stride, resized (bilinear, trilinear for volumes) to the input when
        that is coarser."""
        return resize_to(logits, size) if self.encoder.strides[0] > 1 else logits


class FCNHead(nn.Sequential):
    """Auxiliary segmentation head (torchvision's ``FCNHead``): 3x3 conv to ``in_ch // 4``, norm, act,
    dropout, 1x1 classifier.

    Shape:
        ``(N, in_ch, h, w) -> (N, num_classes, h, w)``.

    Example:
        >>> FCNHead(64, 3)(torch.randn(2, 64, 8, 8)).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(
        self, in_ch: int, num_classes: int, *, norm: str = "batch", act: str = "relu", dropout: float = 0.1
    ):
        mid = in_ch // 4
        super().__init__(
            ConvNormAct(in_ch, mid, 3, norm=norm, act=act),
            nn.Dropout(dropout),
            nn.Conv2d(mid, num_classes, 1),
        )


class EncoderHeadModel(SegmentationModel):
    """Encoder, head, resize to the input (+ an auxiliary head): DeepLab v3/v3+, PSPNet, FCN.

    The forward of torchvision's ``_SimpleSegmentationModel``, owned once: :meth:`features`
    (default ``self.encoder(x)``) gives the feature maps, :meth:`decode` turns them into logits at
    some stride, the logits are resized to the input (bilinear), and with ``aux=True`` the
    auxiliary head (``self.aux_head``, built by the subclass or ``None``) reads the second-deepest
    map and is resized the same way.

    Args:
        in_channels: input channels.
        num_classes: output classes.
        encoder: the encoder module (its ``size_divisor`` is the model's), or ``None`` for a
            subclass that overrides :meth:`features`.

    Attributes:
        align_corners: of the bilinear resize (PSPNet's reference code uses ``True``).
        resize_logits: resize the decoded logits (``False`` for a :meth:`decode` that already
            returns the input's size, as FCN's crops do).

    Shape:
        ``(N, in_channels, H, W) -> (N, num_classes, H, W)``.
    """

    align_corners: bool = False
    resize_logits: bool = True

    def __init__(self, in_channels: int, num_classes: int, *, encoder: Encoder | None = None) -> None:
        super().__init__(
            in_channels, num_classes, size_divisor=1 if encoder is None else encoder.size_divisor
        )
        if encoder is not None:
            encoder.initialise()
            self.encoder = encoder
        self.aux_head: nn.Module | None = None

    def finish(
        self,
        weights: str | os.PathLike | None,
        *,
        aux: bool,
        norm: str,
        channels_last: bool,
        aux_dropout: float = 0.1,
    ) -> None:
        """The auxiliary head (``aux``: torchvision's ``FCNHead``, 3x3 conv to ``C / 4``, norm,
        ReLU, dropout, 1x1 classifier, on the encoder's second-deepest map), the encoder's local
        ``weights``, and the ``channels_last`` layout."""
        if aux:
            mid = self.encoder.out_channels[-2]
            self.aux_head = FCNHead(mid, self.num_classes, norm=norm, dropout=aux_dropout)
        if weights is not None:
            self.encoder.load_weights(weights)
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def features(self, x: Tensor) -> list[Tensor]:
        """The feature maps, shallow to deep."""
        return self.encoder(x)

    def decode(self, feats: list[Tensor], size: torch.Size) -> Tensor:
        """Logits ``(N, K, h, w)`` at the head's resolution (``size``: the input's H, W)."""
        raise NotImplementedError

    def resize(self, t: Tensor, size: torch.Size) -> Tensor:
        """Bilinear resize of logits to ``size`` (low-resolution logits made contiguous first: the
        full-size output then needs no copy)."""
        return resize_to(t.contiguous(), size, align_corners=self.align_corners)

    def forward_seg(self, x: Tensor, aux: bool) -> SegOutput:
        size = x.shape[-2:]
        feats = self.features(x)  # maps shallow to deep
        out = self.decode(feats, size)  # (N, K, h, w)
        if self.resize_logits:
            out = self.resize(out, size)  # (N, K, H, W)
        extra = []
        if aux and self.aux_head is not None:
            extra.append(self.resize(self.aux_head(feats[-2]), size))  # (N, K, H, W)
        return SegOutput(out, extra, None)
