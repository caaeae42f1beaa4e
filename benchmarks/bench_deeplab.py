"""DeepLab v3 vs torchvision and DeepLab v3+ vs smp: same work, same process, batch 4, 3x256x256.

* ``deeplabv3`` (ResNet-50, output stride 8, 21 classes) against torchvision's
  ``deeplabv3_resnet50(weights=None, weights_backbone=None)`` (also ResNet-50 at output stride 8, 21
  classes, no aux head). Same encoder and ASPP; seglab follows the paper's head (no 3x3 conv after
  ASPP: 1.5% fewer parameters, ~2% fewer FLOPs); the ``head_conv=True`` row times torchvision's
  exact layer list.
* ``deeplabv3plus`` (ResNet-34, output stride 16, 1 class) against smp's
  ``DeepLabV3Plus("resnet34", encoder_weights=None)``. Both use separable ASPP and decoder convs;
  smp puts one extra separable conv after ASPP (at stride 16) and one in the decoder, seglab two in
  the decoder (the paper); smp's ASPP rates are (12, 24, 36), seglab's (6, 12, 18) at stride 16.
  The parameter counts agree, but the paper's layout costs ~3% more FLOPs (reported per row). The
  ``light`` row builds smp's exact layer list (``decoder_layout="light"``, rates (12, 24, 36)).

seglab's ResNet-encoder models keep their weights and activations in the ``channels_last`` memory
format by default (``channels_last=True``; oneDNN runs these batch-norm networks markedly faster
that way), while the peers run as constructed (contiguous). The ``both channels_last`` rows give the
peer the same layout (weights converted, input converted inside its timed call, as seglab's
forward does) and so isolate the architecture and implementation from the layout.

Rows: inference (``torch.inference_mode``, eval) and a train step (forward + cross-entropy or BCE
+ backward + SGD step). These networks are heavy on a CPU: few repeats. ``--quick``: batch 2,
3x32x32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import seglab
from benchmarks.harness import Result, benchmark, compare


class _Logits(nn.Module):
    """torchvision's segmentation models return a dict; time the same call, keep ``"out"``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)["out"]


class _ChannelsLast(nn.Module):
    """A peer given seglab's default layout: ``channels_last`` weights, the input converted."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x.contiguous(memory_format=torch.channels_last)).contiguous()


def _train_step(model: nn.Module, x: Tensor, y: Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    multiclass = y.dtype == torch.long

    def step() -> None:
        model.train()
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = F.cross_entropy(out, y) if multiclass else F.binary_cross_entropy_with_logits(out, y)
        loss.backward()
        opt.step()

    return step


def _infer(model: nn.Module, x: Tensor) -> Callable[[], None]:
    def run() -> None:
        model.eval()
        with torch.inference_mode():
            model(x)

    return run


def _pair(
    name: str,
    ours: nn.Module,
    peer: nn.Module,
    peer_name: str,
    x: Tensor,
    y: Tensor,
    *,
    warmup: int,
    repeat: int,
) -> list[Result]:
    rows = [
        compare(f"{name} inference", _infer(ours, x), _infer(peer, x), items=len(x), peer_name=peer_name,
                warmup=warmup, repeat=repeat),
        compare(f"{name} train step", _train_step(ours, x, y), _train_step(peer, x, y), items=len(x),
                peer_name=peer_name, warmup=warmup, repeat=repeat),
    ]  # fmt: skip
    n_ours = sum(p.numel() for p in ours.parameters())
    n_peer = sum(p.numel() for p in peer.parameters())
    rows[0].extra.update(params_seglab=n_ours, params_peer=n_peer)
    return rows


@benchmark(
    "deeplab",
    help="deeplabv3 (R50, OS 8) vs torchvision; deeplabv3plus (R34) vs smp; batch 4, 3x256x256",
    peers=("torchvision", "segmentation_models_pytorch"),
)
def bench_deeplab(quick: bool) -> list[Result]:
    import segmentation_models_pytorch as smp
    from torchvision.models.segmentation import deeplabv3_resnet50

    warmup, repeat = 1, 5
    batch, size = (2, 32) if quick else (4, 256)  # batch norm in training needs 2
    torch.manual_seed(0)
    x = torch.randn(batch, 3, size, size)
    y21 = torch.randint(0, 21, (batch, size, size))
    y1 = (torch.rand(batch, 1, size, size) > 0.5).float()
    kw = {"warmup": warmup, "repeat": repeat}
    rows: list[Result] = []

    tv = _Logits(deeplabv3_resnet50(weights=None, weights_backbone=None))
    ours = seglab.create_model("deeplabv3", num_classes=21, encoder="resnet50", output_stride=8)
    rows += _pair("deeplabv3 R50 OS8", ours, tv, "torchvision", x, y21, **kw)
    same = seglab.create_model(
        "deeplabv3", num_classes=21, encoder="resnet50", output_stride=8, head_conv=True
    )
    rows += _pair("deeplabv3 R50 OS8 head_conv", same, tv, "torchvision", x, y21, **kw)
    rows += _pair(
        "deeplabv3 R50 OS8 both channels_last", ours, _ChannelsLast(tv), "torchvision", x, y21, **kw
    )
    del tv, ours, same

    peer = smp.DeepLabV3Plus("resnet34", encoder_weights=None)
    ours = seglab.create_model("deeplabv3plus", num_classes=1, encoder="resnet34")
    rows += _pair("deeplabv3plus R34", ours, peer, "smp", x, y1, **kw)
    # smp's exact layer list: its decoder layout and its ASPP rates
    same = seglab.create_model(
        "deeplabv3plus", num_classes=1, encoder="resnet34", decoder_layout="light", rates=(12, 24, 36)
    )
    rows += _pair("deeplabv3plus R34 light", same, peer, "smp", x, y1, **kw)
    for r, m in ((rows[-4], ours), (rows[-2], same)):
        r.extra.update(gflops_seglab=_gflops(m, x[:1]), gflops_peer=_gflops(peer, x[:1]))
    rows += _pair("deeplabv3plus R34 both channels_last", ours, _ChannelsLast(peer), "smp", x, y1, **kw)
    return rows


def _gflops(model: nn.Module, x: Tensor) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return round(counter.get_total_flops() / 1e9, 2)
