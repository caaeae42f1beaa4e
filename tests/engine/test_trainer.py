"""Trainer: exact resume, non-finite loss, early stopping, time limit, multi-class, deep supervision, schedule."""

import csv
import json
import math

import pytest
import torch

from seglab.data import SyntheticDataset
from seglab.engine.checkpoint import CheckpointError, load_checkpoint
from seglab.engine.config import TrainConfig
from seglab.engine.trainer import (
    NonFiniteLossError,
    Trainer,
    build_optimizer,
    build_scheduler,
    lr_factor,
    resolve_device,
)


def _config(tmp_path, name="run", **changes):
    base = {
        "model": {"name": "unet", "options": {"base_channels": 4, "depth": 2}},
        "data": {
            "name": "synthetic",
            "crop": 24,
            "batch_size": 4,
            "samples_per_epoch": 8,
            "options": {"length": 4, "size": 32, "max_shapes": 3},
        },
        "optim": {"lr": 0.01, "warmup_epochs": 0.5},
        "epochs": 2,
        "out": str(tmp_path / name),
        "quiet": True,
    }
    for key, value in changes.items():
        node = base
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return TrainConfig.from_dict(base)


def _rows_without_time(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return [{k: v for k, v in r.items() if not k.endswith("_time")} for r in rows]


def test_run_writes_the_run_folder(tmp_path):
    result = Trainer(_config(tmp_path)).fit()
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == [
        "best.pt",
        "config.yaml",
        "curves.png",
        "last.pt",
        "metrics.csv",
        "metrics.json",
        "overlays",
        "report.html",
    ]
    rows = _rows_without_time(run / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    header = list(csv.DictReader(open(run / "metrics.csv")).fieldnames)
    assert header[:4] == ["epoch", "lr", "train_loss", "train_dice"]
    assert {"val_loss", "val_dice", "val_iou", "epoch_time", "val_time"} <= set(header)
    assert all(not h.endswith("time") or h.endswith("_time") for h in header)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stopped"] == "completed" and len(metrics["history"]) == 2
    assert metrics["best_epoch"] == result.best_epoch and metrics["mode"] == "binary"
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 2 and state["num_classes"] == 1 and state["mode"] == "binary"
    assert state["normalization"]["mean"] == pytest.approx(
        SyntheticDataset(length=4, size=32, max_shapes=3).stats()["mean"]
    )
    assert (run / "config.yaml").read_text().startswith("model:")


def test_resume_is_exact(tmp_path):
    """Interrupted after epoch 1 and resumed from last.pt == uninterrupted: identical metrics rows."""
    Trainer(_config(tmp_path, "full", epochs=3)).fit()
    first = Trainer(_config(tmp_path, "split", epochs=3))
    assert first.fit(until_epoch=1).stopped == "until_epoch"
    resumed = Trainer(_config(tmp_path, "split", epochs=3, resume=str(tmp_path / "split" / "last.pt")))
    assert resumed.epoch == 1
    resumed.fit()
    full = _rows_without_time(tmp_path / "full" / "metrics.csv")
    split = _rows_without_time(tmp_path / "split" / "metrics.csv")
    assert len(full) == 3 and full == split
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "split" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_checks_model_and_epochs(tmp_path):
    Trainer(_config(tmp_path, "a", epochs=1)).fit()
    last = str(tmp_path / "a" / "last.pt")
    with pytest.raises(ValueError, match="already completed 1 epoch"):
        Trainer(_config(tmp_path, "a", epochs=1, resume=last))
    with pytest.raises(ValueError, match="holds model 'unet'"):
        Trainer(
            _config(
                tmp_path, "a", epochs=2, resume=last, **{"model.options": {"base_channels": 8, "depth": 2}}
            )
        )


class _PoisonAfter(SyntheticDataset):
    """Images turn to NaN after ``clean`` samples have been read (the second epoch here)."""

    def __init__(self, clean, **kw):
        super().__init__(**kw)
        self.clean = clean
        self.reads = 0

    def __getitem__(self, index):
        self.reads += 1
        image, mask = super().__getitem__(index)
        if self.reads > self.clean:
            image = torch.full_like(image, float("nan"))
        return image, mask


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = _config(tmp_path, epochs=3, **{"data.mean": [0.5], "data.std": [0.25]})
    # 4 reads measure the training intensity range (kept for the out-of-range guard), 8 are epoch 1
    train = _PoisonAfter(4 + 8, length=4, size=32, max_shapes=3)
    val = SyntheticDataset(length=2, size=32, split="val")
    trainer = Trainer(cfg, train_dataset=train, val_dataset=val)
    with pytest.raises(
        NonFiniteLossError, match=r"epoch 2, step 1/2.*last good checkpoint .*last\.pt \(epoch 1\)"
    ):
        trainer.fit()
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert len(_rows_without_time(tmp_path / "run" / "metrics.csv")) == 1


def test_early_stopping(tmp_path):
    cfg = _config(tmp_path, epochs=5, patience=1, min_delta=10.0)  # nothing can improve by 10
    result = Trainer(cfg).fit()
    assert result.stopped == "early_stopping" and len(result.history) == 2 and result.best_epoch == 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stopped"] == "early_stopping"


def test_time_limit_ends_between_epochs(tmp_path):
    result = Trainer(_config(tmp_path, epochs=4, max_time=1e-6)).fit()
    assert result.stopped == "time_limit" and len(result.history) == 1


def test_multiclass_and_monitor_loss(tmp_path):
    cfg = _config(tmp_path, epochs=1, monitor="loss", **{"data.options.num_classes": 3})
    trainer = Trainer(cfg)
    assert trainer.mode == "multiclass" and trainer.out_channels == 3
    result = trainer.fit()
    row = result.history[0]
    assert {"val_dice_disc", "val_dice_rectangle", "train_loss_ce", "train_loss_dice"} <= set(row)
    assert result.best_score == row["val_loss"]


def test_deep_supervision_goes_through_the_loss_not_the_name(tmp_path):
    cfg = _config(
        tmp_path,
        epochs=1,
        model={"name": "unetpp", "options": {"channels": [4, 8, 16], "depth": 2, "deep_supervision": True}},
        loss={"aux_weights": "halving"},
        **{"data.crop": 32},
    )
    row = Trainer(cfg).fit().history[0]
    assert {"train_loss_out", "train_loss_aux0"} <= set(row)  # depth 2: one auxiliary head
    assert math.isfinite(row["val_dice"])


def test_no_validation_split(tmp_path):
    cfg = _config(tmp_path, epochs=1, **{"data.val_split": None})
    result = Trainer(cfg).fit()
    assert "val_dice" not in result.history[0] and result.best_epoch == 1
    assert (tmp_path / "run" / "best.pt").is_file()


def test_bad_monitor_and_instance_task(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'dice'"):
        Trainer(_config(tmp_path, monitor="dise"))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("cosine", [0.25, 0.5, 0.75, 1.0, 0.8535534, 0.5, 0.1464466, 0.0]),
        ("poly", [0.25, 0.5, 0.75, 1.0, 0.7719162, 0.5358867, 0.2872281, 0.0]),
        ("constant", [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_lr_factor_warmup_then_decay(kind, expected):
    got = [lr_factor(s, total=7 + 3, warmup=3, kind=kind) for s in range(8)]
    assert got[:4] == pytest.approx(expected[:4])
    # after warm-up: t runs over the remaining 7 steps
    t = [(s - 3) / 7 for s in range(3, 8)]
    if kind == "cosine":
        ref = [0.5 * (1 + math.cos(math.pi * x)) for x in t]
    elif kind == "poly":
        ref = [(1 - x) ** 0.9 for x in t]
    else:
        ref = [1.0] * 5
    assert got[3:] == pytest.approx(ref)
    assert lr_factor(100, total=10, warmup=0, kind="cosine", min_ratio=0.1) == pytest.approx(0.1)


def test_scheduler_and_optimizer(tmp_path):
    cfg = _config(
        tmp_path, **{"optim.weight_decay": 0.05, "optim.scheduler": "cosine", "optim.warmup_epochs": 0}
    )
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    opt = build_optimizer(model, cfg.optim)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0]
    assert len(opt.param_groups[0]["params"]) == 1  # only the conv weight decays
    sched = build_scheduler(opt, cfg.optim, steps_per_epoch=2, epochs=2)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.01 * lr_factor(s, total=4, warmup=0, kind="cosine") for s in range(4)])
    # the multiplier is a closure, not saved: the state dict is plain values
    assert sched.state_dict()["lr_lambdas"] == [None, None]
    sgd = build_optimizer(model, _config(tmp_path, **{"optim.optimizer": "sgd"}).optim)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"]


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="Cannot parse device"):
        resolve_device("tpu9")


def test_time_policy_fit_compresses_the_schedule(tmp_path):
    cfg = _config(
        tmp_path, epochs=4, max_time=1e-6, time_policy="fit", val_every=3, **{"optim.warmup_epochs": 0}
    )
    trainer = Trainer(cfg)
    trainer._out_of_time = lambda: False  # not the cap within an epoch: the plan after it is tested here
    result = trainer.fit()
    assert result.stopped == "time_budget" and len(result.history) == 1
    assert "val_dice" in result.history[0]  # the last epoch of the plan is always validated
    assert trainer.planned_epochs == 1
    # the schedule now ends after epoch 1: its multiplier reaches the floor at the last step
    factor = trainer.scheduler.lr_lambdas[0]
    assert factor(trainer.steps_per_epoch) == pytest.approx(0.0, abs=1e-12)
    assert factor(trainer.steps_per_epoch // 2) == pytest.approx(0.5)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["planned_epochs"] == 1


def test_time_policy_fit_is_deterministic_when_the_budget_does_not_bind(tmp_path):
    Trainer(_config(tmp_path, "plain", epochs=2)).fit()
    result = Trainer(_config(tmp_path, "fit", epochs=2, max_time=1e6, time_policy="fit")).fit()
    assert result.stopped == "completed"
    assert _rows_without_time(tmp_path / "plain" / "metrics.csv") == _rows_without_time(
        tmp_path / "fit" / "metrics.csv"
    )


def test_monitor_auto_and_unknown_metric(tmp_path):
    from seglab.engine.trainer import TaskAdapter

    assert Trainer(_config(tmp_path, epochs=1)).monitor == "dice"
    assert TaskAdapter.default_monitor == "loss" and TaskAdapter.monitors is None


def test_time_policy_fit_plan_follows_the_median_pace(tmp_path):
    trainer = Trainer(_config(tmp_path, epochs=20, max_time=100.0, time_policy="fit"))
    trainer.epoch, trainer.elapsed = 2, 60.0
    trainer._fit_plan_to_time([50.0, 5.0])  # two epochs: too early to judge, the plan stays
    assert trainer.planned_epochs == 20
    trainer.epoch, trainer.elapsed = 3, 65.0
    trainer._fit_plan_to_time([50.0, 5.0, 10.0])  # a slow first epoch: median 10 s, 35 s left
    assert trainer.planned_epochs == 6
    trainer.epoch, trainer.elapsed = 4, 67.0
    trainer._fit_plan_to_time([50.0, 5.0, 10.0, 2.0, 2.0])  # faster now: median 5 s, 33 s left
    assert trainer.planned_epochs == 10
    trainer.elapsed = 101.0
    trainer._fit_plan_to_time([1.0])  # over budget: stop after this epoch whatever the count
    assert trainer.planned_epochs == 4


def test_max_time_stops_within_an_epoch_and_saves(tmp_path, capsys):
    """One epoch of 10 steps with a budget already spent: the run stops after the first step."""
    cfg = _config(tmp_path, epochs=3, max_time=1e-6, **{"data.samples_per_epoch": 40})
    trainer = Trainer(cfg)
    assert trainer.steps_per_epoch == 10
    result = trainer.fit()
    assert result.stopped == "time_limit" and len(result.history) == 1
    row = result.history[0]
    assert row["train_steps"] == 1 and "val_dice" in row  # the cut epoch is validated
    assert "stopped early: max_time=1e-06s reached at epoch 1, step 1/10" in capsys.readouterr().out
    assert load_checkpoint(tmp_path / "run" / "last.pt")["epoch"] == 1
    assert (tmp_path / "run" / "best.pt").is_file()
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["stopped"] == "time_limit"


def test_best_pt_holds_weights_and_metadata_only(tmp_path):
    from seglab.engine.checkpoint import BEST_KEYS, CHECKPOINT_KEYS

    Trainer(_config(tmp_path, epochs=1)).fit()
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    last = load_checkpoint(tmp_path / "run" / "last.pt", require=CHECKPOINT_KEYS)
    assert set(best) == set(BEST_KEYS)
    assert not {"optimizer", "scheduler", "scaler", "rng", "history"} & set(best)
    assert {"optimizer", "scheduler", "scaler", "rng", "history"} <= set(last)
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])
    # AdamW keeps two moments per weight: last.pt is about three times best.pt
    size = {name: (tmp_path / "run" / name).stat().st_size for name in ("best.pt", "last.pt")}
    assert size["last.pt"] > 2.5 * size["best.pt"]
    with pytest.raises(CheckpointError, match=r"weights only .*resume from the run's last\.pt"):
        Trainer(_config(tmp_path, "again", epochs=2, resume=str(tmp_path / "run" / "best.pt")))


def test_normalisation_is_stored_and_applied_to_whole_images(tmp_path):
    from seglab.data.normalize import Normalization
    from seglab.data.transforms import NormalizeImage

    trainer = Trainer(_config(tmp_path, epochs=1, **{"data.normalize": "percentile"}))
    norm = trainer.normalization
    assert norm == Normalization("percentile")
    step = trainer.train_set._normalize
    assert isinstance(step, NormalizeImage) and trainer.train_set.dataset.transform.transforms[0] is step
    trainer.train_set[5]  # sample 5 is image 1 (4 images): its percentiles are cached under index 1
    raw = SyntheticDataset(length=4, size=32, max_shapes=3)[1][0]
    assert set(step._cache) == {1}
    offset, _ = step._cache[1]
    torch.testing.assert_close(torch.as_tensor(offset), torch.as_tensor(norm.affine(raw)[0]), rtol=0, atol=0)
    trainer.fit()
    state = load_checkpoint(tmp_path / "run" / "best.pt")
    assert Normalization.from_dict(state["normalization"]) == norm


def test_build_normalization_from_the_config():
    from seglab.data.normalize import Normalization
    from seglab.engine.config import DataConfig
    from seglab.engine.trainer import build_normalization

    ds = SyntheticDataset(length=4, size=32, max_shapes=3)
    hela = build_normalization(DataConfig(name="hela"), ds, 1)  # the built-in's default
    assert hela == Normalization("percentile")
    synthetic = build_normalization(DataConfig(name="synthetic"), ds, 1)
    assert synthetic.method == "dataset" and synthetic.reference is not None
    assert list(synthetic.mean) == pytest.approx(ds.stats()["mean"])
    fixed = build_normalization(DataConfig(name="synthetic", mean=[0.5], std=[0.25]), ds, 1)
    assert (fixed.method, fixed.mean, fixed.std) == ("fixed", (0.5,), (0.25,))
    partial = build_normalization(DataConfig(name="synthetic", normalize="dataset", std=[2.0]), ds, 1)
    assert partial.std == (2.0,) and partial.mean[0] == pytest.approx(ds.stats()["mean"][0])
    tight = build_normalization(
        DataConfig(name="x", normalize="percentile", normalize_options={"p_lo": 2, "p_hi": 98}), ds, 1
    )
    assert (tight.p_lo, tight.p_hi) == (2.0, 98.0)
    with pytest.raises(ValueError, match="computes its statistics per image"):
        build_normalization(DataConfig(name="x", normalize="zscore", mean=[1.0]), ds, 1)
    with pytest.raises(ValueError, match="one mean and std per input channel"):
        build_normalization(DataConfig(name="x", normalize="fixed", mean=[1.0, 2.0], std=[1.0, 1.0]), ds, 1)
    with pytest.raises(ValueError, match="needs mean and std"):
        build_normalization(DataConfig(name="x", normalize="fixed"), ds, 1)


def test_cpu_model_defaults_when_no_size_is_given(tmp_path):
    from seglab.engine.trainer import cpu_model_defaults

    cfg = TrainConfig.from_dict({"model": {"name": "unet"}, "device": "cpu"})
    small, applied = cpu_model_defaults(cfg)
    assert applied == {"base_channels": 16} and small.model.options == {"base_channels": 16}
    _, applied = cpu_model_defaults(
        TrainConfig.from_dict({"model": {"name": "deeplabv3plus"}, "device": "cpu"})
    )
    assert applied == {"encoder": "resnet18"}
    sized = TrainConfig.from_dict({"model": {"name": "unet", "options": {"depth": 3}}, "device": "cpu"})
    assert cpu_model_defaults(sized) == (sized, {})
