"""Checks on an ONNX file before onnxruntime opens it (private).

onnxruntime answers a file that is not ONNX, or whose external weights sit outside the model's
folder, with a traceback from its C++ core. :func:`check_onnx_file` reads the file's protobuf
(without its external data) and raises one-line seglab errors naming the file and the fix.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seglab.errors import CheckpointError, MissingFileError, missing_extra

__all__ = ["check_onnx_file"]


def check_onnx_file(path: str | os.PathLike[str]) -> None:
    """Refuse a file that is not an ONNX model, or whose external data is missing or escapes its folder.

    External data (weights stored beside the ``.onnx`` file, as ``torch.onnx.export`` does for large
    models) must be a relative path inside the model's folder, symbolic links included, and each
    tensor's ``offset + length`` must lie within its data file.

    Args:
        path: the ``.onnx`` file.

    Raises:
        CheckpointError: not an ONNX model (with a hint when it is a PyTorch checkpoint), or
            external data outside the model's folder or past the end of its file.
        MissingFileError: the file, or an external data file it names, does not exist.
        MissingExtraError: the ``onnx`` package is not installed.

    Example:
        >>> import tempfile, os
        >>> p = os.path.join(tempfile.mkdtemp(), "x.onnx")
        >>> _ = open(p, "w").write("hello")
        >>> try:
        ...     check_onnx_file(p)
        ... except CheckpointError as err:
        ...     print(str(err).split(" (")[0].endswith("x.onnx is not an ONNX model"))
        True
    """
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError:
        raise missing_extra("onnx", "onnx", "Loading an ONNX model") from None
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"ONNX file not found: {path}.")
    if zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is a zip archive, not an ONNX model (a PyTorch checkpoint?); pass it with --checkpoint, "
            "or convert it with `seglab export`."
        )
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as err:
        detail = (str(err).splitlines() or [type(err).__name__])[0]
        raise CheckpointError(
            f"{path} is not an ONNX model (it cannot be parsed: {detail}); pass a file written by `seglab export`."
        ) from None
    if model.ir_version < 1 or not model.HasField("graph") or not model.graph.node:
        raise CheckpointError(
            f"{path} is not an ONNX model (no graph, or no IR version); pass a file written by `seglab export`."
        )
    for tensor in _tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _check_external(path, tensor)


def _tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto of the model: initializers and attribute tensors, in subgraphs and functions too."""
    graphs = [model.graph, *(f for f in model.functions)]
    while graphs:
        graph = graphs.pop()
        yield from getattr(graph, "initializer", ())
        yield from (s.values for s in getattr(graph, "sparse_initializer", ()))
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("g"):
                    graphs.append(attr.g)
                graphs.extend(attr.graphs)


def _check_external(path: Path, tensor: Any) -> None:
    """One externally stored tensor: its data file lies inside the model's folder and holds the bytes."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    folder = path.resolve().parent
    target = (folder / location).resolve()
    if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
        raise CheckpointError(
            f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, outside the model's folder {folder}; "
            "refusing to read it. External data must sit beside the .onnx file (re-export the model, or move "
            "the data file next to it and fix its location)."
        )
    if not target.is_file():
        raise MissingFileError(
            f"{path}: tensor {tensor.name!r} keeps its data in {location!r}, which is missing from {folder}; "
            "copy the data file next to the .onnx file."
        )
    try:
        end = int(info.get("offset") or 0) + int(info.get("length") or 0)
    except ValueError:
        raise CheckpointError(
            f"{path}: tensor {tensor.name!r} has a malformed offset or length for {location!r}; re-export the model."
        ) from None
    if end > target.stat().st_size:
        raise CheckpointError(
            f"{path}: tensor {tensor.name!r} needs bytes up to {end} of {location!r}, which has "
            f"{target.stat().st_size}; the data file is truncated or belongs to another model (re-export it)."
        )
