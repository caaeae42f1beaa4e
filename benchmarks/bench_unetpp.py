"""U-Net++: seglab ``unetpp`` against MONAI ``BasicUNetPlusPlus`` in the same process, plus pruning.

Both models use BatchNorm, ReLU, convolutions without bias before the norm, 2x2 stride-2 transposed
up-convolutions, max-pool down-sampling and four 1x1 deep-supervision heads. Two width settings:

* ``paper``: seglab ``channels=(32, 64, 128, 256, 512)`` (the U-Net++ paper) against MONAI
  ``features=(32, 64, 128, 256, 512, 32)``. The one remaining difference is MONAI's: its level-0
  up-convolutions keep 64 channels (``halves=False``), so its top-row nodes read 32 more input
  channels (more parameters and FLOPs, printed in the rows).
* ``same``: ``(32, 32, 64, 128, 256)``, MONAI's default features. Here the two networks are the same
  architecture (equal parameter counts, checked; equal outputs for mapped weights are tested in
  ``tests/models/test_unetpp.py``), so the ratio compares implementations alone.

Rows: a training step (forward with all four heads, BCE summed over the heads, backward, SGD step)
and inference (``eval()``, ``torch.inference_mode``, the single output), one channels-last ablation
row, then seglab's pruned sub-networks ``L4..L1`` at 1x1x256x256, each timed alternately against
the full model (the "peer" column; the ratio is the speed-up of pruning), with FLOPs per image
counted by ``torch.utils.flop_counter.FlopCounterMode``. ``--quick``: 32x32 inputs.

``SEGLAB_BENCH_DEVICE=cuda`` runs the same rows on a GPU (larger batches); the default is the CPU.
"""

from __future__ import annotations

import copy
import os
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.harness import Result, benchmark, compare
from seglab.models.unetpp import UNetPlusPlus

PAPER = (32, 64, 128, 256, 512)
SAME = (32, 32, 64, 128, 256)


def _device() -> torch.device:
    dev = torch.device(os.environ.get("SEGLAB_BENCH_DEVICE", "cpu"))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return dev


def _models(channels: tuple[int, ...], dev: torch.device) -> tuple[nn.Module, nn.Module]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from monai.networks.nets import BasicUNetPlusPlus
    ours = UNetPlusPlus(in_channels=1, num_classes=1, channels=channels)
    peer = BasicUNetPlusPlus(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        features=(*channels, channels[0]),
        deep_supervision=True,
        act="relu",
        norm="batch",
        bias=False,
    )
    return ours.to(dev), peer.to(dev)


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _gflops(fn, *args) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn(*args)
    return counter.get_total_flops() / 1e9


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, ours: bool):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def step() -> None:
        if ours:
            res = model(x, aux=True)
            outs = [*res.aux, res.out]
        else:
            outs = model(x)
        loss = sum(F.binary_cross_entropy_with_logits(o, y) for o in outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _infer(model: nn.Module, x: torch.Tensor):
    model.eval()

    def run() -> None:
        with torch.inference_mode():
            model(x)

    return run


def _pruning_rows(size: int, dev: torch.device, reps: dict[str, int]) -> list[Result]:
    """Each sub-network ``L4..L1`` of the paper-width model against the full model, alternating."""
    full, _ = _models(PAPER, dev)
    full.eval()
    x1 = torch.randn(1, 1, size, size, device=dev)
    full_gflops = _gflops(full, x1)
    rows = []
    for level in (4, 3, 2, 1):
        sub = copy.deepcopy(full).prune(level).eval()
        r = compare(
            f"inference pruned L{level} 1x{size}x{size}",
            _infer(sub, x1),
            _infer(full, x1),
            items=1,
            peer_name="full model",
            **reps,
        )
        r.extra = {"gflops": round(_gflops(sub, x1), 2), "full_gflops": round(full_gflops, 2)}
        rows.append(r)
    return rows


@benchmark(
    "unetpp",
    help="U-Net++ vs MONAI BasicUNetPlusPlus (train step, inference); pruned L1..L4 vs the full model; FLOPs",
    peers=("monai",),
)
def bench_unetpp(quick: bool) -> list[Result]:
    dev = _device()
    cuda = dev.type == "cuda"
    size = 32 if quick else 256
    train_batch, infer_batch = (8, 8) if cuda and not quick else (2, 1)
    reps = {"warmup": 5, "repeat": 30} if cuda else {}
    rows: list[Result] = []
    for tag, channels in (("same", SAME), ("paper", PAPER)):
        ours, peer = _models(channels, dev)
        n_ours, n_peer = _n_params(ours), _n_params(peer)
        if tag == "same" and n_ours != n_peer:
            raise RuntimeError(f"expected identical architectures, got {n_ours} vs {n_peer} parameters")
        x = torch.randn(train_batch, 1, size, size, device=dev)
        y = (torch.rand(train_batch, 1, size, size, device=dev) > 0.5).float()
        r = compare(
            f"train step {tag} {channels} b{train_batch}",
            _train_step(ours, x, y, True),
            _train_step(peer, x, y, False),
            items=train_batch,
            peer_name="monai",
            **reps,
        )
        r.extra = {"params": n_ours, "peer_params": n_peer}
        if not rows:
            r.extra["device"] = (
                torch.cuda.get_device_name(dev) if cuda else f"cpu, {torch.get_num_threads()} threads"
            )
        rows.append(r)
        xi = torch.randn(infer_batch, 1, size, size, device=dev)
        r = compare(
            f"inference {tag} {channels} b{infer_batch}",
            _infer(ours, xi),
            _infer(peer, xi),
            items=infer_batch,
            peer_name="monai",
            **reps,
        )
        x1 = xi[:1]
        r.extra = {"gflops": round(_gflops(ours, x1), 2), "peer_gflops": round(_gflops(peer, x1), 2)}
        rows.append(r)
        if tag == "paper":
            # channels-last ablation (both models): kept only as information, not a default
            ours_cl = ours.to(memory_format=torch.channels_last)
            peer_cl = peer.to(memory_format=torch.channels_last)
            xcl = xi.contiguous(memory_format=torch.channels_last)
            rows.append(
                compare(
                    f"inference {tag} channels_last b{infer_batch}",
                    _infer(ours_cl, xcl),
                    _infer(peer_cl, xcl),
                    items=infer_batch,
                    peer_name="monai",
                    **reps,
                )
            )
    return rows + _pruning_rows(size, dev, reps)
