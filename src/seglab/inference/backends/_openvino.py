"""The OpenVINO backend: fp32, bf16 and int8 (NNCF post-training static quantisation).

The network is captured with ``torch.export`` (dynamic H and W where the model allows, see
:mod:`._convert`) and converted with ``openvino.convert_model``. Precision is explicit: OpenVINO's
CPU plugin runs in bfloat16 by default on CPUs that support it (0.06 off on the demo U-Net), so
``fp32`` sets ``INFERENCE_PRECISION_HINT=f32``; ``bf16`` sets ``bf16`` (refused on CPUs without
native bfloat16); ``int8`` quantises the graph with ``nncf.quantize`` (calibrated on the tiles it is
given) and runs its remaining float operations in fp32. The quantisation settings were chosen on
the hela *validation* frames with a briefly trained demo U-Net (Dice change against fp32, 100
calibration tiles): NNCF's defaults -0.010; asymmetric activations (``MIXED`` preset) -0.008;
first and last convolutions kept in fp32 (the input layer sees raw normalised intensities, the
head produces the logits that are thresholded; both are a small share of the FLOPs) -0.007; both
-0.005; and full bias correction instead of the fast one -0.003: the default here.

A converted or quantised graph can be saved as OpenVINO IR (``.xml`` + ``.bin``, weights kept in
fp32) carrying the seglab facts in its runtime info (size divisor, channels, precision and the
fingerprint of the weights it came from); :func:`accelerate` reuses a saved file whose fingerprint
matches instead of converting (or re-quantising) again.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seglab.errors import InvalidValueError, MissingFileError, missing_extra
from seglab.inference.backends._base import CalibrationSource, ModelFacts, Runner, fingerprint, model_facts
from seglab.inference.backends._convert import ShapeCache, capture

__all__ = ["OpenVinoRunner", "openvino_bf16", "quantize_openvino"]

_HINT = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}
_KEYS = ("fingerprint", "quantized", "size_divisor", "in_channels", "num_classes", "format")


def _ov() -> Any:
    try:
        import openvino
    except ImportError as err:
        raise missing_extra("openvino", "openvino", "the openvino backend") from err
    return openvino


def openvino_bf16() -> bool:
    """Whether OpenVINO's CPU plugin computes in bfloat16 natively on this machine."""
    return "BF16" in _ov().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def quantize_openvino(ov_model: Any, batches: Sequence[np.ndarray]) -> Any:
    """NNCF post-training static quantisation of an OpenVINO model on calibration batches
    ``(1, C, h, w)`` (see the module docstring for the settings; NNCF's progress bars silenced)."""
    try:
        import nncf
    except ImportError as err:
        raise missing_extra("nncf", "openvino", "int8 quantisation with OpenVINO") from err
    convs = [
        op.get_friendly_name() for op in ov_model.get_ordered_ops() if op.get_type_name() == "Convolution"
    ]
    keep = nncf.IgnoredScope(names=[convs[0], convs[-1]] if len(convs) > 2 else [])
    level = logging.getLogger("nncf").level
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return nncf.quantize(
                ov_model,
                nncf.Dataset(list(batches)),
                preset=nncf.QuantizationPreset.MIXED,
                subset_size=len(batches),
                fast_bias_correction=False,
                ignored_scope=keep,
            )
    finally:
        nncf.set_log_level(level)


def _convert(model: nn.Module, shape: tuple[int, int, int, int], dynamic: bool) -> tuple[Any, bool]:
    program, is_dynamic = capture(model, shape, dynamic=dynamic)
    return _ov().convert_model(program), is_dynamic


def _save(ov_model: Any, path: Path, meta: dict[str, str]) -> None:
    """Write IR atomically (a temporary pair renamed into place), weights in fp32."""
    ov = _ov()
    for key, value in meta.items():
        ov_model.set_rt_info(str(value), ["seglab", key])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.xml")
    ov.save_model(ov_model, str(tmp), compress_to_fp16=False)
    os.replace(tmp.with_suffix(".bin"), path.with_suffix(".bin"))
    os.replace(tmp, path)


def _read_meta(ov_model: Any) -> dict[str, str]:
    return {
        k: ov_model.get_rt_info(["seglab", k]).astype(str)
        for k in _KEYS
        if ov_model.has_rt_info(["seglab", k])
    }


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "", "None") else None


class OpenVinoRunner(Runner):
    """A network compiled by OpenVINO for the CPU (build with :func:`~seglab.inference.accelerate`
    or open a saved IR with :meth:`load`)."""

    backend = "openvino"

    def __init__(
        self, facts: ModelFacts, precision: str, cache: ShapeCache, threads: int | None, path: Path | None
    ) -> None:
        super().__init__(facts, precision=precision, path=path)
        self._cache = cache
        self._compiled: dict[int, Any] = {}
        self._config = {
            "INFERENCE_PRECISION_HINT": _HINT[precision],
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "PERFORMANCE_HINT": "LATENCY",
        }

    @property
    def dynamic(self) -> bool:
        """Whether one compiled graph takes every input size."""
        return self._cache.dynamic

    def _run(self, x: Tensor) -> Tensor:
        ov_model = self._cache.get((int(x.shape[2]), int(x.shape[3])))
        compiled = self._compiled.get(id(ov_model))
        if compiled is None:
            compiled = _ov().Core().compile_model(ov_model, "CPU", self._config)
            self._compiled[id(ov_model)] = compiled
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        out = compiled(arr)[0]  # (N, K, h', w'), a copy owned by the caller
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        precision: str,
        shape: tuple[int, int, int, int],
        *,
        calibration: CalibrationSource,
        path: Path | None,
        threads: int | None,
    ) -> OpenVinoRunner:
        """Convert (and quantise) ``model``, reusing and writing ``path`` when given."""
        quantized = "int8" if precision == "int8" else "none"
        print_ = fingerprint(model) if path is not None else ""
        if path is not None and path.is_file():
            saved = _ov().Core().read_model(str(path))
            meta = _read_meta(saved)
            if not meta:
                raise InvalidValueError(
                    f"{path} is an OpenVINO model not written by seglab; pass another path (it would be "
                    "overwritten)."
                )
            if meta.get("fingerprint") == print_ and meta.get("quantized") == quantized:
                return cls._from_saved(saved, meta, precision, threads, path, model_facts(model))
        ov_model, dynamic = _convert(model, shape, dynamic=True)
        if precision == "int8":
            batches = calibration.batches()
            if batches is None:
                raise InvalidValueError(
                    "precision='int8' needs calibration tiles (calibration=[...] or seglab.inference."
                    "calibration_tiles(dataset, 300, tile)); none were given."
                )
            ov_model = quantize_openvino(ov_model, batches)
        facts = model_facts(model)
        hw = (shape[2], shape[3])
        if dynamic or precision == "int8":
            cache = ShapeCache(None)
            cache.items[None if dynamic else hw] = ov_model
        else:
            cache = ShapeCache(lambda size: _convert(model, (shape[0], shape[1], *size), dynamic=False)[0])
            cache.items[hw] = ov_model
        if path is not None:
            meta = {"fingerprint": print_, "quantized": quantized, "format": "1"}
            meta.update(
                size_divisor=facts.size_divisor, in_channels=facts.in_channels, num_classes=facts.num_classes
            )
            _save(ov_model, path, {k: str(v) for k, v in meta.items()})
        return cls(facts, precision, cache, threads, path)

    @classmethod
    def _from_saved(
        cls,
        saved: Any,
        meta: dict[str, str],
        precision: str,
        threads: int | None,
        path: Path,
        facts: ModelFacts,
    ) -> OpenVinoRunner:
        shape = saved.inputs[0].get_partial_shape()
        cache = ShapeCache(None)
        if shape.is_dynamic and shape[2].is_dynamic:
            cache.items[None] = saved
        else:
            cache.items[(shape[2].get_length(), shape[3].get_length())] = saved
        return cls(facts, precision, cache, threads, path)

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, precision: str | None = None, threads: int | None = None
    ) -> OpenVinoRunner:
        """Open an IR written by :func:`~seglab.inference.accelerate` (``path=...``) without the model.

        Args:
            path: the ``.xml`` file (its ``.bin`` beside it).
            precision: ``"fp32"`` or ``"bf16"`` for a float graph (default ``"fp32"``); an int8
                graph is always ``"int8"``.
            threads: CPU threads (default: ``torch.get_num_threads()``).
        """
        path = Path(path)
        if not path.is_file():
            raise MissingFileError(
                f"OpenVINO model not found: {os.fspath(path)!r} (write one with accelerate(..., path=))."
            )
        saved = _ov().Core().read_model(str(path))
        meta = _read_meta(saved)
        prec = "int8" if meta.get("quantized") == "int8" else (precision or "fp32")
        out_shape = saved.outputs[0].get_partial_shape()
        fixed_out = None if out_shape.is_dynamic else (out_shape[2].get_length(), out_shape[3].get_length())
        facts = ModelFacts(
            size_divisor=_int(meta.get("size_divisor")) or 1,
            in_channels=_int(meta.get("in_channels")),
            num_classes=_int(meta.get("num_classes")),
            output_shape=(lambda hw: fixed_out) if fixed_out is not None else None,
        )
        return cls._from_saved(saved, meta, prec, threads, path, facts)
