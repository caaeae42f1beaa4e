"""The model registry: ``register_model`` fills it, ``create_model`` builds from it.

The class is the API. A model class is registered as it is, and a named variant as a
``functools.partial`` of it; its options and their documentation are the class's signature and
docstring, written once::

    @register_model("unet", paper="Ronneberger et al., MICCAI 2015", input_rule="H, W divisible by 16")
    class UNet(SegmentationModel): ...

    register_model("unet_valid", partial(UNet, valid=True, encoder="unet"), paper=...)

The class validates its options itself, so ``UNet(...)`` and ``create_model("unet", ...)`` check
the same way. Volumes are not separate names: a model that builds in 3-D takes
``spatial_dims=3`` (``create_model("unet", spatial_dims=3)``) and lists ``3`` in
:attr:`ModelInfo.spatial_dims`. ``create_model`` adds the registry's own checks: the name (``ValueError`` listing
the valid names with a did-you-mean) and the option names (``TypeError`` naming an unknown option
and the valid ones; the options a variant fixes are not options of the variant).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from seglab._options import did_you_mean
from seglab.errors import InvalidTypeError, InvalidValueError

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model"]

_COMMON = ("in_channels", "num_classes")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model name.

    Attributes:
        name: the registered name (``"unet"``).
        builder: what builds the model: a class, or a ``functools.partial`` of one (a variant).
        paper: the reference, e.g. ``"Ronneberger et al., MICCAI 2015"``.
        input_rule: the input-size rule in words, e.g. ``"H, W divisible by 16"``.
        task: ``"semantic"`` (``model(x)`` gives logits) or ``"instance"`` (torchvision detection
            contract).
        example_size: a small valid ``(H, W)`` used by the registry-wide tests and examples.
        default_loss: the loss spec the trainer uses when none is given (``None``: the trainer's
            default).
        test_options: options that make the model small enough for the registry sweep (e.g. a
            small encoder); the sweep also builds the defaults where cheap.
        summary: one line on what a variant fixes (e.g. ``"valid convolutions"``).
        spatial_dims: the spatial ranks the model builds in: ``(2,)``, or ``(2, 3)`` for a model
            that takes ``spatial_dims=3`` (volumes ``(N, C, D, H, W)``; the registry sweep builds it
            in 3-D too).
    """

    name: str
    builder: Callable[..., nn.Module]
    paper: str = ""
    input_rule: str = "any size"
    task: str = "semantic"
    example_size: tuple[int, int] = (64, 64)
    default_loss: str | None = None
    test_options: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    spatial_dims: tuple[int, ...] = (2,)

    @property
    def cls(self) -> type:
        """The model class (the partial's function for a variant)."""
        b = self.builder
        return b.func if isinstance(b, functools.partial) else b  # type: ignore[return-value]

    @property
    def fixed(self) -> dict[str, Any]:
        """The options a variant fixes (``{"valid": True}`` for ``unet_valid``)."""
        b = self.builder
        return dict(b.keywords) if isinstance(b, functools.partial) else {}

    @property
    def options(self) -> dict[str, inspect.Parameter]:
        """The model's keyword options (name -> ``inspect.Parameter``), the variant's fixed ones excluded."""
        params = inspect.signature(self.cls).parameters
        return {k: p for k, p in params.items() if k not in self.fixed}

    @property
    def doc(self) -> str:
        """The documentation: the variant's summary, then the class docstring (its options)."""
        text = inspect.getdoc(self.cls) or ""
        return f"{self.summary}\n\n{text}" if self.summary else text


_REGISTRY: dict[str, ModelInfo] = {}


def _check_signature(key: str, builder: Callable[..., nn.Module]) -> None:
    """Options are explicit keywords: no ``*args``/``**kwargs``; ``in_channels``/``num_classes`` exist."""
    params = inspect.signature(builder).parameters
    for p in params.values():
        positional_ok = p.name in _COMMON and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        if p.kind is not inspect.Parameter.KEYWORD_ONLY and not positional_ok:
            raise InvalidValueError(
                f"Model {key!r}: parameter {p.name!r} must be keyword-only and explicit "
                "(write `def __init__(self, in_channels, num_classes, *, ...)`; no **kwargs)."
            )
    for required in _COMMON:
        if required not in params:
            raise InvalidValueError(f"Model {key!r} must accept the keyword option {required!r}.")


def register_model(
    name: str | None = None,
    builder: Callable[..., nn.Module] | None = None,
    *,
    paper: str = "",
    input_rule: str = "any size",
    task: str = "semantic",
    example_size: tuple[int, int] = (64, 64),
    default_loss: str | None = None,
    test_options: dict[str, Any] | None = None,
    summary: str = "",
    spatial_dims: tuple[int, ...] = (2,),
) -> Any:
    """Register a model class (as a decorator) or a variant (``builder``: a ``functools.partial``).

    Args:
        name: the registered name (default: the class name in lower case).
        builder: register this now instead of decorating: a class, or a partial of one for a
            named variant.
        paper: the reference.
        input_rule: the input-size rule in words.
        task: ``"semantic"`` or ``"instance"``.
        example_size: a small valid input size.
        default_loss: the loss spec the trainer uses by default.
        test_options: options that make the model small for the registry sweep.
        summary: one line on what a variant fixes.
        spatial_dims: the spatial ranks it builds in (``(2, 3)``: also volumes, with the option
            ``spatial_dims=3`` on the same name).

    Returns:
        The decorator, or ``builder`` when given.

    Raises:
        ValueError: the name is already registered, or the class takes positional options or
            ``**kwargs`` (options must be explicit keywords).

    Example:
        >>> from functools import partial
        >>> from seglab.models.fcn import FCN
        >>> register_model("fcn4s", partial(FCN, stride=4), paper="...")  # doctest: +SKIP
    """

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        cls = fn.func if isinstance(fn, functools.partial) else fn
        key = name or cls.__name__.lower()
        if key in _REGISTRY:
            raise InvalidValueError(
                f"A model named {key!r} is already registered (by {_REGISTRY[key].cls.__module__}); "
                "choose another name."
            )
        _check_signature(key, fn)
        _REGISTRY[key] = ModelInfo(
            name=key,
            builder=fn,
            paper=paper,
            input_rule=input_rule,
            task=task,
            example_size=tuple(example_size),
            default_loss=default_loss,
            test_options=dict(test_options or {}),
            summary=summary,
            spatial_dims=tuple(spatial_dims),
        )
        return fn

    return add if builder is None else add(builder)


def _ensure_loaded() -> None:
    # Importing the package imports every architecture module, which registers its models.
    import seglab.models  # noqa: F401


def list_models(task: str | None = None) -> list[str]:
    """Registered model names, sorted; ``task="semantic"`` or ``"instance"`` filters.

    Example:
        >>> "unet" in list_models()
        True
    """
    _ensure_loaded()
    return sorted(n for n, info in _REGISTRY.items() if task is None or info.task == task)


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered name (``ValueError`` with did-you-mean if unknown).

    Example:
        >>> model_info("unet_valid").fixed
        {'valid': True, 'encoder': 'unet'}
    """
    _ensure_loaded()
    if name not in _REGISTRY:
        names = sorted(_REGISTRY)
        raise InvalidValueError(
            f"Unknown model {name!r}.{did_you_mean(name, names)} Registered models: {', '.join(names)}."
        )
    return _REGISTRY[name]


def create_model(name: str, *, in_channels: int = 3, num_classes: int = 1, **options: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: a name from :func:`list_models` (``"unet"``, ``"unet3p"``, ``"deeplabv3plus"``, ...).
        in_channels: input image channels.
        num_classes: output channels (one logit map per class; 1 for binary segmentation).
            For ``mask_rcnn`` it counts the background, as in torchvision.
        **options: the model's own keyword options (see its class docstring, or
            ``model_info(name).doc``).

    Returns:
        The model (an ``nn.Module``; semantic models are :class:`SegmentationModel`).

    Raises:
        ValueError: unknown name (the message lists the registered names and suggests the
            closest), or an invalid option value.
        TypeError: an option the model does not take (named, with the valid options).

    Example:
        >>> m = create_model("unet", in_channels=1, num_classes=2, base_channels=8, depth=2)
        >>> type(m).__name__
        'UNet'
    """
    info = model_info(name)
    params = info.options
    unknown = [k for k in options if k not in params]
    if unknown:
        valid = sorted(k for k in params if k not in _COMMON)
        hints = "".join(did_you_mean(k, valid) for k in unknown)
        fixed = [k for k in unknown if k in info.fixed]
        why = f" ({', '.join(fixed)} is fixed by the variant {name!r})" if fixed else ""
        raise InvalidTypeError(
            f"Model {name!r} got unknown option(s) {', '.join(map(repr, unknown))}{why}.{hints} "
            f"Valid options: {', '.join(valid)}."
        )
    return info.builder(in_channels=in_channels, num_classes=num_classes, **options)
