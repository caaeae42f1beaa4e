"""U²-Net and U²-Net† against a U-Net of about the same parameter count (no peer library ships U²-Net).

The "seglab" column is the U²-Net variant, the "peer" column is seglab's own ``unet`` (same-padding,
depth 4, batch norm, transposed-conv up-sampling) with ``base_channels`` picked to match the
parameter count: 76 -> 43.76 M next to ``u2net``'s 44.01 M, and 12 -> 1.09 M next to
``u2net_small``'s 1.13 M (3 -> 1 classes). Both are timed in the same process, alternating
(``benchmarks.harness.compare``), on one 1x3x320x320 image (the paper's input size):

* inference: ``torch.inference_mode``, eval mode;
* train step: forward, loss, backward, Adam step. U²-Net's loss is its default deep-supervision BCE
  (fused map + six side maps, what the trainer computes); U-Net's is one BCE.

Every row is run twice: in the default NCHW layout and with model and input in
``torch.channels_last`` (oneDNN then skips its per-layer layout reorders on CPU); each row
compares both networks in the same layout. A ratio above 1 means U²-Net is faster. ``--quick``:
64x64.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

import seglab
from benchmarks.harness import Result, benchmark, compare

# (U²-Net variant, U-Net base_channels of about the same parameter count)
PAIRS = (("u2net", 76), ("u2net_small", 12))


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _bce_all(res: object, y: torch.Tensor) -> torch.Tensor:
    if isinstance(res, torch.Tensor):
        return F.binary_cross_entropy_with_logits(res, y)
    return sum(F.binary_cross_entropy_with_logits(t, y) for t in [res.out, *res.aux])


def _infer(model: torch.nn.Module, x: torch.Tensor):
    def run() -> None:
        with torch.inference_mode():
            model(x)

    return run


def _train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, aux: bool):
    opt = torch.optim.Adam(model.parameters(), 1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = _bce_all(model(x, aux=True) if aux else model(x), y)
        loss.backward()
        opt.step()

    return step


def run_pairs(size: int = 320, *, repeat: int = 5, warmup: int = 1) -> list[Result]:
    """All rows at ``size`` x ``size`` (exposed so a smoke test can run them small)."""
    rows: list[Result] = []
    x0 = torch.randn(1, 3, size, size)
    y0 = (torch.rand(1, 1, size, size) > 0.5).float()
    for name, base in PAIRS:
        ours0 = seglab.create_model(name, in_channels=3, num_classes=1)
        peer0 = seglab.create_model("unet", in_channels=3, num_classes=1, base_channels=base)
        peer_name = f"unet(b={base})"
        sizes = {"params_M": f"{_n_params(ours0) / 1e6:.2f}/{_n_params(peer0) / 1e6:.2f}"}
        for layout in ("nchw", "channels_last"):
            fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
            x = x0.contiguous(memory_format=fmt)
            ours = copy.deepcopy(ours0).to(memory_format=fmt).eval()
            peer = copy.deepcopy(peer0).to(memory_format=fmt).eval()
            extra = {**sizes, "layout": layout}
            r = compare(
                f"{name} inference",
                _infer(ours, x),
                _infer(peer, x),
                items=1,
                peer_name=peer_name,
                repeat=repeat,
                warmup=warmup,
            )
            r.extra.update(extra)
            rows.append(r)
            ours.train()
            peer.train()
            r = compare(
                f"{name} train step",
                _train_step(ours, x, y0, aux=True),
                _train_step(peer, x, y0, aux=False),
                items=1,
                peer_name=peer_name,
                repeat=repeat,
                warmup=warmup,
            )
            r.extra.update(extra)
            rows.append(r)
    return rows


@benchmark("u2net", help="u2net / u2net_small vs unet of matched parameter count (peer column), 1x3x320x320")
def bench_u2net(quick: bool) -> list[Result]:
    return run_pairs(64 if quick else 320, repeat=5, warmup=1)
