"""The trainer's overhead and the demo's step time.

``train_epoch``: one training epoch of the demo's model (U-Net, 16 base channels, batch 12,
192x192 crops of synthetic images) through :class:`seglab.engine.Trainer` — the adapter, the deep
supervision loss, the training meter for the progress bar, gradient clipping, the scheduler —
against a hand-written PyTorch loop over the same DataLoader with the same model, BCE + soft Dice
and AdamW. A ratio near 1 means the trainer costs nothing beyond the model.

``full_frame_validation``: :func:`seglab.engine.predict_logits` on a 700x1100 frame (padded to
704x1104), what validation and ``seglab eval`` run per hela frame.

``--quick``: base 8, 2 crops of 64x64 per step, a 96x128 frame.
"""

from __future__ import annotations

import tempfile

import torch
import torch.nn.functional as F

from benchmarks.harness import Result, benchmark, compare


def _trainer(steps: int, crop: int, batch: int, base: int):
    from seglab.engine import TrainConfig, Trainer

    cfg = TrainConfig.from_dict(
        {
            "model": {"name": "unet", "options": {"base_channels": base, "depth": 4}},
            "data": {
                "name": "synthetic",
                "crop": crop,
                "batch_size": batch,
                "samples_per_epoch": batch * steps,
                "val_split": None,
                "options": {"length": 8, "size": 256},
            },
            "epochs": 1000,
            "out": tempfile.mkdtemp(prefix="seglab-bench-"),
            "quiet": True,
            "device": "cpu",
        }
    )
    return Trainer(cfg)


@benchmark(
    "engine",
    help="Trainer epoch vs a plain PyTorch loop (demo model, 2 steps of 12x192x192); full-frame validation",
)
def bench_engine(quick: bool) -> list[Result]:
    steps = 2
    crop, batch, base = (64, 2, 8) if quick else (192, 12, 16)
    trainer = _trainer(steps, crop, batch, base)
    model = trainer.model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def seglab_epoch() -> None:
        trainer.epoch += 1
        trainer._seed_epoch()
        trainer._train_one_epoch()

    def plain_epoch() -> None:
        model.train()
        for x, y in trainer.train_loader:
            logits = model(x)  # (N, 1, H, W)
            target = y[:, None].float()
            prob = torch.sigmoid(logits)
            inter = (prob * target).sum((0, 2, 3))
            dice = 1 - (2 * inter + 1) / (prob.sum((0, 2, 3)) + target.sum((0, 2, 3)) + 1)
            loss = F.binary_cross_entropy_with_logits(logits, target) + dice.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

    repeat = 5
    rows = [compare("train_epoch (2 steps)", seglab_epoch, plain_epoch, items=steps, peer_name="plain torch",
                    warmup=1, repeat=repeat)]  # fmt: skip

    from seglab.engine.predict import predict_logits

    model.eval()
    h, w = (96, 128) if quick else (700, 1100)
    frame = torch.randn(1, 1, h, w)

    def validate() -> None:
        with torch.no_grad():
            predict_logits(model, frame)

    rows.append(compare(f"full_frame_validation ({h}x{w})", validate, None, items=1, warmup=1, repeat=repeat))
    return rows
