"""The model registry: ``@register_model`` fills it, ``create_model`` builds from it.

Each registered builder is a function with keyword-only, fully typed options::

    @register_model(paper="Ronneberger et al., MICCAI 2015", input_rule="H, W divisible by 2**depth")
    def unet(*, in_channels: int = 3, num_classes: int = 1, depth: int = 4, ...) -> UNet: ...

``create_model(name, in_channels=..., num_classes=..., **options)`` checks the name (``ValueError``
listing the valid names with a did-you-mean) and the options (``TypeError`` naming an unknown option
and the valid ones) before calling the builder.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from seglab._options import did_you_mean
from seglab.errors import InvalidTypeError, InvalidValueError

__all__ = ["ModelInfo", "create_model", "list_models", "model_info", "register_model"]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model name.

    Attributes:
        name: the registered name (``"unet"``).
        builder: the function that builds the model.
        paper: the reference, e.g. ``"Ronneberger et al., MICCAI 2015"``.
        input_rule: the input-size rule in words, e.g. ``"H, W divisible by 16"``.
        task: ``"semantic"`` (``model(x)`` gives logits) or ``"instance"`` (torchvision detection
            contract).
        example_size: a small valid ``(H, W)`` used by the registry-wide tests and examples.
        default_loss: the loss spec the trainer uses when none is given (``None``: the trainer's
            default).
        test_options: options that make the model small enough for the registry sweep (e.g. a
            small encoder); the sweep also builds the defaults where cheap.
    """

    name: str
    builder: Callable[..., nn.Module]
    paper: str = ""
    input_rule: str = "any size"
    task: str = "semantic"
    example_size: tuple[int, int] = (64, 64)
    default_loss: str | None = None
    test_options: dict[str, Any] = field(default_factory=dict)

    @property
    def options(self) -> dict[str, inspect.Parameter]:
        """The builder's keyword options (name -> ``inspect.Parameter``)."""
        return dict(inspect.signature(self.builder).parameters)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str | None = None,
    *,
    paper: str = "",
    input_rule: str = "any size",
    task: str = "semantic",
    example_size: tuple[int, int] = (64, 64),
    default_loss: str | None = None,
    test_options: dict[str, Any] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering a model builder under ``name`` (default: the function's name).

    Raises:
        ValueError: the name is already registered, or the builder takes positional parameters or
            ``**kwargs`` (builders must list their options explicitly).
    """

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise InvalidValueError(
                f"A model named {key!r} is already registered (by {_REGISTRY[key].builder.__module__}); "
                "choose another name."
            )
        params = inspect.signature(fn).parameters
        for p in params.values():
            if p.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise InvalidValueError(
                    f"Model builder {key!r}: parameter {p.name!r} must be keyword-only and explicit "
                    "(write `def builder(*, ...)`; no **kwargs)."
                )
        for required in ("in_channels", "num_classes"):
            if required not in params:
                raise InvalidValueError(f"Model builder {key!r} must accept the keyword option {required!r}.")
        _REGISTRY[key] = ModelInfo(
            name=key,
            builder=fn,
            paper=paper,
            input_rule=input_rule,
            task=task,
            example_size=tuple(example_size),
            default_loss=default_loss,
            test_options=dict(test_options or {}),
        )
        return fn

    return decorator


def _ensure_loaded() -> None:
    # Importing the package imports every architecture module, which registers its builders.
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
    """The :class:`ModelInfo` of a registered name (``ValueError`` with did-you-mean if unknown)."""
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
        **options: the model's own keyword options (see its builder's docstring).

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
        valid = sorted(k for k in params if k not in ("in_channels", "num_classes"))
        hints = "".join(did_you_mean(k, valid) for k in unknown)
        raise InvalidTypeError(
            f"Model {name!r} got unknown option(s) {', '.join(map(repr, unknown))}.{hints} "
            f"Valid options: {', '.join(valid)}."
        )
    for key, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidValueError(f"{key} must be a positive integer; got {value!r}.")
    return info.builder(in_channels=in_channels, num_classes=num_classes, **options)
