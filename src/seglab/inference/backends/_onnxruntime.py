"""The onnxruntime backend (fp32): :func:`seglab.inference.export_onnx` (dynamic H and W where the
model allows) run by :class:`seglab.inference.OnnxModel`.

A model exported at a fixed size (valid convolutions) is exported again for each new input size.
With ``path`` the exported file is kept, stamped with the fingerprint of the weights, and reused
by the next :func:`~seglab.inference.accelerate` call for the same weights.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from seglab.errors import InvalidValueError, missing_extra
from seglab.inference.backends._base import Runner, fingerprint, model_facts
from seglab.inference.backends._convert import ShapeCache

__all__ = ["OnnxRuntimeRunner"]

_KEY = "seglab.fingerprint"


def _modules() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
        import onnxscript  # noqa: F401 - the exporter needs it
    except ImportError as err:
        raise missing_extra(err.name or "onnxruntime", "onnx", "the onnxruntime backend") from err
    return onnx, onnxruntime


def _open(path: Path, threads: int | None) -> Any:
    from seglab.inference.export import OnnxModel

    return OnnxModel(path, providers=["CPUExecutionProvider"], threads=threads)


def _export(model: nn.Module, path: Path, shape: tuple[int, int, int, int], print_: str) -> None:
    from seglab.inference.export import export_onnx

    onnx, _ = _modules()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="export_onnx: exported at the fixed size")
        export_onnx(model, path, input_shape=shape, dynamic="auto")
    proto = onnx.load(str(path))
    proto.metadata_props.add(key=_KEY, value=print_)
    onnx.save(proto, str(path))


def _saved_fingerprint(path: Path) -> str | None:
    _, ort = _modules()
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as err:
        raise InvalidValueError(
            f"{path} is not a loadable ONNX file ({type(err).__name__}); pass another path."
        ) from err
    return session.get_modelmeta().custom_metadata_map.get(_KEY)


class OnnxRuntimeRunner(Runner):
    """A network exported to ONNX and run by onnxruntime on the CPU."""

    backend = "onnxruntime"

    def __init__(
        self, model: nn.Module, shape: tuple[int, int, int, int], *, path: Path | None, threads: int | None
    ) -> None:
        super().__init__(model_facts(model), precision="fp32", path=path)
        _modules()
        print_ = fingerprint(model)
        threads = int(threads or torch.get_num_threads())

        def build(hw: tuple[int, int] | None, target: Path | None = None) -> Any:
            size = shape if hw is None else (shape[0], shape[1], *hw)
            if target is not None:
                if not (target.is_file() and _saved_fingerprint(target) == print_):
                    _export(model, target, size, print_)
                return _open(target, threads)
            with tempfile.TemporaryDirectory(prefix="seglab-onnx-") as tmp:
                file = Path(tmp) / "model.onnx"
                _export(model, file, size, print_)
                return _open(file, threads)

        first = build(None, path)
        self._cache = ShapeCache(build)
        self._cache.items[None if first.dynamic else first.input_hw] = first

    @property
    def dynamic(self) -> bool:
        """Whether one exported graph takes every input size."""
        return self._cache.dynamic

    def _run(self, x: Tensor) -> Tensor:
        runner = self._cache.get((int(x.shape[2]), int(x.shape[3])))
        return runner(x.detach().float().cpu()).to(x.device)  # (N, K, h', w') float32
