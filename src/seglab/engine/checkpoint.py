"""Checkpoints: written atomically, read without executing code, enough to resume exactly.

A seglab checkpoint is a ``torch.save`` zip file holding one dict. A run writes two:

* ``best.pt`` holds the weights and what prediction needs (:data:`BEST_KEYS`), about a third of
  ``last.pt`` with AdamW (whose two moment buffers are each as large as the weights);
* ``last.pt`` holds :data:`CHECKPOINT_KEYS`: the same plus the optimiser, schedule, scaler, RNG
  states and history, so ``--resume runs/<name>/last.pt`` continues exactly.

==================  =========================================================================
``seglab_version``  the version that wrote it
``model_name``      registered model name; with ``model_options``, ``in_channels`` and
                    ``num_classes`` it rebuilds the model (:func:`load_model`)
``model_options``   the builder's keyword options (JSON-able)
``in_channels``     input channels
``num_classes``     output channels of the model (1 for binary segmentation)
``mode``            ``"binary"`` or ``"multiclass"``
``class_names``     names of the dataset's classes
``normalization``   :meth:`Normalization.to_dict() <seglab.data.normalize.Normalization.to_dict>`:
                    method, parameters and the training intensity range (older checkpoints:
                    ``{"mean", "std"}``, read as ``dataset``)
``model``           the model's ``state_dict``
``config``          the resolved :class:`~seglab.engine.config.TrainConfig` as a plain dict
``epoch``           epochs completed
``best_score``      best monitored validation score so far
``threshold``       (``best.pt`` of ``seglab demo``) the probability threshold chosen on validation
``optimizer``       (``last.pt``) optimiser ``state_dict``
``scheduler``       (``last.pt``) learning-rate scheduler ``state_dict``
``scaler``          (``last.pt``) AMP gradient scaler ``state_dict`` (``{}`` without fp16)
``rng``             (``last.pt``) Python, NumPy, torch and CUDA generator states
``history``         (``last.pt``) the metrics rows written so far (one dict per epoch)
==================  =========================================================================

Writing goes to a temporary file in the same directory, ``fsync``, ``os.replace`` and an ``fsync`` of
the folder, so a crash never leaves a half-written ``last.pt`` (and the temporary file a ``kill -9``
leaves behind is removed when the next run starts in that folder). Reading uses ``torch.load(weights_only=True)``: only
tensors and plain containers are accepted, and a file that would run code when unpickled is
refused with :class:`CheckpointError`.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seglab.errors import CheckpointError, InvalidTypeError, InvalidValueError, MissingFileError

__all__ = [
    "BEST_KEYS",
    "CHECKPOINT_KEYS",
    "PREDICTION_KEYS",
    "CheckpointError",
    "get_rng_state",
    "load_checkpoint",
    "load_model",
    "save_checkpoint",
    "set_rng_state",
]

# what prediction needs besides the weights (ONNX files from `seglab export` store these, and the
# calibrated "threshold" when there is one)
PREDICTION_KEYS = (
    "model_name",
    "model_options",
    "in_channels",
    "num_classes",
    "mode",
    "class_names",
    "normalization",
)
BEST_KEYS = ("seglab_version", *PREDICTION_KEYS, "model", "config", "epoch", "best_score")
CHECKPOINT_KEYS = (*BEST_KEYS, "optimizer", "scheduler", "scaler", "rng", "history")

# keys needed to rebuild and run a model (the rest is for resuming)
_MODEL_KEYS = ("model_name", "model_options", "in_channels", "num_classes", "model")


def save_checkpoint(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, ``fsync``, rename,
    ``fsync`` of the folder): a crash or a full disk leaves the previous file intact.

    Args:
        path: destination (parent folders are created).
        state: the checkpoint dict (see the module docstring for the keys); values must be
            tensors or plain Python containers so that :func:`load_checkpoint` can read them with
            ``weights_only=True``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OSError: the file could not be written (full disk, no permission); it names ``path``.

    Example:
        >>> import tempfile, os
        >>> p = save_checkpoint(os.path.join(tempfile.mkdtemp(), "last.pt"), {"epoch": 1})
        >>> load_checkpoint(p, require=())["epoch"]
        1
    """
    from seglab._files import atomic_write

    path = Path(path)
    with atomic_write(path, "wb") as f:
        torch.save(dict(state), f)
    return path


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device | None = "cpu",
    *,
    require: tuple[str, ...] = _MODEL_KEYS,
) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: a checkpoint never executes code.

    Args:
        path: a file written by :func:`save_checkpoint` (``best.pt``, ``last.pt``).
        map_location: where tensors go (``"cpu"`` by default).
        require: keys that must be present (default: those needed to rebuild the model).

    Returns:
        The checkpoint dict.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is not a ``torch.save`` archive, is corrupt (every member's CRC-32
            is verified before loading: a flipped bit or a truncated copy is refused, not loaded as
            slightly wrong weights), holds objects other than tensors and plain containers (a
            pickle that would run code is refused), or lacks required keys.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"Checkpoint not found: {path}")
    _verify_archive(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except RuntimeError as err:  # torch's zip reader on a damaged archive
        if "PytorchStreamReader" not in str(err):
            raise
        raise CheckpointError(
            f"{path} is damaged: torch cannot read it ({str(err).splitlines()[0]}); use another copy "
            "(last.pt or best.pt of the run)."
        ) from None
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"Refusing to load {path}: it contains Python objects other than tensors and plain containers, "
            "and seglab loads checkpoints with weights_only=True so that a file can never run code. "
            f"Only load files you trust; re-save the weights as a plain dict if this one is yours. ({err.__class__.__name__})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path} does not hold a seglab checkpoint dict (found {type(state).__name__})."
        )
    missing = [k for k in require if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a seglab checkpoint: missing {', '.join(missing)} "
            f"(found keys: {', '.join(sorted(map(str, state))) or 'none'})."
        )
    return state


def _verify_archive(path: Path) -> None:
    """Refuse a file that is not a zip archive, or whose members fail their CRC-32 check.

    ``torch.load`` does not check the CRCs, so a bit flipped on disk or in a copy would load as
    slightly wrong weights. Checking reads the file once more (about 0.6 s per GB).
    """
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            if fh.read(4) == b"PK\x03\x04":
                raise CheckpointError(
                    f"{path} is damaged: a zip archive without its directory (a truncated copy?); use another "
                    "copy (last.pt or best.pt of the run)."
                )
        raise CheckpointError(
            f"{path} is not a checkpoint written by torch.save (not a zip archive); "
            "pass a best.pt or last.pt from a seglab run directory."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError) as err:
        raise CheckpointError(
            f"{path} is damaged: its zip archive cannot be read ({err}); use another copy (last.pt or "
            "best.pt of the run)."
        ) from None
    if bad is not None:
        raise CheckpointError(
            f"{path} is corrupt: its entry {bad!r} fails the CRC-32 check (the file changed after it was "
            "written); use another copy (last.pt or best.pt of the run)."
        )


def load_model(
    path: str | Path, *, map_location: str | torch.device | None = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint and load its weights.

    Args:
        path: a seglab checkpoint.
        map_location: where the weights go.

    Returns:
        ``(model, meta)``: the model in eval mode, and the checkpoint's other entries
        (``mode``, ``class_names``, ``normalization``, ``config``, ``epoch``, ``history``, ...)
        without the optimiser, scheduler, scaler and RNG states.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: see :func:`load_checkpoint`; or the weights do not fit the model. The model
            is first built on PyTorch's ``meta`` device (no memory) and its tensor shapes compared
            with the saved weights, so ``model_options`` edited to ask for a huge model are refused
            before anything is allocated.

    Example:
        >>> model, meta = load_model("runs/demo/best.pt")  # doctest: +SKIP
        >>> meta["normalization"]["mean"]  # doctest: +SKIP
        [523.1]
    """
    state = load_checkpoint(path, map_location=map_location)
    build = _model_builder(path, state)
    _check_model_size(path, state, build)
    model = build()
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"The weights in {path} do not fit model {state['model_name']!r}: {err}"
        ) from None
    model.eval()
    skip = {"model", "optimizer", "scheduler", "scaler", "rng"}
    meta = {k: v for k, v in state.items() if k not in skip}
    return model, meta


def _model_builder(path: Path | str, state: Mapping[str, Any]) -> Callable[[], nn.Module]:
    """A function building the checkpoint's model (on the current default device) from its options."""
    from seglab.models import create_model

    options = dict(state.get("model_options") or {})
    # Initial weights (a local pretrained file) only mattered at the start of training: the checkpoint
    # holds the trained ones, and the file may not exist on the machine that loads the checkpoint.
    options.pop("weights", None)
    try:
        in_channels, num_classes = int(state["in_channels"]), int(state["num_classes"])
    except (TypeError, ValueError):
        raise CheckpointError(
            f"{path}: in_channels and num_classes must be integers; got {state['in_channels']!r} and "
            f"{state['num_classes']!r}."
        ) from None

    def build() -> nn.Module:
        return create_model(state["model_name"], in_channels=in_channels, num_classes=num_classes, **options)

    return build


# model tensors that are not saved (non-persistent buffers) may add this much beyond the saved weights
_UNSAVED_BYTES = 64 << 20


def _check_model_size(path: Path | str, state: Mapping[str, Any], build: Callable[[], nn.Module]) -> None:
    """Build the model on the ``meta`` device (no memory) and refuse it unless its tensors are the
    saved ones: same names and shapes, and no more than ``_UNSAVED_BYTES`` of unsaved buffers."""
    saved = state["model"]
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{path}: 'model' must be a state dict; got {type(saved).__name__}.")
    try:
        with torch.device("meta"):
            skeleton = build()
    except (InvalidValueError, InvalidTypeError) as err:
        raise CheckpointError(
            f"{path}: its model_options cannot rebuild {state['model_name']!r}: {err}"
        ) from None
    expected = skeleton.state_dict()
    for key, tensor in expected.items():
        got = saved.get(key)
        if isinstance(got, torch.Tensor) and got.shape != tensor.shape:
            raise CheckpointError(
                f"The weights in {path} do not fit model {state['model_name']!r} built from its model_options "
                f"{dict(state.get('model_options') or {})}: {key} is {tuple(got.shape)} in the file but "
                f"{tuple(tensor.shape)} in the model (were the options edited?)."
            )
    model_bytes = sum(t.numel() * t.element_size() for t in [*skeleton.parameters(), *skeleton.buffers()])
    saved_bytes = sum(t.numel() * t.element_size() for t in saved.values() if isinstance(t, torch.Tensor))
    if model_bytes > saved_bytes + _UNSAVED_BYTES:
        raise CheckpointError(
            f"{path}: model {state['model_name']!r} built from its model_options needs {model_bytes / 2**20:,.0f} MiB "
            f"but the file holds {saved_bytes / 2**20:,.0f} MiB of weights; refusing to allocate it."
        )


# -- random generator states in a weights_only-loadable form -------------------------------------------
def get_rng_state() -> dict[str, Any]:
    """The states of Python's, NumPy's, torch's and CUDA's global generators, as tensors and plain values."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)  # noqa: NPY002 - the global generator is what we save
    state: dict[str, Any] = {
        "python": {
            "version": int(version),
            "state": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss,
        },
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else [],
    }
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore the generator states saved by :func:`get_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002 - restoring the global generator
        {
            "bit_generator": npy["bit_generator"],
            "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": int(npy["pos"])},
            "has_gauss": int(npy["has_gauss"]),
            "gauss": float(npy["gauss"]),
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
