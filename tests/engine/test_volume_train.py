"""A 3-D model trains end to end on a folder of NIfTI volumes through the one trainer: 3-D patches
for training, whole volumes normalised (not cropped) for validation, a run report, and a
prediction written back as NIfTI on the input's grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from seglab.data.nifti import load_volume, write_nifti
from seglab.engine.config import TrainConfig
from seglab.engine.predict import predict_files
from seglab.engine.trainer import Trainer


def _volumes(root: Path, n: int = 6, shape: tuple[int, int, int] = (12, 20, 18)) -> None:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = np.zeros(shape, np.uint8)
        z, y, x = (int(rng.integers(3, s - 3)) for s in shape)
        mask[z - 2 : z + 3, y - 3 : y + 4, x - 3 : x + 4] = 1  # a bright box in noise
        image = (rng.normal(100, 10, shape) + 60 * mask).astype(np.int16)
        write_nifti(root / "images" / f"v{i}.nii.gz", image, np.diag([1.0, 1.0, 2.0, 1.0]))
        write_nifti(root / "masks" / f"v{i}.nii.gz", mask, np.diag([1.0, 1.0, 2.0, 1.0]))


def test_a_3d_unet_trains_validates_and_predicts_nifti(tmp_path: Path) -> None:
    _volumes(tmp_path / "vols")
    cfg = TrainConfig.from_dict(
        {
            "model": {"name": "unet", "options": {"spatial_dims": 3, "base_channels": 4, "depth": 2}},
            "data": {
                "name": str(tmp_path / "vols"), "crop": 8, "batch_size": 2, "samples_per_epoch": 4,
                "augment": {"spatial_dims": 3, "foreground_prob": 0.5},
            },
            "epochs": 2, "out": str(tmp_path / "run"), "device": "cpu", "quiet": True, "recipe": "none",
        }
    )  # fmt: skip
    Trainer(cfg).fit()
    run = tmp_path / "run"
    assert (run / "best.pt").is_file() and (run / "report.html").is_file()
    src = tmp_path / "vols" / "images" / "v0.nii.gz"
    predict_files([src], tmp_path / "pred", checkpoint=run / "best.pt")
    mask, image = load_volume(tmp_path / "pred" / "v0_mask.nii.gz"), load_volume(src)
    assert mask.data.shape == image.data.shape and set(np.unique(mask.data)) <= {0, 1}
    np.testing.assert_allclose(mask.affine, image.affine)
