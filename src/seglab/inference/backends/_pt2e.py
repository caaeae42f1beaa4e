"""``compile`` + ``int8``: PyTorch 2 export (PT2E) post-training static quantisation with the X86
Inductor quantiser (from the ``torchao`` package), compiled by Inductor with freezing.

The prepared model is captured by ``torch.export`` (dynamic H and W where it allows), observers are
inserted (``prepare_pt2e``), the calibration tiles run through it, and ``convert_pt2e`` folds the
observed ranges into quantise / dequantise pairs that Inductor lowers to oneDNN int8 kernels. The
quantised program can be saved (``torch.export.save``, ``.pt2``) with the weights' fingerprint and
reused, but Inductor compiles it again in every process (tens of seconds), and each new input size
is compiled on its own (the int8 lowering does not take symbolic sizes), which is why OpenVINO is
the default int8 path.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seglab.errors import InvalidValueError, MissingExtraError
from seglab.inference.backends._base import CalibrationSource, Runner, fingerprint, model_facts
from seglab.inference.backends._convert import capture

__all__ = ["Pt2eRunner"]

_META = "seglab.json"


def _torchao() -> tuple[Any, Any, Any]:
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as err:
        raise MissingExtraError(
            "backend='compile' with precision='int8' (PT2E) needs the optional package 'torchao': pip install "
            "torchao; or use backend='openvino' (pip install 'seglab[openvino]')."
        ) from err
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    return prepare_pt2e, convert_pt2e, quantizer


@contextlib.contextmanager
def _frozen() -> Iterator[None]:
    import torch._inductor.config as inductor_config

    with torch.no_grad(), inductor_config.patch(freezing=True):
        yield


class UnsupportedModelError(InvalidValueError):
    """A backend cannot convert this model (``auto`` falls back to the prepared model)."""


def _quantize(model: nn.Module, shape: tuple[int, int, int, int], batches: Sequence[np.ndarray]) -> nn.Module:
    prepare_pt2e, convert_pt2e, quantizer = _torchao()
    program, _ = capture(model, shape, dynamic=True)
    try:
        observed = prepare_pt2e(program.module(), quantizer)
    except ValueError as err:  # the X86 quantiser's pattern matcher rejects some graphs (ResNet blocks)
        raise UnsupportedModelError(
            f"PT2E's X86 quantiser cannot annotate {type(model).__name__} ({err}); quantise it with OpenVINO "
            "instead: --backend openvino --precision int8."
        ) from err
    with torch.no_grad():
        for batch in batches:
            observed(torch.from_numpy(batch))
    return convert_pt2e(observed)


def _save(quantized: nn.Module, path: Path, shape: tuple[int, int, int, int], meta: dict[str, str]) -> None:
    example = torch.randn(max(2, shape[0]), *shape[1:])
    program = torch.export.export(quantized, (example,), strict=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.export.save(program, tmp, extra_files={_META: json.dumps(meta)})
    tmp.replace(path)


def _load(path: Path, print_: str) -> nn.Module | None:
    extra = {_META: ""}
    try:
        program = torch.export.load(path, extra_files=extra)
    except Exception:
        return None
    meta = json.loads(extra[_META] or "{}")
    return program.module() if meta.get("fingerprint") == print_ else None


class Pt2eRunner(Runner):
    """An int8 network quantised with PT2E and compiled by Inductor (CPU)."""

    backend = "compile"

    def __init__(self, model: nn.Module, quantized: nn.Module, path: Path | None) -> None:
        super().__init__(model_facts(model), precision="int8", path=path)
        _torchao()  # registers torchao's Inductor lowerings of the int8 ops
        self.module = torch.compile(quantized, dynamic=False)  # one compilation per input size

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        shape: tuple[int, int, int, int],
        *,
        calibration: CalibrationSource,
        path: Path | None,
    ) -> Pt2eRunner:
        """Quantise ``model`` on ``calibration`` (or reuse ``path`` made from the same weights)."""
        print_ = fingerprint(model) if path is not None else ""
        quantized = _load(path, print_) if path is not None and path.is_file() else None
        if quantized is None:
            batches = calibration.batches()
            if not batches:
                raise InvalidValueError("precision='int8' needs calibration tiles; none were given.")
            quantized = _quantize(model, shape, batches)
            if path is not None:
                _save(quantized, path, shape, {"fingerprint": print_, "format": "1"})
        return cls(model, quantized, path)

    def _run(self, x: Tensor) -> Tensor:
        with _frozen():
            out = self.module(x.detach().float().cpu().contiguous())  # (N, K, h', w')
        return out.float().to(x.device)
