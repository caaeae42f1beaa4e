"""3-D U-Net vs MONAI BasicUNet(spatial_dims=3): the same architecture must not be slower.

seglab ``unet(spatial_dims=3, channels=(32, 32, 64, 128, 256), norm="instance", up="transposed",
act="leaky_relu")`` against MONAI ``BasicUNet(spatial_dims=3, features=(32, 32, 64, 128, 256, 32))``
(instance norm with affine, LeakyReLU, 2x2x2 transposed-conv up-sampling, max-pool down-sampling):
batch 2, 1x64³, inference (``torch.inference_mode``) and a train step (forward + BCE loss + backward
+ Adam step). ``--quick``: batch 1, 1x32³.
Differences that remain are those of the 2-D ``unet`` entry: MONAI's convs carry a bias that the
following instance norm cancels (seglab drops it), and its LeakyReLU slope is 0.1 (seglab's 0.01).
"""

from __future__ import annotations

import torch

import seglab
from benchmarks.bench_unet import inference_and_train_rows
from benchmarks.harness import Result, benchmark

WIDTHS = (32, 32, 64, 128, 256)


@benchmark(
    "unet3d",
    help="seglab unet(spatial_dims=3) vs MONAI BasicUNet(spatial_dims=3), same widths, batch 2, 1x64³",
    peers=("monai",),
)
def bench_unet3d(quick: bool) -> list[Result]:
    from monai.networks.nets import BasicUNet

    batch, size = (1, 32) if quick else (2, 64)  # instance norm needs more than 1x1x1 at the bottom
    ours = seglab.create_model(
        "unet",
        in_channels=1,
        num_classes=1,
        spatial_dims=3,
        channels=WIDTHS,
        norm="instance",
        up="transposed",
        act="leaky_relu",
    )
    peer = BasicUNet(spatial_dims=3, in_channels=1, out_channels=1, features=(*WIDTHS, WIDTHS[0]))
    x = torch.randn(batch, 1, size, size, size)
    y = (torch.rand(batch, 1, size, size, size) > 0.5).float()
    rows = inference_and_train_rows("unet3d", ours, peer, x, y, repeat=5)
    rows[0].extra["input"] = f"{batch}x1x{size}³"
    return rows
