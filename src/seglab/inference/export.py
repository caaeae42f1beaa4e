"""ONNX export of semantic models and an onnxruntime runner with the model call signature.

``export_onnx`` runs ``torch.export.export`` itself and hands the resulting program to the
``torch.export``-based ONNX exporter (``torch.onnx.export(dynamo=True)``, the default since PyTorch
2.9). Why this path and not the TorchScript tracer (``dynamo=False``):

* dynamic sizes are declared and checked, not hoped for: H and W are exported as symbols
  (``torch.export.Dim``; multiples of the model's size divisor where it has one), and if the
  model's code specialises on the traced size (Python arithmetic on shapes, a size-dependent
  kernel) or needs a narrower rule than declared, the export *fails* and names the guards. The
  tracer instead bakes the traced size into a graph that claims dynamic axes and only warns.
* ``torch.export.export`` is called directly because ``torch.onnx.export(model, ...)`` falls back
  on its own to a "draft" export that ignores violated guards and may specialise silently.
* it is the maintained path (the TorchScript exporter prints a deprecation warning in 2.14).

It is slower (seconds per model), which matters for the test-suite, not for users.

With ``dynamic="auto"`` (default) a model whose output has its input's size is exported with
symbolic batch, H and W: H and W any size in the range ``torch.export`` infers (``Dim.DYNAMIC``)
for models without a size rule, multiples of ``model.size_divisor`` for the others; failing that,
multiples of 32 when the example size allows. The trace uses an example of at least 128 pixels a
side, so no feature map shrinks to one pixel, which would specialise the size. Each dynamic graph
is then run in onnxruntime at a second size (one and three steps larger: odd sizes for models
without a rule) against PyTorch. If no dynamic export works, the model is exported at the fixed
``input_shape`` (batch still symbolic) with a warning saying why. Models whose output is smaller
than their input (``unet_valid``) are always fixed-size. The exported graph is the
:func:`~seglab.inference.prepare` copy of the model (eval mode, conv+BN folded), and the file
carries the model's facts as metadata (``seglab.in_channels``, ``seglab.num_classes``,
``seglab.size_divisor`` (the step of the dynamic sizes), ``seglab.min_hw`` (the smallest size the
export allows), ``seglab.input_hw``, ``seglab.output_hw``), which :class:`OnnxModel` reads back.
"""

from __future__ import annotations

import copy
import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seglab._options import check_positive_int
from seglab.errors import InvalidTypeError, InvalidValueError, MissingFileError, missing_extra
from seglab.inference._onnx_checks import check_onnx_file
from seglab.inference.prepare import prepare
from seglab.inference.runner import Runner

__all__ = ["OnnxModel", "check_onnx", "export_onnx", "export_program", "trace_size"]

_INPUT, _OUTPUT = "image", "logits"


def _input_shape(model: nn.Module, input_shape: Sequence[int]) -> tuple[int, int, int, int]:
    shape = tuple(input_shape)
    if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in shape):
        raise InvalidValueError(f"input_shape must hold positive integers; got {input_shape!r}.")
    in_ch = getattr(model, "in_channels", None)
    if len(shape) == 2:
        if not isinstance(in_ch, int):
            raise InvalidValueError(
                f"input_shape {shape} gives only (H, W) and the model has no in_channels; pass (N, C, H, W)."
            )
        shape = (1, in_ch, *shape)
    if len(shape) != 4:
        raise InvalidValueError(f"input_shape must be (N, C, H, W) or (H, W); got {input_shape!r}.")
    if isinstance(in_ch, int) and shape[1] != in_ch:
        raise InvalidValueError(f"input_shape has {shape[1]} channel(s) but the model takes {in_ch}.")
    check = getattr(model, "check_input_size", None)
    if callable(check):
        check(int(shape[2]), int(shape[3]))
    return tuple(int(s) for s in shape)  # type: ignore[return-value]


def _output_hw(model: nn.Module, hw: tuple[int, int]) -> tuple[int, int]:
    shape_fn = getattr(model, "output_shape", None)
    return tuple(int(s) for s in shape_fn(hw)) if callable(shape_fn) else hw  # type: ignore[return-value]


def export_program(model: nn.Module, example: Tensor, divisor: int | None) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` on ``example`` with a symbolic batch and, unless ``divisor`` is
    ``None``, symbolic H and W: multiples of ``divisor`` when it is above 1 (an error if the model's
    code needs a narrower rule), else any size in the range the export infers (``Dim.DYNAMIC``; an
    error if the code specialises on the traced size).

    The graph capture shared by :func:`export_onnx` and the converting backends of
    :func:`~seglab.inference.accelerate` (OpenVINO, PT2E int8). Trace dynamic graphs at
    :func:`trace_size` so no feature map shrinks to one pixel.

    Args:
        model: the module to capture (typically its :func:`~seglab.inference.prepare` copy, on the CPU).
        example: an example batch ``(N, C, H, W)``; ``N >= 2`` keeps the batch symbolic.
        divisor: the step of symbolic H and W (1: any size), or ``None`` for a fixed H and W.

    Returns:
        The exported program.

    Example:
        >>> import seglab
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=4, depth=2).eval()
        >>> program = export_program(m, torch.randn(2, 1, *trace_size((32, 32), 4)), 4)
        >>> program.module()(torch.randn(1, 1, 36, 44)).shape
        torch.Size([1, 2, 36, 44])
    """
    dim = torch.export.Dim
    dims: dict[int, Any] = {0: dim("batch", min=1, max=65536)}
    if divisor is not None and divisor > 1:
        dims[2] = divisor * dim("h_blocks", min=1, max=65536 // divisor)
        dims[3] = divisor * dim("w_blocks", min=1, max=65536 // divisor)
    elif divisor is not None:
        dims[2] = dims[3] = dim.DYNAMIC
    return torch.export.export(model, (example,), dynamic_shapes=(dims,), strict=False)


def trace_size(hw: Sequence[int], step: int) -> tuple[int, int]:
    """A comfortable size to trace a dynamic graph at: ``hw`` rounded up to a multiple of ``step``,
    at least 128 and two steps a side, so no feature map shrinks to one pixel (a symbol that reaches
    1 anywhere in the network, say at the deepest level of an encoder, is specialised to a constant).

    Example:
        >>> trace_size((30, 500), 32)
        (128, 512)
    """
    return tuple(-(-max(int(s), 2 * step, 128) // step) * step for s in hw)  # type: ignore[return-value]


def _min_hw(program: torch.export.ExportedProgram) -> list[int] | None:
    """The smallest H and W a dynamic program accepts (from its inferred ranges), if it says."""
    names = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in names:
            mins = []
            for d in node.meta["val"].shape[2:]:
                expr = d.node.expr if isinstance(d, torch.SymInt) else None
                bound = program.range_constraints.get(expr) if expr is not None else None
                if bound is None:
                    return None
                mins.append(int(bound.lower))
            return mins
    return None


def _to_onnx(program: torch.export.ExportedProgram, opset: int | None) -> Any:
    return torch.onnx.export(
        program,
        (),
        None,
        dynamo=True,
        input_names=[_INPUT],
        output_names=[_OUTPUT],
        opset_version=opset,
        verbose=False,
    )


def _second_size(hw: tuple[int, int], divisor: int) -> tuple[int, int]:
    """Another valid size for checking a dynamic export: larger by one and three size steps, so
    both the size and its parity in units of the step change."""
    d = max(divisor, 1)
    return hw[0] + d, hw[1] + 3 * d


def _require_exporter() -> None:
    """The ONNX exporter needs ``onnx`` and ``onnxscript`` (the ``seglab[onnx]`` extra)."""
    import importlib.util

    for package in ("onnx", "onnxscript"):
        if importlib.util.find_spec(package) is None:
            raise missing_extra(package, "onnx", "ONNX export")


def _dynamic_program(
    prepared: nn.Module,
    shape: tuple[int, int, int, int],
    divisor: int,
    dynamic: bool | str,
    opset: int | None,
) -> tuple[Any, int, list[int] | None, list[str]]:
    """Try dynamic exports: ``(program or None, step, smallest H/W, reasons the tries failed)``."""
    hw = (shape[2], shape[3])
    # the model's own size rule first; code whose shape arithmetic needs more (ceil-mode pooling
    # chains, as FCN's) often exports for multiples of 32, when the example size is one
    wide = math.lcm(divisor, 32)
    steps = [divisor, wide] if hw[0] % wide == 0 and hw[1] % wide == 0 else [divisor]
    reasons: list[str] = []
    for step in dict.fromkeys(steps):
        try:
            size = trace_size(hw, step)
            exported = export_program(prepared, torch.randn(max(2, shape[0]), shape[1], *size), step)
            min_hw = _min_hw(exported) if step == 1 else [step, step]
            program = _to_onnx(exported, opset)
        except Exception as err:  # "auto" moves on and, in the end, says why
            if dynamic is True and step == steps[-1]:
                raise
            reasons.append(f"dynamic export for multiples of {step} failed ({_first_line(err)})")
            continue
        second = _second_size(hw, step)
        if min_hw is not None:
            second = (max(second[0], min_hw[0]), max(second[1], min_hw[1]))
        reason = _disagreement(prepared, program, second, shape[1]) if dynamic == "auto" else ""
        if not reason:
            return program, step, min_hw, reasons
        reasons.append(reason)
    return None, divisor, None, reasons


def _check_export_args(model: nn.Module, dynamic: bool | str, opset: int | None) -> None:
    if not isinstance(model, nn.Module):
        raise InvalidTypeError(f"export_onnx expects an nn.Module, got {type(model).__name__}.")
    if dynamic not in ("auto", True, False):
        raise InvalidValueError(f"dynamic must be True, False or 'auto'; got {dynamic!r}.")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 18):
        raise InvalidValueError(
            f"opset must be an integer >= 18 (the torch.export-based exporter's minimum); got {opset!r}."
        )


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_shape: Sequence[int],
    dynamic: bool | str = "auto",
    opset: int | None = None,
) -> Path:
    """Export a semantic model to ONNX (logits out), dynamic in H and W where the model allows.

    Args:
        model: a seglab semantic model (or any ``nn.Module`` ``(N, C, H, W) -> (N, K, H', W')``).
            Not modified: its :func:`~seglab.inference.prepare` copy (eval, conv+BN folded) is
            exported.
        path: the ``.onnx`` file to write (parent folders are created).
        input_shape: an example input ``(N, C, H, W)`` or ``(H, W)``; it must be a size the model
            accepts and is the fixed size of a non-dynamic export. The batch is always dynamic.
        dynamic: ``True`` (dynamic H and W, an error if the model does not allow it), ``False``
            (fixed H and W) or ``"auto"`` (dynamic when possible, see the module docstring).
        opset: ONNX opset (default: the exporter's, 20 with PyTorch 2.14).

    Returns:
        The path written.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a bad ``input_shape`` / ``dynamic``, or ``dynamic=True`` for a model whose
            output is smaller than its input.
        MissingExtraError: ``onnx`` or ``onnxscript`` is not installed (``pip install 'seglab[onnx]'``).

    Example:
        >>> import seglab, tempfile, os
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=8, depth=2)
        >>> p = export_onnx(m, os.path.join(tempfile.mkdtemp(), "unet.onnx"), input_shape=(1, 1, 64, 64))
        >>> OnnxModel(p).dynamic
        True
    """
    _check_export_args(model, dynamic, opset)
    _require_exporter()
    shape = _input_shape(model, input_shape)
    hw = (shape[2], shape[3])
    out_hw = _output_hw(model, hw)
    divisor = int(getattr(model, "size_divisor", 1) or 1)
    same_size = out_hw == hw
    if dynamic is True and not same_size:
        raise InvalidValueError(
            f"this model's output {out_hw} is smaller than its input {hw} (valid convolutions): it exports at a "
            "fixed size only; use dynamic=False or 'auto' and run large images through sliding_window."
        )
    prepared = prepare(model, device="cpu", channels_last=False)
    program, step, min_hw, reasons = None, divisor, None, []
    if same_size and dynamic in ("auto", True):
        program, step, min_hw, reasons = _dynamic_program(prepared, shape, divisor, dynamic, opset)
    is_dynamic = program is not None
    if program is None:
        if reasons:
            warnings.warn(
                f"export_onnx: exported at the fixed size {hw}: {'; '.join(reasons)}.", stacklevel=2
            )
        example = torch.randn(max(2, shape[0]), *shape[1:])  # batch >= 2 keeps the batch symbolic
        program = _to_onnx(export_program(prepared, example, None), opset)
    meta = {
        "seglab.format": "1",
        "seglab.model": type(model).__name__,
        "seglab.in_channels": str(shape[1]),
        "seglab.num_classes": str(getattr(model, "num_classes", "")),
        "seglab.size_divisor": str(step if is_dynamic else divisor),
        "seglab.dynamic": json.dumps(is_dynamic),
        "seglab.input_hw": json.dumps(None if is_dynamic else list(hw)),
        "seglab.min_hw": json.dumps(min_hw if is_dynamic else None),
        "seglab.output_hw": json.dumps(None if is_dynamic else list(out_hw)),
    }
    program.model.metadata_props.update(meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    return path


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def _disagreement(model: nn.Module, program: Any, hw: tuple[int, int], channels: int) -> str:
    """Check a dynamic export: ``""`` if it is symbolic in H, W and onnxruntime matches PyTorch at
    another size, else the reason it does not."""
    dims = program.model.graph.inputs[0].shape
    if dims is not None and any(isinstance(d, int) for d in list(dims)[2:]):
        return "the exporter specialised H and W to the example size"
    try:
        import onnxruntime as ort
    except ImportError:  # without onnxruntime the exporter's own guards are all we have
        return ""
    x = torch.randn(1, channels, *hw)
    with torch.no_grad():
        ref = model(x)
    try:
        session = ort.InferenceSession(
            program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        got = session.run(None, {_INPUT: x.numpy()})[0]
    except Exception as err:  # any runtime failure means "not really dynamic"
        return f"onnxruntime failed at {hw[0]}x{hw[1]} ({_first_line(err)})"
    if got.shape != tuple(ref.shape):
        return f"onnxruntime gave shape {got.shape} at {hw[0]}x{hw[1]}, PyTorch {tuple(ref.shape)}"
    diff = float(np.abs(got - ref.numpy()).max())
    if not diff <= 1e-3 * max(1.0, float(ref.abs().max())):
        return f"onnxruntime differs from PyTorch by {diff:.2e} at {hw[0]}x{hw[1]}"
    return ""


# -- running -----------------------------------------------------------------------------------
def _default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available] or available


def _session_options(ort: Any, threads: int | None, options: Any) -> Any:
    """``options`` (or new ``SessionOptions``) with ``threads`` set, or ``None`` when neither is given."""
    if threads is None:
        return options
    check_positive_int("threads", threads)
    options = options if options is not None else ort.SessionOptions()
    options.intra_op_num_threads = int(threads)
    return options


class OnnxModel(Runner):
    """An exported model run by onnxruntime, callable like the PyTorch model: the ONNX
    :class:`~seglab.inference.runner.Runner` behind ``Predictor.from_onnx``.

    Args:
        path: an ``.onnx`` file written by :func:`export_onnx` (other single-input graphs work too;
            they just lack the metadata).
        providers: onnxruntime execution providers (default: CUDA when available, then CPU).
        threads: CPU threads of the session (``intra_op_num_threads``; default: onnxruntime's,
            one per physical core).
        session_options: an ``onnxruntime.SessionOptions`` for everything else (``threads``, when
            given, is set on it).

    Attributes:
        in_channels, num_classes, size_divisor: read from the file's metadata (``None`` if absent).
        dynamic: whether H and W are dynamic.
        input_hw: the fixed input ``(H, W)`` of a fixed-size graph, else ``None``.
        min_hw: the smallest ``(H, W)`` a dynamic graph takes, when the export inferred one.

    Shape:
        ``(N, C, H, W)`` tensor or array ``->`` ``(N, K, H', W')`` float32 logits as a torch tensor
        (on the input tensor's device).

    Example:
        >>> import seglab, tempfile, os, torch
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=8, depth=2)
        >>> runner = OnnxModel(export_onnx(m, os.path.join(tempfile.mkdtemp(), "m.onnx"), input_shape=(32, 32)))
        >>> runner(torch.rand(3, 1, 48, 64)).shape
        torch.Size([3, 2, 48, 64])
    """

    def __init__(
        self,
        path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        *,
        threads: int | None = None,
        session_options: Any = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise missing_extra("onnxruntime", "onnx", "Running an ONNX model") from err

        self.path = Path(path)
        if not self.path.is_file():
            raise MissingFileError(
                f"ONNX file not found: {os.fspath(path)!r} (write one with seglab.inference.export_onnx)."
            )
        check_onnx_file(self.path)
        bad = ort.capi.onnxruntime_pybind11_state
        options = _session_options(ort, threads, session_options)
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=list(providers or _default_providers())
            )
        except (bad.InvalidProtobuf, bad.InvalidGraph, bad.Fail, bad.NoSuchFile) as err:
            raise InvalidValueError(
                f"{self.path} is not an ONNX model onnxruntime can load ({_first_line(err)}); "
                "write one with `seglab export CHECKPOINT`."
            ) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise InvalidValueError(
                f"{self.path} has {len(inputs)} inputs; OnnxModel runs single-input segmentation graphs."
            )
        self._input, self._output = inputs[0], outputs[0]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.in_channels = _int_or_none(meta.get("seglab.in_channels"))
        self.num_classes = _int_or_none(meta.get("seglab.num_classes"))
        self.size_divisor = _int_or_none(meta.get("seglab.size_divisor")) or 1
        dims = self._input.shape
        static_hw = all(isinstance(d, int) for d in dims[2:])
        if self.in_channels is None and isinstance(dims[1], int):
            self.in_channels = dims[1]
        self.dynamic = not static_hw
        self.input_hw = (int(dims[2]), int(dims[3])) if static_hw else None
        out_hw = json.loads(meta["seglab.output_hw"]) if "seglab.output_hw" in meta else None
        if out_hw is None and not self.dynamic and all(isinstance(d, int) for d in self._output.shape[2:]):
            out_hw = list(self._output.shape[2:])
        self._output_hw = tuple(out_hw) if out_hw else None
        min_hw = json.loads(meta["seglab.min_hw"]) if "seglab.min_hw" in meta else None
        self.min_hw = (int(min_hw[0]), int(min_hw[1])) if min_hw else None
        self._fixed_batch = dims[0] if isinstance(dims[0], int) else None
        self._np_dtype = np.float16 if "float16" in self._input.type else np.float32

    def __repr__(self) -> str:
        size = "dynamic H, W" if self.dynamic else f"fixed {self.input_hw}"
        return f"OnnxModel({str(self.path)!r}, {size}, providers={self.session.get_providers()})"

    def output_shape(self, input_shape: tuple[int, int]) -> tuple[int, int]:
        """Output ``(H, W)`` for an input ``(H, W)`` (smaller only for fixed valid-convolution graphs)."""
        self.check_input_size(int(input_shape[0]), int(input_shape[1]))
        if self._output_hw is not None and not self.dynamic:
            return int(self._output_hw[0]), int(self._output_hw[1])
        return int(input_shape[0]), int(input_shape[1])

    def check_input_size(self, h: int, w: int) -> None:
        """Raise ``ValueError`` for a size the graph cannot take."""
        if self.input_hw is not None and (h, w) != self.input_hw:
            raise InvalidValueError(
                f"{self.path.name} was exported at the fixed input size {self.input_hw[0]}x{self.input_hw[1]}; "
                f"got {h}x{w}. Use tile={self.input_hw} with sliding_window, or re-export with dynamic shapes."
            )
        if self.min_hw is not None and (h < self.min_hw[0] or w < self.min_hw[1]):
            raise InvalidValueError(
                f"{self.path.name} takes inputs of at least {self.min_hw[0]}x{self.min_hw[1]}; got {h}x{w}. "
                "Use a larger tile, or pad the image."
            )
        d = self.size_divisor
        if d > 1 and (h % d or w % d):
            raise InvalidValueError(f"{self.path.name} needs H and W divisible by {d}; got {h}x{w}.")

    def __call__(self, x: Tensor | np.ndarray) -> Tensor:
        """Logits for a batch ``(N, C, H, W)`` (a tensor on any device, or an array)."""
        device = x.device if isinstance(x, Tensor) else torch.device("cpu")
        arr = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
        if arr.ndim != 4:
            raise InvalidValueError(f"OnnxModel expects a batch (N, C, H, W); got shape {arr.shape}.")
        if self.in_channels is not None and arr.shape[1] != self.in_channels:
            raise InvalidValueError(
                f"{self.path.name} takes {self.in_channels} input channel(s); got {arr.shape[1]}."
            )
        self.check_input_size(int(arr.shape[2]), int(arr.shape[3]))
        arr = np.ascontiguousarray(arr, dtype=self._np_dtype)
        if self._fixed_batch is not None and arr.shape[0] != self._fixed_batch:
            parts = [
                self._run(arr[i : i + self._fixed_batch]) for i in range(0, arr.shape[0], self._fixed_batch)
            ]
            out = np.concatenate(parts)
        else:
            out = self._run(arr)
        return torch.from_numpy(out).float().to(device)

    def _run(self, arr: np.ndarray) -> np.ndarray:
        return self.session.run([self._output.name], {self._input.name: arr})[0]


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


def check_onnx(model: nn.Module, path: str | os.PathLike | OnnxModel, input: Tensor | np.ndarray) -> float:
    """Maximum absolute difference between PyTorch (eval mode) and onnxruntime on ``input``.

    Args:
        model: the PyTorch model (used in eval mode; a model in training mode is evaluated on an
            eval copy, the original is not changed).
        path: its exported ``.onnx`` file (or an :class:`OnnxModel` already opened on it).
        input: a batch ``(N, C, H, W)``.

    Returns:
        ``max |torch - onnxruntime|`` over all outputs, as a float.

    Raises:
        ValueError: the output shapes differ.

    Example:
        >>> import seglab, tempfile, os, torch
        >>> m = seglab.create_model("unet", in_channels=1, num_classes=2, base_channels=8, depth=2)
        >>> p = export_onnx(m, os.path.join(tempfile.mkdtemp(), "m.onnx"), input_shape=(32, 32))
        >>> check_onnx(m, p, torch.rand(2, 1, 32, 32)) < 1e-4
        True
    """
    x = torch.as_tensor(input).float()
    ref_model = copy.deepcopy(model).eval() if model.training else model
    with torch.no_grad():
        ref = ref_model(x)
    runner = path if isinstance(path, OnnxModel) else OnnxModel(path, providers=["CPUExecutionProvider"])
    got = runner(x.cpu())
    if got.shape != ref.shape:
        raise InvalidValueError(
            f"onnxruntime output {tuple(got.shape)} and PyTorch output {tuple(ref.shape)} differ in shape."
        )
    return float((got - ref.cpu().float()).abs().max())
