"""BatchNorm re-estimation: exact statistics, restored modes, the trainer's call."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seglab.engine import TrainConfig, Trainer
from seglab.engine.batchnorm import batchnorm_layers, recalibrate_batchnorm
from seglab.engine.checkpoint import load_checkpoint
from seglab.errors import InvalidValueError


def _batches(n: int = 5, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 6, 6, generator=g) * (i + 1) + 2 * i for i in range(n)]


def test_statistics_are_the_average_over_the_batches() -> None:
    bn = nn.BatchNorm2d(3)
    bn.running_mean.fill_(100.0)  # stale statistics
    data = _batches()
    assert recalibrate_batchnorm(bn, [(x, None) for x in data], num_batches=4) == 4
    used = data[:4]
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in used])
    variances = torch.stack([x.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=True) for x in used])
    torch.testing.assert_close(bn.running_mean, means.mean(0))
    torch.testing.assert_close(bn.running_var, variances.mean(0))
    assert bn.momentum == 0.1 and bn.training  # restored


def test_eval_output_matches_batch_statistics_after_recalibration() -> None:
    """The failure it fixes: running statistics that lag the weights make eval mode wrong."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 1, 1))
    big = torch.cat(_batches(8))
    with torch.no_grad():
        net[0].weight.mul_(5.0)  # the weights moved; the running statistics did not follow
        net.train()
        reference = net(big)
        net.eval()
        before = (net(big) - reference).abs().max()
    recalibrate_batchnorm(net, [big[i : i + 8] for i in range(0, len(big), 8)], num_batches=100)
    with torch.no_grad():
        after = (net(big) - reference).abs().max()
    assert before > 1.0 and after < 0.05 * before
    assert not net.training and not net[1].training  # eval mode kept


def test_modes_momentum_and_dropout() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4, momentum=0.3), nn.Dropout(0.9))
    net.train()
    net[2].eval()  # a mixed state is restored as it was
    seen = []
    net[2].register_forward_hook(lambda m, i, o: seen.append(m.training))
    recalibrate_batchnorm(net, _batches(2), num_batches=2)
    assert seen == [False, False]  # dropout runs in eval mode during re-estimation
    assert net.training and net[1].training and not net[2].training and net[1].momentum == 0.3


def test_no_op_cases_and_errors() -> None:
    class Exploding:
        def __iter__(self):
            raise AssertionError("must not be read")

    assert recalibrate_batchnorm(nn.Conv2d(3, 3, 1), Exploding()) == 0  # no BatchNorm: data not read
    bn = nn.BatchNorm2d(3)
    assert recalibrate_batchnorm(bn, Exploding(), num_batches=0) == 0
    with pytest.raises(InvalidValueError, match="bn_recalibrate"):
        recalibrate_batchnorm(bn, [], num_batches=-1)
    bn.running_mean.fill_(7.0)
    bad = [torch.full((2, 3, 4, 4), float("nan"))]
    assert recalibrate_batchnorm(bn, bad, num_batches=3) == 0  # skipped: statistics kept
    assert torch.all(bn.running_mean == 7.0) and bn.momentum == 0.1
    assert len(batchnorm_layers(nn.Sequential(bn, nn.BatchNorm1d(2, track_running_stats=False)))) == 1


def _config(tmp_path, recal: int) -> TrainConfig:
    return TrainConfig.from_dict(
        {
            "model": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
            "data": {
                "name": "synthetic",
                "crop": 24,
                "batch_size": 4,
                "samples_per_epoch": 12,
                "options": {"length": 4, "size": 32, "max_shapes": 3},
            },
            "epochs": 2,
            "out": str(tmp_path / f"run{recal}"),
            "quiet": True,
            "report": False,
            "bn_recalibrate": recal,
        }
    )


def test_trainer_recalibrates_before_validation(tmp_path) -> None:
    """With bn_recalibrate=2 the saved statistics come from 2 batches, not from every training step."""
    for recal, expected in ((2, 2), (0, 6)):  # 3 steps per epoch x 2 epochs without re-estimation
        Trainer(_config(tmp_path, recal)).fit()
        state = load_checkpoint(tmp_path / f"run{recal}" / "last.pt")
        tracked = [v for k, v in state["model"].items() if k.endswith("num_batches_tracked")]
        assert tracked and all(int(t) == expected for t in tracked)
