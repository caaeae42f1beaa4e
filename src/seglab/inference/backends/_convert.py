"""Graph capture shared by the converting backends: ``torch.export`` of the prepared model with a
symbolic batch and, where the model allows, symbolic H and W (multiples of its size divisor).

A model whose output is smaller than its input (valid convolutions), or whose code specialises on
the traced size, is captured at one fixed size instead; runners then keep one converted model per
input size (built on first use, a few seconds each).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from seglab.inference.backends._base import model_facts
from seglab.inference.export import export_program, trace_size
from seglab.inference.prepare import prepare

__all__ = ["ShapeCache", "capture"]


def capture(
    model: nn.Module, shape: tuple[int, int, int, int], *, dynamic: bool
) -> tuple[torch.export.ExportedProgram, bool]:
    """``torch.export`` of ``model``'s prepared copy (eval, conv+BN folded, CPU, contiguous).

    Args:
        model: the network.
        shape: ``(N, C, H, W)`` example (the fixed size when not dynamic).
        dynamic: try symbolic H and W first.

    Returns:
        ``(program, is_dynamic)``.
    """
    prepared = prepare(model, device="cpu", channels_last=False)
    hw = (shape[2], shape[3])
    facts = model_facts(model)
    step = facts.size_divisor
    same_size = facts.output_shape is None or tuple(facts.output_shape(hw)) == hw
    if dynamic and same_size:
        example = torch.randn(2, shape[1], *trace_size(hw, step))  # batch 2 keeps the batch symbolic
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return export_program(prepared, example, step), True
        except Exception:
            pass
    return export_program(prepared, torch.randn(max(2, shape[0]), *shape[1:]), None), False


class ShapeCache:
    """One built artefact for a dynamic graph, else one per input ``(H, W)``, built on demand."""

    def __init__(self, build: Callable[[tuple[int, int] | None], Any] | None) -> None:
        self._build = build
        self.items: dict[tuple[int, int] | None, Any] = {}

    @property
    def dynamic(self) -> bool:
        return None in self.items

    def get(self, hw: tuple[int, int]) -> Any:
        if None in self.items:
            return self.items[None]
        if hw not in self.items:
            if self._build is None:
                from seglab.errors import InvalidValueError

                sizes = ", ".join(f"{h}x{w}" for h, w in self.items if h)  # type: ignore[misc]
                raise InvalidValueError(
                    f"this saved network takes the input size(s) {sizes} only; got {hw[0]}x{hw[1]}. Use one of "
                    "them as the tile size, or convert it again from the model."
                )
            self.items[hw] = self._build(hw)
        return self.items[hw]
