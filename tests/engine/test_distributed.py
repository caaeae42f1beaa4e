"""DDP through torchrun: two gloo processes on the CPU, synthetic data, metrics reduced over ranks."""

import csv
import os
import subprocess
import sys

import pytest

from seglab.data import get_dataset
from seglab.engine.checkpoint import load_model
from seglab.engine.distributed import DistInfo, all_reduce_sum, broadcast_object, dist_info, init_distributed
from seglab.engine.evaluate import evaluate
from seglab.engine.predictor import Predictor


def test_single_process_fallbacks(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert init_distributed("cpu") == DistInfo()
    info = dist_info()
    assert info.is_main and not info.is_distributed and info.backend is None
    import torch

    t = torch.ones(2)
    assert all_reduce_sum(t) is t and t.tolist() == [1.0, 1.0]
    assert broadcast_object({"a": 1}) == {"a": 1}
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE must be an integer"):
        init_distributed("cpu")


def test_torchrun_two_processes(tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "seglab", "train", "--data", "synthetic",
        "--data-option", "length=5", "--data-option", "size=32", "--data-option", "max_shapes=3",
        "--model", "unet", "--model-option", "base_channels=4", "--model-option", "depth=2",
        "--crop", "24", "--batch-size", "2", "--samples-per-epoch", "8", "--epochs", "2",
        "--device", "cpu", "--threads", "1", "--out", str(out), "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # rank 0 alone prints and writes
    assert proc.stdout.count("2 processes") == 1, proc.stdout
    assert "2 steps/epoch" in proc.stdout  # 8 samples / 2 ranks / batch 2
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # the validation metrics were summed over both ranks (3 + 2 images of an odd-sized split):
    # they equal a single-process evaluation of the saved model on the whole split
    model, meta = load_model(out / "last.pt")
    val = get_dataset("synthetic", "val", length=5, size=32, max_shapes=3)
    result = evaluate(Predictor.from_model(model, meta["normalization"], prepare=False), val)
    assert float(rows[-1]["val_dice"]) == pytest.approx(result.overall["dice"], abs=1e-9)
    assert float(rows[-1]["val_iou"]) == pytest.approx(result.overall["iou"], abs=1e-9)
