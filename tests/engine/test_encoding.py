"""Instances from semantic models: targets after augmentation, the five families on the one trainer,
decoding parameters in best.pt, Predictor.instances, seglab predict/eval outputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from seglab.data.base import SegDataset
from seglab.data.transforms import Compose, RandomScale
from seglab.engine.config import TrainConfig
from seglab.engine.encoding import EncodeTargets, EncodingAdapter, InstanceScores, check_metric, label_scores
from seglab.engine.predictor import Predictor
from seglab.engine.trainer import Trainer
from seglab.instances import DecodeParams, boundary_classes, get_encoding, normalized_distance
from seglab.metrics import instance_metrics, matching
from tests._optional import peer
from tests.metrics._peers import touching_nuclei

peer("skimage")


class TouchingNuclei(SegDataset):
    """Round nuclei on a jittered grid, many touching; each nucleus brightest at its centre, so the
    line where two meet is a visible valley (as in fluorescence images)."""

    def __init__(self, length: int = 4, size: int = 64, split: str = "train", seed: int = 0) -> None:
        self.task, self.num_classes, self.in_channels = "labels", 2, 1
        self.class_names = ("background", "nucleus")
        self.names = [f"{split}_{i}" for i in range(length)]
        self.transform = None
        self.size, self.seed = size, seed + {"train": 0, "val": 1000, "test": 2000}[split]

    def scene(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(self.seed + index)
        labels = touching_nuclei(rng, self.size, self.size, spacing=14, radius=8.0)
        image = 0.2 + 0.8 * np.sqrt(normalized_distance(labels)) + rng.normal(0, 0.05, labels.shape)
        return (1000 * image[None]).astype(np.float32), labels

    def __getitem__(self, index: int):
        image, labels = self.scene(self._check_index(index))
        return self._make_sample(image, instances=labels)

    def stats(self) -> dict[str, list[float]]:
        return {"mean": [500.0], "std": [300.0]}


def _config(tmp_path, model: str = "unet", options: dict | None = None, **changes) -> TrainConfig:
    base = {
        "model": {
            "name": model,
            "options": options if options is not None else {"base_channels": 4, "depth": 2},
        },
        "data": {
            "name": "synthetic",
            "crop": 32,
            "batch_size": 2,
            "samples_per_epoch": 4,
            "normalize": "percentile",
        },
        "task": {"kind": "instance", "encoding": "boundary"},
        "epochs": 1,
        "out": str(tmp_path / model),
        "quiet": True,
        "report": False,
        "bn_recalibrate": 0,
    }
    for key, value in changes.items():
        node = base
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return TrainConfig.from_dict(base)


# -- targets -------------------------------------------------------------------------------------------------
def test_targets_are_made_after_the_augmentation() -> None:
    labels = np.zeros((16, 16), np.int64)
    labels[2:8, 2:8], labels[2:8, 8:14] = 3, 5  # touching
    ds = TouchingNuclei(1, 16)
    ds.scene = lambda i: (np.ones((1, 16, 16), np.float32), labels)  # type: ignore[method-assign]
    ds.transform = Compose([RandomScale((2.0, 2.0))])  # nearest-neighbour zoom x2
    enc = get_encoding("boundary", width=2)
    _, targets, crops = EncodeTargets(enc)([ds[0]])
    assert crops.shape == (1, 32, 32) and crops.dtype == torch.int64
    np.testing.assert_array_equal(crops[0].numpy(), np.kron(labels, np.ones((2, 2), np.int64)))
    np.testing.assert_array_equal(targets[0].numpy(), boundary_classes(crops[0].numpy(), 2))
    # bands 2 px wide in the zoomed crop (encoded after the zoom; a zoomed target would have 4 px):
    # the left outline of object 3, then its side and object 5's side of the line where they touch
    np.testing.assert_array_equal(targets[0, 10, 4:20].numpy(), [2, 2, *[1] * 8, 2, 2, 2, 2, 1, 1])
    dist = EncodeTargets(get_encoding("distance"))([ds[0]])[1]
    assert dist.shape == (1, 2, 32, 32) and float(dist[0, 1].max()) == 1.0


def test_label_scores_and_meter_match_instance_metrics() -> None:
    rng = np.random.default_rng(3)
    truth = [touching_nuclei(rng, 40, 50) for _ in range(2)]
    pred = [np.roll(t, 1, axis=1) for t in truth]
    ref = instance_metrics(pred, truth, thresholds=(0.5, 0.75))
    got = label_scores(pred, truth, "seg+det")
    assert got["seg+det"] == pytest.approx((ref["seg"] + ref["det"]) / 2)
    assert got["f1@0.75"] == pytest.approx(ref["f1@0.75"]) and got["merges"] == ref["merges"]
    meter = InstanceScores("seg")
    meter.update(torch.as_tensor(np.stack(pred)), torch.as_tensor(np.stack(truth)))
    assert meter.compute()["seg"] == pytest.approx(ref["seg"])
    assert np.isnan(InstanceScores().compute()["f1@0.5+seg"])


# -- the five families on the one trainer ------------------------------------------------------------------------
FAMILIES = {
    "unet": {"base_channels": 4, "depth": 2},
    "unetpp": {"channels": [4, 8, 16], "depth": 2, "deep_supervision": True},
    "unet3p": {"channels": [4, 8, 16], "depth": 2, "cat_channels": 4},
    "u2net_small": {"width": 0.25},
    "deeplabv3plus": {
        "encoder": "resnet18",
        "aspp_channels": 8,
        "decoder_channels": 8,
        "low_level_channels": 4,
        "aux": True,
    },
}


@pytest.mark.parametrize("model", list(FAMILIES))
def test_each_family_trains_on_an_encoding_and_decodes(tmp_path, model: str) -> None:
    train, val = TouchingNuclei(4, 32, "train"), TouchingNuclei(2, 32, "val")
    encoding = "distance" if model in ("unet3p", "deeplabv3plus") else "boundary"
    cfg = _config(tmp_path, model, FAMILIES[model], **{"task.encoding": encoding})
    trainer = Trainer(cfg, train_dataset=train, val_dataset=val)
    assert isinstance(trainer.adapter, EncodingAdapter) and trainer.mode == "instance"
    assert trainer.out_channels == get_encoding(encoding).out_channels == trainer.model.num_classes
    trainer.model.train()
    aux = trainer.model(torch.zeros(2, 1, 32, 32), aux=True).aux
    result = trainer.fit()
    row = result.history[-1]
    assert trainer.monitor == "f1@0.5+seg" and np.isfinite(row["val_loss"])
    assert 0.0 <= row["val_f1@0.5+seg"] <= 1.0 and row["val_n_true"] == sum(
        len(np.unique(val.scene(i)[1])) - 1 for i in range(2)
    )
    assert ("train_loss_aux0" in row) == bool(aux)  # deep supervision: every output gets the encoding's loss
    best = torch.load(tmp_path / model / "best.pt", weights_only=True)
    assert best["task"] == "instance" and best["encoding"] == get_encoding(encoding).to_dict()
    assert DecodeParams.from_dict(best["decode_params"]) == trainer.adapter.params
    assert best["decode_search"]["trials"] >= 1 and best["mode"] == "instance"
    image = val.scene(0)[0]
    predictor = Predictor.from_checkpoint(tmp_path / model / "best.pt", device="cpu")
    labels = predictor.instances(image)
    assert labels.shape == (32, 32) and labels.dtype == np.uint32
    assert set(np.unique(labels)) - {0} == set(range(1, int(labels.max()) + 1))  # objects 1..n
    metrics = json.loads((tmp_path / model / "metrics.json").read_text())
    assert metrics["decoding"]["params"] == best["decode_params"] and metrics["mode"] == "instance"


def test_unet_learns_to_separate_touching_nuclei(tmp_path) -> None:
    cfg = _config(
        tmp_path,
        "unet",
        {"base_channels": 8, "depth": 2},
        epochs=4,
        **{"data.crop": 48, "data.batch_size": 4, "data.samples_per_epoch": 40, "optim.lr": 0.01},
    )
    train, val = TouchingNuclei(8, 64, "train"), TouchingNuclei(3, 64, "val")
    Trainer(cfg, train_dataset=train, val_dataset=val).fit()
    predictor = Predictor.from_checkpoint(tmp_path / "unet" / "best.pt", device="cpu")
    test = TouchingNuclei(3, 64, "test")
    pred = [predictor.instances(test.scene(i)[0]) for i in range(3)]
    truth = [test.scene(i)[1] for i in range(3)]
    m = instance_metrics(pred, truth)
    print(
        f"\ntouching nuclei, unet + boundary: F1@0.5 {m['f1@0.5']:.3f} SEG {m['seg']:.3f} merges {m['merges']}"
    )
    assert m["f1@0.5"] > 0.85 and m["seg"] > 0.7


def test_config_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"task\.encoding"):
        _config(tmp_path, **{"task.encoding": "contour"})
    with pytest.raises(ValueError, match="width"):
        Trainer(_config(tmp_path, **{"task.options": {"width": 0}}), train_dataset=TouchingNuclei(2, 32))
    with pytest.raises(ValueError, match=r"mask_rcnn.*instance model"):
        Trainer(_config(tmp_path, "mask_rcnn", {}, **{"task.kind": "semantic"}))
    with pytest.raises(ValueError, match=r"'sge' is not an instance score.*Did you mean 'seg'"):
        Trainer(_config(tmp_path, monitor="f1@0.5+sge"), train_dataset=TouchingNuclei(2, 32))
    with pytest.raises(ValueError, match=r"'f1@x' is not an instance score expression"):
        Trainer(_config(tmp_path, monitor="f1@x"), train_dataset=TouchingNuclei(2, 32))
    assert check_metric("f1@0.9+panoptic_quality@0.9") == "f1@0.9+panoptic_quality@0.9"


# -- predict and eval ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny boundary-encoding U-Net trained on the synthetic dataset's instance labels."""
    tmp = tmp_path_factory.mktemp("encoding-run")
    cfg = _config(tmp, epochs=2, **{"data.options": {"length": 4, "size": 48, "max_shapes": 4}})
    Trainer(cfg).fit()
    return tmp / "unet"


def test_predict_and_eval_write_instance_outputs(run, tmp_path) -> None:
    from seglab.data import get_dataset
    from seglab.engine.evaluate import evaluate_checkpoint
    from seglab.engine.predict import PredictOptions, predict_files

    test = get_dataset("synthetic", "test", task="labels", length=2, size=48, max_shapes=4)
    tifffile.imwrite(tmp_path / "a.tif", test[0][0].numpy())
    opts = PredictOptions(device="cpu", progress=False)
    rows = predict_files([tmp_path / "a.tif"], tmp_path / "pred", checkpoint=run / "best.pt", options=opts)
    written = tifffile.imread(rows[0]["instances"])
    assert written.dtype == np.uint16 and written.shape == (48, 48) and rows[0]["count"] == written.max()
    np.testing.assert_array_equal(
        written, Predictor.from_checkpoint(run / "best.pt", device="cpu").instances(test[0][0])
    )
    assert (tmp_path / "pred" / "a_overlay.png").is_file()
    with pytest.raises(ValueError, match="threshold"):
        predict_files(
            [tmp_path / "a.tif"],
            tmp_path / "p2",
            checkpoint=run / "best.pt",
            options=PredictOptions(threshold=0.3),
        )
    result, paths = evaluate_checkpoint(
        run / "best.pt", "synthetic", out_dir=tmp_path / "eval", options=opts,
        data_options={"length": 2, "size": 48, "max_shapes": 4},
    )  # fmt: skip
    assert result.mode == "instance" and len(result.per_image) == 2
    saved = json.loads(paths["json"].read_text())
    truth = [test[i][1].numpy() for i in range(2)]
    pred = [tifffile.imread(tmp_path / "eval" / "predictions" / f"{n}_instances.tif") for n in test.names]
    ref = instance_metrics(pred, truth, thresholds=(0.5, 0.75))
    for key in (
        "seg",
        "det",
        "f1@0.5",
        "f1@0.75",
        "panoptic_quality@0.5",
        "merges",
        "split",
        "missed",
        "spurious",
    ):
        assert saved["overall"][key] == pytest.approx(ref[key]), key
    assert (tmp_path / "eval" / "predictions" / f"{test.names[0]}_errors.png").is_file()
    assert paths["summary_csv"].read_text().splitlines()[2].startswith("pooled objects")
    assert json.loads((run / "metrics.json").read_text())["test"]["seg"] == pytest.approx(ref["seg"])


@pytest.mark.slow
def test_onnx_export_keeps_the_decoding(run, tmp_path) -> None:
    peer("onnxruntime")
    peer("onnxscript")
    from seglab.cli import main
    from seglab.data import get_dataset
    from seglab.engine.encoding import EncodingDecoder

    assert (
        main(["export", str(run / "best.pt"), "--out", str(tmp_path / "m.onnx"), "--input-size", "48", "48"])
        == 0
    )
    onnx = Predictor.from_onnx(tmp_path / "m.onnx")
    torch_path = Predictor.from_checkpoint(run / "best.pt", device="cpu")
    assert isinstance(onnx.decoder, EncodingDecoder) and onnx.decoder == torch_path.decoder
    image = get_dataset("synthetic", "test", task="labels", length=1, size=48, max_shapes=4)[0][0]
    assert matching(onnx.instances(image), torch_path.instances(image), thresh=0.9).f1 == 1.0


FLIPS = ((), (-1,), (-2,), (-2, -1))


def test_tiles_and_tta_blend_before_decoding(run) -> None:
    from seglab.data import get_dataset

    image = get_dataset("synthetic", "test", task="labels", length=1, size=48, max_shapes=4)[0][0]
    whole = Predictor.from_checkpoint(run / "best.pt", device="cpu")
    probs = whole.decoder.probabilities(whole, whole.normalization(image))
    assert probs.shape == (3, 48, 48) and np.allclose(probs.sum(0), 1.0, atol=1e-5)
    tiled = Predictor.from_checkpoint(run / "best.pt", device="cpu", tile=16, overlap=0.5)
    assert matching(tiled.instances(image), whole.instances(image), thresh=0.5).f1 > 0.5
    flips = Predictor.from_checkpoint(run / "best.pt", device="cpu", tta="flips")
    x = whole.normalization(image)
    views = [whole.decoder.probabilities(whole, torch.flip(x, d) if d else x) for d in FLIPS]
    by_hand = np.mean([np.flip(v, d) if d else v for v, d in zip(views, FLIPS)], axis=0)
    np.testing.assert_allclose(
        flips.decoder.probabilities(flips, flips.normalization(image)), by_hand, atol=1e-5
    )
    with pytest.raises(ValueError, match="predicts classes, not objects"):
        Predictor.from_model(torch.nn.Conv2d(1, 1, 1), "none").instances(image)


# -- large images: tiles blended, decoded once (or block by block), the same objects as whole images ------------
class _Blur(torch.nn.Module):
    """An identity-like 'model' with a receptive field: its input is an encoding's probability maps,
    its output the logits of those maps averaged over 5 x 5 pixels (zero padding at every edge, so a
    tile's border sees less context than the same pixels in the whole image)."""

    def __init__(self, encoding) -> None:
        super().__init__()
        self.softmax = encoding.activation == "softmax"
        k = encoding.out_channels
        self.blur = torch.nn.Conv2d(k, k, 5, padding=2, groups=k, bias=False)
        torch.nn.init.constant_(self.blur.weight, 1 / 25)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.blur(x).clamp(1e-4, 1 - 1e-4)  # (N, K, h, w)
        return torch.log(p) if self.softmax else torch.logit(p)


@pytest.mark.data
@pytest.mark.parametrize("name", ["boundary", "distance"])
def test_hela_mosaic_tiled_prediction_equals_whole(name: str) -> None:
    """A 2 x 2 mosaic of hela frames (1400 x 2200: more than 4 tiles of 256 per side) through the
    Predictor: tiled (blended maps in a memory map, decoded by blocks) vs whole-image prediction."""
    import dataclasses

    from seglab.engine.encoding import EncodingDecoder
    from tests.instances.test_tiled import assert_same_objects, hela_mosaic, perfect_probs

    labels = hela_mosaic()  # (1400, 2200)
    enc = get_encoding(name)
    image = perfect_probs(enc, labels)  # the model's input: (K, 1400, 2200)
    decoder = EncodingDecoder(enc, DecodeParams(min_size=0))
    whole = Predictor.from_model(_Blur(enc).eval(), "none", prepare=False, decoder=decoder)
    small = dataclasses.replace(decoder, max_pixels=1 << 20, block=256, halo=96)  # force the bounded path
    tiled = whole.replace(tile=256, overlap=0.5, decoder=small)
    a, b = tiled.instances(image), whole.instances(image)
    assert a.dtype == b.dtype == np.uint32
    assert_same_objects(
        a, b
    )  # matched IoU >= 0.95 for >= 99.5 % of objects, none split, merged or duplicated
    assert matching(b, labels).f1 > 0.98


def test_cli_flags_and_instance_summary(run, tmp_path, capsys) -> None:
    from seglab.cli import build_parser, main, resolve_train_config

    def config(*flags: str) -> TrainConfig:
        return resolve_train_config(
            build_parser().parse_args(["train", "--data", "synthetic", "--recipe", "none", *flags])
        )

    assert config("--task", "instance").task.kind == "instance"
    assert (config("--encoding", "distance").task.kind, config("--encoding", "distance").task.encoding) == (
        "instance",
        "distance",
    )  # naming an encoding asks for instances
    assert config().task.kind == "auto"
    argv = ["eval", "--checkpoint", str(run / "best.pt"), "--data", "synthetic", "--out", str(tmp_path / "e")]
    argv += ["--data-option", "length=2", "--data-option", "size=48", "--quiet", "--device", "cpu"]
    assert main(argv) == 0
    line = capsys.readouterr().out.splitlines()[0]
    saved = json.loads((tmp_path / "e" / "metrics.json").read_text())["overall"]
    assert (
        line.startswith("2 images, ")
        and f"SEG={saved['seg']:.4f}" in line
        and f"{saved['merges']:.0f} merges" in line
    )


def test_rechoose_decoding_searches_from_the_stored_parameters_and_writes_them(run, tmp_path) -> None:
    from seglab.data import get_dataset
    from seglab.engine.checkpoint import load_checkpoint
    from seglab.engine.encoding import rechoose_decoding
    from seglab.errors import InvalidValueError

    opts = {"length": 4, "size": 48, "max_shapes": 4}
    stored = DecodeParams.from_dict(load_checkpoint(run / "best.pt")["decode_params"])
    out = tmp_path / "rechosen.pt"
    res = rechoose_decoding(run / "best.pt", "synthetic", out=out, data_options=opts)
    state = load_checkpoint(out)
    assert DecodeParams.from_dict(state["decode_params"]) == res.params
    assert state["decode_search"]["score"] == pytest.approx(res.score)
    # the search starts where training left off, so it can only keep or improve the stored choice
    val = get_dataset("synthetic", "val", task="labels", **opts)
    before = Predictor.from_checkpoint(run / "best.pt", device="cpu")
    after = Predictor.from_checkpoint(out, device="cpu")
    preds = [[p.instances(val[i][0]) for i in range(len(val))] for p in (before, after)]
    truth = [np.asarray(val[i][1]) for i in range(len(val))]
    scores = [label_scores(pr, truth, "f1@0.5+seg")["f1@0.5+seg"] for pr in preds]
    assert after.decoder.params == res.params and scores[1] >= scores[0] - 1e-9
    assert scores[1] == pytest.approx(res.score)
    assert stored == before.decoder.params
    with pytest.raises(InvalidValueError, match="validation split"):
        rechoose_decoding(run / "best.pt", "synthetic", split="test")
