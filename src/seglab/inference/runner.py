"""Runners: what runs the network inside a :class:`~seglab.Predictor`.

A runner is any callable that takes a batch of *normalised* images ``(N, C, h, w)`` (float) and
returns logits ``(N, K, h', w')`` as a torch tensor, with two attributes the predictor asks
before it pads or tiles:

* ``size_divisor: int``: ``h`` and ``w`` must be multiples of it (1: any size);
* ``output_shape(hw) -> hw``: the output size for an input size (smaller than the input only
  for valid-convolution models, which are then predicted with overlapping tiles);

and, optionally, ``input_hw`` (the one size a fixed-size graph accepts, else ``None``) and
``device`` (where the batches should be; the predictor moves them there).

Everything else (normalisation, padding to ``size_divisor``, tiling, test-time augmentation,
thresholds) belongs to the predictor, so every backend gives the same answer for the same
network. :class:`EagerRunner` runs a PyTorch model; :class:`~seglab.inference.OnnxModel` is the
onnxruntime runner. Other backends subclass :class:`Runner`.

Example:
    >>> import seglab, torch
    >>> runner = EagerRunner(seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2))
    >>> runner.size_divisor, runner.output_shape((32, 48)), runner(torch.randn(1, 1, 32, 48)).shape
    (4, (32, 48), torch.Size([1, 2, 32, 48]))
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from seglab.errors import InvalidTypeError
from seglab.inference.prepare import prepare as prepare_model
from seglab.inference.prepare import prepare_info

__all__ = ["EagerRunner", "Runner", "as_runner"]


class Runner:
    """Base class of runners (see the module docstring); subclasses implement ``__call__``.

    Attributes:
        size_divisor: input H and W must be multiples of this.
        input_hw: the fixed input ``(H, W)`` of a fixed-size graph, else ``None``.
        device: where input batches should be.
    """

    size_divisor: int = 1
    input_hw: tuple[int, int] | None = None
    device: torch.device = torch.device("cpu")

    def output_shape(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """Output ``(H, W)`` for an input ``(H, W)`` (the same by default; ``(D, H, W)`` for volumes)."""
        return tuple(int(s) for s in input_hw)  # type: ignore[return-value]

    def __call__(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Logits ``(N, K, h', w')`` for a normalised batch ``(N, C, h, w)``."""
        raise NotImplementedError


class EagerRunner(Runner):
    """Run a PyTorch model (by default its :func:`~seglab.inference.prepare` copy: eval mode,
    conv+BN folded, ``channels_last`` where it helps).

    Args:
        model: a seglab model or any ``nn.Module`` ``(N, C, h, w) -> (N, K, h', w')``.
        device: where to run (default: the model's device).
        prepare: use the prepared copy; ``False`` runs ``model`` itself (it must be in eval mode:
            the trainer validates its live model this way).

    Attributes:
        model: the module that runs.
    """

    def __init__(
        self, model: nn.Module, device: str | torch.device | None = None, *, prepare: bool = True
    ) -> None:
        from seglab.models import SegmentationModel

        if not isinstance(model, nn.Module):
            raise InvalidTypeError(f"EagerRunner runs an nn.Module; got {type(model).__name__}.")
        if device is None:
            first = next(iter(model.parameters()), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.model = prepare_model(model, device=self.device) if prepare else model
        info = prepare_info(self.model)
        self._format = torch.channels_last if info is not None and info.channels_last else None
        self._seg = self.model if isinstance(self.model, SegmentationModel) else None
        self.size_divisor = self._seg.size_divisor if self._seg is not None else 1
        first = next(iter(self.model.parameters()), None)
        self._dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32

    def output_shape(self, input_hw: tuple[int, int]) -> tuple[int, int]:
        """The model's ``output_shape`` (identity for a plain module)."""
        if self._seg is None:
            return super().output_shape(input_hw)
        out = self._seg.output_shape(tuple(int(s) for s in input_hw))
        return tuple(int(s) for s in out)  # type: ignore[return-value]

    def check_input_size(self, h: int, w: int) -> None:
        """Raise ``ValueError`` for a size the model cannot take (used by the sliding window)."""
        if self._seg is not None:
            self._seg.check_input_size(h, w)

    @torch.inference_mode()
    def __call__(self, x: Tensor) -> Tensor:
        """Logits (float32, on :attr:`device`) for a batch ``(N, C, h, w)``."""
        x = x.to(device=self.device, dtype=self._dtype)
        if self._format is not None and x.ndim == 4:
            x = x.contiguous(memory_format=self._format)
        from seglab.models import SegOutput

        y = self.model(x)
        return (y.out if isinstance(y, SegOutput) else y).float()


class _FunctionRunner(Runner):
    """A plain function ``(N, C, h, w) -> (N, K, h, w)`` logits, taken as accepting any size."""

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        self.fn = fn

    def __call__(self, x: Tensor) -> Tensor:
        return self.fn(x)


def as_runner(model: Runner | nn.Module | Callable[[Tensor], Tensor]) -> Runner:
    """``model`` itself if it is a :class:`Runner`; an :class:`EagerRunner` that does not prepare
    (the module must be in eval mode) for an ``nn.Module``; a size-agnostic runner for another
    callable.

    Raises:
        InvalidTypeError: ``model`` is not callable.
    """
    if isinstance(model, Runner):
        return model
    if isinstance(model, nn.Module):
        return EagerRunner(model, prepare=False)
    if not callable(model):
        raise InvalidTypeError(f"A runner or model must be callable; got {type(model).__name__}.")
    return _FunctionRunner(model)
