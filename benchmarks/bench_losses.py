"""Losses vs the peers (MONAI, smp, torchvision, pytorch-msssim): forward + backward.

Two shapes, as the losses issue asks: a batch of 4 binary ``1x256x256`` maps and a batch of 4
four-class ``4x256x256`` maps. Each call computes the loss and its gradient with respect to the
logits. Every library starts from what a segmentation dataset yields, an ``(N, H, W)`` int64
mask; a peer that needs another form (a float ``(N, 1, H, W)`` mask for MONAI, torchvision and
pytorch-msssim, a one-hot float mask for pytorch-msssim's multiclass case) converts it inside its
timed call, as a training loop using it would have to.

Run: ``python -m benchmarks losses`` (``--quick`` for a smoke run: 2 images of 176x176). The environment variable
``SEGLAB_BENCH_DEVICE=cuda`` runs the same entries on the GPU.

Allocator. A call here takes about a millisecond and touches a few freshly allocated megabytes.
With glibc's default (dynamic) thresholds, whether those pages are still mapped or fault in
again (a few microseconds per 4 KiB page) depends on what the allocator happened to return to the
OS after the previous calls, of either library: the same row then moves by up to 2x between
processes. The entries therefore run in a child process with glibc told to keep freed memory
(``MALLOC_TRIM_THRESHOLD_`` 1 GiB, ``MALLOC_MMAP_THRESHOLD_`` 512 MiB), the same for seglab and
every peer, which measures the arithmetic and the library overhead.
``SEGLAB_BENCH_MALLOC=default`` runs them with the default allocator settings in this process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import results
from benchmarks.harness import Result, benchmark, compare
from seglab import losses as L

K = 4  # classes of the multiclass case


def _grad_fn(
    loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, inner: int = 1
) -> Callable[[], object]:
    """A call that runs forward and backward (gradient w.r.t. the logits) ``inner`` times.

    A single Dice or focal call takes about a millisecond on the CPU, where one timing is at the
    mercy of the scheduler; timing blocks of ``inner`` calls steadies the medians.
    """
    leaf = x.detach().clone().requires_grad_()

    def run() -> object:
        for _ in range(inner):
            out = torch.autograd.grad(loss_fn(leaf), leaf)[0]
        return out

    return run


def _data(device: str, n: int, h: int, w: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # blobby masks, so MS-SSIM sees structure rather than noise
    blob = F.avg_pool2d(torch.rand(n, 1, h, w, generator=g), 15, 1, 7)
    tb = (blob[:, 0] > blob.mean()).long()  # (N, H, W) int64 {0, 1}
    blobs = F.avg_pool2d(torch.rand(n, K, h, w, generator=g), 15, 1, 7)
    tm = blobs.argmax(1)  # (N, H, W) int64 class ids
    data = {
        "xb": torch.randn(n, 1, h, w, generator=g),
        "tb": tb,
        "xm": torch.randn(n, K, h, w, generator=g),
        "tm": tm,
    }
    return {k: v.to(device) for k, v in data.items()}


_STEADY_MALLOC = {"MALLOC_TRIM_THRESHOLD_": str(1 << 30), "MALLOC_MMAP_THRESHOLD_": str(1 << 29)}


@benchmark(
    "losses",
    help="Dice, focal, MS-SSIM, focal+ms_ssim+iou vs MONAI/smp/torchvision/pytorch-msssim (fwd+bwd)",
    peers=("monai", "segmentation_models_pytorch", "pytorch_msssim", "torchvision"),
)
def bench_losses(quick: bool) -> list[Result]:
    mode = os.environ.get("SEGLAB_BENCH_MALLOC", "steady")
    if mode not in ("steady", "default"):
        raise ValueError(f"SEGLAB_BENCH_MALLOC must be 'steady' or 'default'; got {mode!r}.")
    if mode == "steady" and os.environ.get("MALLOC_TRIM_THRESHOLD_") is None and not quick:
        return _in_steady_child(quick)  # --quick (a smoke run) stays in this process: no child start-up
    rows = _losses(quick)
    rows[0].extra["malloc"] = "steady" if os.environ.get("MALLOC_TRIM_THRESHOLD_") else "default"
    return rows


def _in_steady_child(quick: bool) -> list[Result]:
    """Run the entries in a child process with glibc's steady allocator settings."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "losses.json"
        cmd = [sys.executable, "-m", "benchmarks", "losses", "--json", str(out)]
        cmd += ["--threads", str(torch.get_num_threads())] + (["--quick"] if quick else [])
        root = Path(__file__).resolve().parent.parent
        subprocess.run(
            cmd, env={**os.environ, **_STEADY_MALLOC}, cwd=root, check=True, stdout=subprocess.DEVNULL
        )
        (entry,) = results.read(out)["entries"]
    return [Result.from_dict(row) for row in entry["rows"]]


def _losses(quick: bool) -> list[Result]:
    import monai.losses as ml
    import pytorch_msssim
    import segmentation_models_pytorch as smp
    from torchvision.ops import sigmoid_focal_loss

    device = os.environ.get("SEGLAB_BENCH_DEVICE", "cpu")
    n, h, w = (2, 176, 176) if quick else (4, 256, 256)  # pytorch-msssim needs > 160
    d = _data(device, n, h, w)
    kw = {"warmup": 2, "repeat": 15}
    xb, tb, xm, tm = d["xb"], d["tb"], d["xm"], d["tm"]

    def tb_f() -> torch.Tensor:  # the float (N, 1, H, W) mask MONAI / torchvision / pytorch-msssim take
        return tb.unsqueeze(1).float()

    def tm_onehot() -> torch.Tensor:  # pytorch-msssim compares channel by channel
        return F.one_hot(tm, K).permute(0, 3, 1, 2).float()

    tm_1 = tm.unsqueeze(1)  # (N, 1, H, W) int64: MONAI's to_onehot_y input (a view, no copy)
    items = n
    rows: list[Result] = []

    def row(name: str, ours: Callable, peer: Callable, x: torch.Tensor, peer_name: str) -> None:
        inner = 1 if quick or "ms_ssim" in name else 10  # blocks of ~10 ms for the fast losses
        fa, fb = _grad_fn(ours, x, inner), _grad_fn(peer, x, inner)
        rows.append(compare(name, fa, fb, items=items * inner, peer_name=peer_name, **kw))

    # -- Dice -------------------------------------------------------------------------------------
    dice_b = L.DiceLoss(smooth=1.0)
    monai_dice_b = ml.DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    smp_dice_b = smp.losses.DiceLoss("binary", smooth=0.5)  # smp's smooth s == seglab's 2s
    row(f"dice binary {n}x1x{h}", lambda x: dice_b(x, tb), lambda x: monai_dice_b(x, tb_f()), xb, "monai")
    row(f"dice binary {n}x1x{h}", lambda x: dice_b(x, tb), lambda x: smp_dice_b(x, tb), xb, "smp")
    dice_m = L.DiceLoss(smooth=1.0, mode="multiclass")
    monai_dice_m = ml.DiceLoss(softmax=True, to_onehot_y=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    smp_dice_m = smp.losses.DiceLoss("multiclass", smooth=0.5)
    row(f"dice multiclass {n}x{K}x{h}", lambda x: dice_m(x, tm), lambda x: monai_dice_m(x, tm_1), xm, "monai")
    row(f"dice multiclass {n}x{K}x{h}", lambda x: dice_m(x, tm), lambda x: smp_dice_m(x, tm), xm, "smp")

    # -- Focal ------------------------------------------------------------------------------------
    focal_b = L.FocalLoss(alpha=0.25, gamma=2.0)
    row(
        f"focal binary {n}x1x{h}",
        lambda x: focal_b(x, tb),
        lambda x: sigmoid_focal_loss(x, tb_f(), alpha=0.25, gamma=2.0, reduction="mean"),
        xb,
        "torchvision",
    )
    smp_focal_b = smp.losses.FocalLoss("binary", alpha=0.25, gamma=2.0)
    row(f"focal binary {n}x1x{h}", lambda x: focal_b(x, tb), lambda x: smp_focal_b(x, tb), xb, "smp")
    monai_focal_b = ml.FocalLoss(alpha=0.25, gamma=2.0, use_softmax=False)
    row(f"focal binary {n}x1x{h}", lambda x: focal_b(x, tb), lambda x: monai_focal_b(x, tb_f()), xb, "monai")
    focal_m = L.FocalLoss(alpha=None, gamma=2.0, mode="multiclass")
    monai_focal_m = ml.FocalLoss(gamma=2.0, use_softmax=True, to_onehot_y=True)
    row(
        f"focal multiclass {n}x{K}x{h}",
        lambda x: focal_m(x, tm),
        lambda x: monai_focal_m(x, tm_1),
        xm,
        "monai",
    )
    smp_focal_m = smp.losses.FocalLoss("multiclass", gamma=2.0)  # one-vs-all sigmoid (another definition)
    row(f"focal multiclass {n}x{K}x{h}", lambda x: focal_m(x, tm), lambda x: smp_focal_m(x, tm), xm, "smp")

    # -- MS-SSIM ----------------------------------------------------------------------------------
    msssim_b = L.MSSSIMLoss()
    row(
        f"ms_ssim binary {n}x1x{h}",
        lambda x: msssim_b(x, tb),
        lambda x: 1 - pytorch_msssim.ms_ssim(x.sigmoid(), tb_f(), data_range=1.0),
        xb,
        "pytorch-msssim",
    )
    msssim_m = L.MSSSIMLoss(mode="multiclass")
    row(
        f"ms_ssim multiclass {n}x{K}x{h}",
        lambda x: msssim_m(x, tm),
        lambda x: 1 - pytorch_msssim.ms_ssim(x.softmax(1), tm_onehot(), data_range=1.0),
        xm,
        "pytorch-msssim",
    )

    # -- U-Net 3+ hybrid: focal + ms_ssim + iou ---------------------------------------------------
    hybrid_b = L.build("focal+ms_ssim+iou")
    smp_jac_b = smp.losses.JaccardLoss("binary", smooth=1.0)

    def peer_hybrid_b(x: torch.Tensor) -> torch.Tensor:
        focal = sigmoid_focal_loss(x, tb_f(), alpha=0.25, gamma=2.0, reduction="mean")
        return focal + (1 - pytorch_msssim.ms_ssim(x.sigmoid(), tb_f(), data_range=1.0)) + smp_jac_b(x, tb)

    row(f"focal+ms_ssim+iou binary {n}x1x{h}", lambda x: hybrid_b(x, tb), peer_hybrid_b, xb, "tv+msssim+smp")
    hybrid_m = L.build("focal+ms_ssim+iou", mode="multiclass", focal={"alpha": None})
    smp_jac_m = smp.losses.JaccardLoss("multiclass", smooth=1.0)

    def peer_hybrid_m(x: torch.Tensor) -> torch.Tensor:
        focal = monai_focal_m(x, tm_1)
        msssim = 1 - pytorch_msssim.ms_ssim(x.softmax(1), tm_onehot(), data_range=1.0)
        return focal + msssim + smp_jac_m(x, tm)

    row(
        f"focal+ms_ssim+iou multiclass {n}x{K}x{h}",
        lambda x: hybrid_m(x, tm),
        peer_hybrid_m,
        xm,
        "monai+msssim+smp",
    )
    return rows
