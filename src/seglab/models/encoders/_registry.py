"""The encoder registry: ``register_encoder`` fills it, ``create_encoder`` builds from it."""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from seglab._options import check_positive_ints, did_you_mean
from seglab.errors import InvalidValueError
from seglab.layers.encoder import Encoder

__all__ = ["create_encoder", "decoder_widths", "list_encoders", "register_encoder", "unet_family_encoder"]

_ENCODERS: dict[str, Callable[..., Encoder]] = {}
_FAMILIES: dict[str, Callable[..., Encoder]] = {}  # prefix ("timm:") -> factory(model_name, ...)


def register_encoder(
    name: str, factory: Callable[..., Encoder] | None = None, *, prefix: bool = False
) -> Any:
    """Register an encoder factory under ``name``; usable as a decorator or called with ``factory``.

    A factory takes ``in_channels``, ``depth``, ``output_stride`` and ``weights`` as keywords
    (plus its own options) and returns an :class:`~seglab.layers.encoder.Encoder`. With
    ``prefix=True`` the name is a family prefix (``"timm:"``): ``create_encoder("timm:resnet18")``
    calls ``factory("resnet18", ...)``.

    Raises:
        ValueError: the name is already registered.

    Example:
        >>> from functools import partial
        >>> from seglab.layers.encoder import UNetEncoder
        >>> register_encoder("unet_narrow", partial(UNetEncoder, base_channels=8))  # doctest: +SKIP
    """

    def add(fn: Callable[..., Encoder]) -> Callable[..., Encoder]:
        table = _FAMILIES if prefix else _ENCODERS
        if name in table:
            raise InvalidValueError(f"An encoder named {name!r} is already registered; choose another name.")
        table[name] = fn
        return fn

    return add if factory is None else add(factory)


def list_encoders() -> list[str]:
    """Registered encoder names, sorted; families appear as ``"timm:<model>"`` when installed.

    Example:
        >>> [n for n in list_encoders() if n.startswith("resnet")]
        ['resnet101', 'resnet18', 'resnet34', 'resnet50']
    """
    names = sorted(_ENCODERS)
    for prefix in sorted(_FAMILIES):
        if importlib.util.find_spec(prefix.rstrip(":")) is not None:
            names.append(f"{prefix}<model>")
    return names


def _factory(name: str) -> Callable[..., Encoder]:
    if not isinstance(name, str):
        raise InvalidValueError(
            f"encoder must be a name such as 'resnet34'; got {type(name).__name__} {name!r}."
        )
    if name in _ENCODERS:
        return _ENCODERS[name]
    for prefix, fn in _FAMILIES.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            model = name[len(prefix) :]
            return lambda **kw: fn(model, **kw)
    names = sorted(_ENCODERS) + [f"{p}<model>" for p in sorted(_FAMILIES)]
    raise InvalidValueError(
        f"Unknown encoder {name!r}.{did_you_mean(name, names)} Registered encoders: {', '.join(names)}."
    )


def create_encoder(
    name: str, *, in_channels: int = 3, depth: int | None = None, output_stride: int | None = None,
    weights: str | os.PathLike | None = None, **options: Any,
) -> Encoder:  # fmt: skip
    """Build a registered encoder.

    Args:
        name: ``"resnet18"`` .. ``"resnet101"``, ``"unet"``, ``"timm:<model>"`` (with timm
            installed), or any name registered with :func:`register_encoder`.
        in_channels: input image channels.
        depth: use the maps down to stride ``2**depth`` (``None``: all of the encoder's maps).
        output_stride: the deepest stride (8 or 16 trade the last strides for dilation where
            the encoder supports it); ``None``: the encoder's own.
        weights: a local state dict of the encoder (e.g. torchvision's ImageNet file), or
            ``None``. Nothing is downloaded.
        **options: the encoder's own options (the U-Net encoder's ``base_channels``, ...).

    Returns:
        An :class:`~seglab.layers.encoder.Encoder`.

    Raises:
        ValueError: unknown name (with did-you-mean), an option this encoder does not take, or an
            invalid value.

    Example:
        >>> create_encoder("resnet34", output_stride=16).strides
        (2, 4, 8, 16, 16)
    """
    factory = _factory(name)
    own = _own_options(name)
    unknown = [k for k in options if k not in own]
    if unknown:
        raise InvalidValueError(
            f"Encoder {name!r} takes no option {', '.join(map(repr, unknown))}"
            f"{' (it belongs to the plain U-Net encoder, encoder=' + repr('unet') + ')' if name != 'unet' else ''}. "
            f"Its own options: {', '.join(sorted(own)) or 'none'}."
        )
    enc = factory(
        in_channels=in_channels, depth=depth, output_stride=output_stride, weights=weights, **options
    )
    enc.name = name
    return enc


def _own_options(name: str) -> set[str]:
    fn = _ENCODERS.get(name)
    if fn is None:
        return set()
    common = {"in_channels", "depth", "output_stride", "weights"}
    params = inspect.signature(fn).parameters.values()
    return {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in common}


def unet_family_encoder(
    name: str,
    model: type,
    in_channels: int,
    depth: int | None,
    shared: Mapping[str, Any],
    plain: Mapping[str, Any],
) -> Encoder:
    """The encoder of a U-Net-family model, built without weights (the model loads them last).

    With the plain U-Net encoder (``name="unet"``) every option goes to it. With another encoder
    the ``shared`` options (norm, activation) stay with the decoder and a ``plain`` option changed
    from its default in the ``model`` class's signature is an error naming the option.

    Raises:
        InvalidValueError: ``spatial_dims`` other than 2 with another encoder than ``"unet"``.
    """
    defaults = inspect.signature(model).parameters
    rank = plain.get("spatial_dims", 2)
    if name != "unet" and rank != 2:
        raise InvalidValueError(
            f"spatial_dims={rank!r} (volumes) needs the plain U-Net encoder: pass encoder='unet' "
            f"(the {name!r} encoder is 2-D only)."
        )
    if name == "unet":
        return create_encoder("unet", in_channels=in_channels, depth=depth, **shared, **plain)
    changed = {k: v for k, v in plain.items() if k in defaults and v != defaults[k].default}
    return create_encoder(name, in_channels=in_channels, depth=depth, **changed)


def decoder_widths(encoder: Encoder, decoder_channels: Sequence[int] | None) -> tuple[int, ...]:
    """A U-Net-family decoder's width at each level but the deepest (shallow to deep).

    ``None`` mirrors the encoder's widths (the U-Net papers); otherwise one value per level.

    Raises:
        ValueError: a list of the wrong length or with non-positive widths.
    """
    if decoder_channels is None:
        return tuple(encoder.out_channels[:-1])
    return check_positive_ints("decoder_channels", decoder_channels, length=len(encoder.out_channels) - 1)
