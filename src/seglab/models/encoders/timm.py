"""timm models as encoders (``encoder="timm:<model>"``), when the optional ``timm`` is installed.

``timm.create_model(model, features_only=True, pretrained=False)`` gives the feature pyramid; its
``feature_info`` gives the channels and strides. Nothing is downloaded: ``weights=`` takes a local
state dict of the same timm model (its classifier keys are ignored). Install with
``pip install 'seglab[timm]'``.
"""

from __future__ import annotations

import os

from torch import Tensor

from seglab._options import check_positive_int, did_you_mean
from seglab.errors import InvalidValueError, missing_extra
from seglab.layers.encoder import Encoder
from seglab.models.encoders._registry import register_encoder

__all__ = ["TimmEncoder"]


class TimmEncoder(Encoder):
    """A timm model's ``features_only`` pyramid.

    Args:
        model: a timm model name (``timm.list_models()``), e.g. ``"resnet18"`` or
            ``"mobilenetv3_small_050"``.
        in_channels: input channels (timm builds the first convolution for them).
        depth: keep the maps down to stride ``2**depth``; ``None``: all of them.
        output_stride: 8, 16 or 32 where the timm model supports dilation; ``None``: its own.
        weights: a local state dict of the same timm model, or ``None``.

    Raises:
        MissingExtraError: timm is not installed.
        ValueError: an unknown timm model, or options the model does not support.

    Example:
        >>> enc = TimmEncoder("resnet18", in_channels=1, depth=3)  # doctest: +SKIP
        >>> enc.strides  # doctest: +SKIP
        (2, 4, 8)
    """

    weights_prefix = "model."

    def __init__(
        self, model: str, *, in_channels: int = 3, depth: int | None = None,
        output_stride: int | None = None, weights: str | os.PathLike | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        try:
            import timm
        except ImportError as err:
            raise missing_extra("timm", "timm", f"The encoder 'timm:{model}'") from err
        check_positive_int("in_channels", in_channels)
        names = timm.list_models()
        if model not in names:
            raise InvalidValueError(
                f"Unknown timm model {model!r}.{did_you_mean(model, names)} See timm.list_models()."
            )
        kwargs = {"output_stride": output_stride} if output_stride is not None else {}
        try:
            net = timm.create_model(
                model, features_only=True, pretrained=False, in_chans=in_channels, **kwargs
            )
            if depth is not None:
                keep = [i for i, r in enumerate(net.feature_info.reduction()) if r <= 2**depth]
                net = timm.create_model(
                    model,
                    features_only=True,
                    pretrained=False,
                    in_chans=in_channels,
                    out_indices=keep,
                    **kwargs,
                )
        except (RuntimeError, TypeError, AssertionError, ValueError) as err:
            raise InvalidValueError(
                f"timm cannot build {model!r} as an encoder with these options: {err}"
            ) from err
        self.model = net
        self.out_channels = tuple(net.feature_info.channels())
        self.strides = tuple(net.feature_info.reduction())
        self.first_conv = f"model.{net.pretrained_cfg.get('first_conv', 'conv1')}.weight"
        self._own_keys = set(self.state_dict())
        if weights is not None:
            self.load_weights(weights)

    def ignored_key(self, key: str) -> bool:
        """Keys of the full timm model that the feature pyramid does not use (its classifier)."""
        return key not in self._own_keys

    def forward(self, x: Tensor) -> list[Tensor]:
        """The timm model's feature maps, shallow to deep."""
        return list(self.model(x))


register_encoder("timm:", TimmEncoder, prefix=True)
