"""U-Net vs MONAI BasicUNet: the same architecture must not be slower.

seglab ``unet(channels=(32, 32, 64, 128, 256), norm="instance", up="transposed", act="leaky_relu")``
against MONAI ``BasicUNet(spatial_dims=2, features=(32, 32, 64, 128, 256, 32))`` (instance norm with
affine, LeakyReLU, 2x2 transposed-conv up-sampling, max-pool down-sampling): batch 4, 1x256x256,
inference (``torch.inference_mode``) and a train step (forward + BCE loss + backward + Adam step).
``--quick``: batch 1, 1x64x64.
Differences that remain: MONAI's convs carry a bias that the following instance norm cancels
(seglab drops it), and its LeakyReLU slope is 0.1 (seglab's 0.01) — neither changes the work done.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import seglab
from benchmarks.harness import Result, benchmark, compare


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor):
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        loss.backward()
        opt.step()

    return step


def _infer(model: torch.nn.Module, x: torch.Tensor):
    def run() -> None:
        with torch.inference_mode():
            model(x)

    return run


@benchmark(
    "unet", help="seglab unet vs MONAI BasicUNet (same architecture), batch 4, 1x256x256", peers=("monai",)
)
def bench_unet(quick: bool) -> list[Result]:
    from monai.networks.nets import BasicUNet

    batch, size = (1, 64) if quick else (4, 256)
    ours = seglab.create_model(
        "unet",
        in_channels=1,
        num_classes=1,
        channels=(32, 32, 64, 128, 256),
        norm="instance",
        up="transposed",
        act="leaky_relu",
    )
    peer = BasicUNet(spatial_dims=2, in_channels=1, out_channels=1, features=(32, 32, 64, 128, 256, 32))
    x = torch.randn(batch, 1, size, size)
    y = (torch.rand(batch, 1, size, size) > 0.5).float()
    return inference_and_train_rows("unet", ours, peer, x, y, repeat=10)


def inference_and_train_rows(
    name: str, ours: torch.nn.Module, peer: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, repeat: int
) -> list[Result]:
    """``<name> inference`` and ``<name> train step`` (Adam) of seglab against MONAI, alternating;
    the parameter counts go into the first row's details."""
    batch = x.shape[0]
    n_ours = sum(p.numel() for p in ours.parameters())
    n_peer = sum(p.numel() for p in peer.parameters())
    run = {"items": batch, "peer_name": "monai", "repeat": repeat}
    ours.eval()
    peer.eval()
    rows = [compare(f"{name} inference", _infer(ours, x), _infer(peer, x), **run)]
    ours.train()
    peer.train()
    opt_o = torch.optim.Adam(ours.parameters(), 1e-4)
    opt_p = torch.optim.Adam(peer.parameters(), 1e-4)
    rows.append(
        compare(f"{name} train step", _train_step(ours, opt_o, x, y), _train_step(peer, opt_p, x, y), **run)
    )
    rows[0].extra.update(params_seglab=n_ours, params_monai=n_peer)
    return rows
