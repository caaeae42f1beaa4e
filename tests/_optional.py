"""Optional peer libraries and extras in the tests: skip without them, or fail when CI requires them.

Every test that needs a package outside seglab's core dependencies imports it through
:func:`peer`, never through ``pytest.importorskip``::

    from tests._optional import peer

    monai_losses = peer("monai.losses")          # in a test, or at module level

Without the package a plain ``pytest`` skips the test (or the module) and says which package and
extra to install. With ``SEGLAB_REQUIRE_PEERS=1`` in the environment (``make test`` and CI set it)
the same call fails instead, naming the package, so a cross-check can never vanish from CI as
"skipped". At module level the failure is a collection error of that module, which fails the run.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest

REQUIRE_ENV = "SEGLAB_REQUIRE_PEERS"

# top-level module -> (distribution to install, seglab extra that installs it)
PACKAGES: dict[str, tuple[str, str]] = {
    "monai": ("monai", "peers"),
    "segmentation_models_pytorch": ("segmentation-models-pytorch", "peers"),
    "pytorch_msssim": ("pytorch-msssim", "peers"),
    "torchmetrics": ("torchmetrics", "peers"),
    "pycocotools": ("pycocotools", "peers"),
    "skimage": ("scikit-image", "peers"),
    "nibabel": ("nibabel", "nifti"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "onnxscript": ("onnxscript", "onnx"),
    "matplotlib": ("matplotlib", "report"),
    "openvino": ("openvino", "openvino"),
    "nncf": ("nncf", "openvino"),
    "torchao": ("torchao", "pt2e"),
    "timm": ("timm", "timm"),
    "torchvision": ("torchvision", "core dependency"),
}


def required() -> bool:
    """Whether missing peers fail the tests (``SEGLAB_REQUIRE_PEERS=1``) instead of skipping them."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def peer(module: str) -> ModuleType:
    """Import ``module`` from an optional peer library; skip (or fail, see above) without it.

    Args:
        module: a dotted module name whose top-level package is listed in :data:`PACKAGES`.

    Returns:
        The imported module.

    Raises:
        KeyError: the top-level package is not listed in :data:`PACKAGES` (add it there).
    """
    top = module.split(".")[0]
    if top not in PACKAGES:
        raise KeyError(f"{top!r} is not a known optional package; add it to PACKAGES in {__name__}")
    dist, extra = PACKAGES[top]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        cause = f"{type(exc).__name__}: {exc}"
    # outside the except block, so the report shows this message alone, not a chained traceback
    where = f"pip install -e '.[{extra}]'" if extra != "core dependency" else "reinstall seglab"
    if required():
        pytest.fail(
            f"{REQUIRE_ENV}=1 and the peer package {dist!r} is missing ({module} does not import: "
            f"{cause}); install it with {where}",
            pytrace=False,
        )
    pytest.skip(
        f"needs {dist!r} ({where}); {cause}. Set {REQUIRE_ENV}=1 to make this a failure",
        allow_module_level=True,
    )
