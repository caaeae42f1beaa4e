"""Instance encodings: targets against brute-force definitions, round trips, losses, registry, params."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seglab.errors import MissingExtraError
from seglab.instances import (
    BoundaryEncoding,
    DecodeParams,
    DistanceEncoding,
    DistanceLoss,
    boundary_classes,
    encoding_from_dict,
    get_encoding,
    normalized_distance,
)
from seglab.metrics import matching, object_errors
from tests._optional import peer
from tests.metrics._peers import random_labels, touching_nuclei

peer("skimage")


def onehot(target: torch.Tensor, k: int) -> torch.Tensor:
    return F.one_hot(target, k).permute(2, 0, 1).float()


def as_probs(enc, labels: np.ndarray) -> torch.Tensor:
    """The encoding's target as the perfect model output (probabilities)."""
    t = enc.encode(labels)
    return onehot(t, 3) if enc.name == "boundary" else t


# -- targets ------------------------------------------------------------------------------------------------


def brute_boundary(labels: np.ndarray, width: int) -> np.ndarray:
    h, w = labels.shape
    out = np.zeros((h, w), np.int64)
    for y, x in np.argwhere(labels > 0):
        win = labels[max(y - width, 0) : y + width + 1, max(x - width, 0) : x + width + 1]
        out[y, x] = 2 if np.any(win != labels[y, x]) else 1
    return out


def brute_distance(labels: np.ndarray) -> np.ndarray:
    """1 + distance to the object's own outline (4-neighbour of another label), over the object's maximum."""
    h, w = labels.shape
    pad = np.pad(labels, 1, mode="edge")
    outline = np.zeros((h, w), bool)
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        outline |= pad[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] != labels
    out = np.zeros((h, w))
    for label in np.unique(labels[labels > 0]):
        pts = np.argwhere(outline & (labels == label))
        for y, x in np.argwhere(labels == label):
            out[y, x] = 1 + np.sqrt(((pts - [y, x]) ** 2).sum(1)).min()
        out[labels == label] /= out[labels == label].max()
    return out


@pytest.mark.parametrize("width", [1, 2, 3])
def test_boundary_classes_match_the_definition(width: int) -> None:
    rng = np.random.default_rng(width)
    for _ in range(10):
        labels = random_labels(rng, 20, 26, 8)
        np.testing.assert_array_equal(boundary_classes(labels, width), brute_boundary(labels, width))


def test_normalized_distance_matches_the_definition() -> None:
    rng = np.random.default_rng(0)
    for _ in range(10):
        labels = random_labels(rng, 20, 26, 8)
        d = normalized_distance(labels)
        assert d.dtype == np.float32
        np.testing.assert_allclose(d, brute_distance(labels), atol=1e-6)
        for label in np.unique(labels[labels > 0]):
            assert d[labels == label].max() == 1.0
    assert normalized_distance(np.ones((3, 4), int)).tolist() == [[1.0] * 4] * 3  # no outline at all


@pytest.mark.parametrize("enc", [BoundaryEncoding(width=2), DistanceEncoding()], ids=["boundary", "distance"])
def test_targets_follow_rotations_and_flips(enc) -> None:
    """A rotated or flipped crop gets the rotated target: computed from the labels after augmentation."""
    labels = touching_nuclei(np.random.default_rng(1), 48, 64)
    base = enc.encode(labels)
    for k in (1, 2, 3):
        torch.testing.assert_close(
            enc.encode(np.rot90(labels, k).copy()), torch.rot90(base, k, dims=(-2, -1))
        )
    torch.testing.assert_close(enc.encode(labels[:, ::-1].copy()), base.flip(-1))


def test_encode_types_and_shapes() -> None:
    labels = touching_nuclei(np.random.default_rng(2), 32, 40)
    b, d = (
        BoundaryEncoding().encode(labels),
        DistanceEncoding().encode(torch.from_numpy(labels).to(torch.int32)),
    )
    assert b.dtype == torch.int64 and b.shape == (32, 40) and set(b.unique().tolist()) == {0, 1, 2}
    assert d.dtype == torch.float32 and d.shape == (2, 32, 40)
    torch.testing.assert_close(d[0], torch.from_numpy(labels > 0).float())
    torch.testing.assert_close(DistanceEncoding().encode(labels.astype(np.uint16)), d)
    with pytest.raises(TypeError, match="integer label image"):
        BoundaryEncoding().encode(labels.astype(float))
    with pytest.raises(ValueError, match=r"one \(H, W\) label image"):
        DistanceEncoding().encode(labels[None])


# -- decoding -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["boundary", "distance"])
def test_decode_recovers_touching_nuclei(name: str) -> None:
    enc = get_encoding(name)
    labels = touching_nuclei(np.random.default_rng(3), 96, 128)
    pred = enc.decode(as_probs(enc, labels))
    assert pred.dtype == np.uint32 and pred.shape == labels.shape
    assert np.unique(pred).tolist() == list(range(int(pred.max()) + 1))  # labels 1..n
    s = matching(pred, labels, thresh=0.5)
    assert s.fp == 0 and s.fn == 0 and s.mean_matched_iou > 0.95, s
    assert object_errors(pred, labels).counts()["merges"] == 0
    # the same nuclei without separation would merge: the encodings are what splits them
    from scipy import ndimage

    merges = object_errors(ndimage.label(labels > 0)[0], labels).counts()["merges"]
    assert merges > 3


def test_decode_batches_logits_and_params() -> None:
    enc = DistanceEncoding()
    labels = [touching_nuclei(np.random.default_rng(s), 40, 48) for s in (4, 5)]
    probs = torch.stack([enc.encode(lab) for lab in labels]).clamp(1e-4, 1 - 1e-4)
    batch = enc.decode(probs)
    assert batch.shape == (2, 40, 48)
    for i in range(2):
        np.testing.assert_array_equal(batch[i], enc.decode(probs[i].numpy()))
    np.testing.assert_array_equal(enc.decode(torch.logit(probs), from_logits=True), batch)
    assert enc.decode(probs[:0]).shape == (0, 40, 48)
    # min_size removes objects; fg_threshold above every probability leaves nothing
    assert enc.decode(probs[0], DecodeParams(min_size=10_000)).max() == 0
    assert enc.decode(probs[0], DecodeParams(fg_threshold=0.9999)).max() == 0
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        enc.decode(torch.zeros(3, 8, 8))


def test_decode_without_scikit_image(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'seglab\[instance\]'"):
        DistanceEncoding().decode(torch.zeros(2, 8, 8))


# -- losses ------------------------------------------------------------------------------------------------------


def test_boundary_loss_is_multiclass_ce_dice() -> None:
    enc = BoundaryEncoding()
    target = enc.encode(touching_nuclei(np.random.default_rng(6), 32, 32))[None]
    logits = torch.randn(1, 3, 32, 32, requires_grad=True)
    terms = enc.loss().terms(logits, target)
    assert set(terms) == {"loss", "ce", "dice"}
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits, target))
    terms["loss"].backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("regression", ["smooth_l1", "mse"])
def test_distance_loss_terms(regression: str) -> None:
    enc = DistanceEncoding()
    target = torch.stack([enc.encode(touching_nuclei(np.random.default_rng(s), 24, 24)) for s in (7, 8)])
    logits = torch.randn(2, 2, 24, 24, requires_grad=True)
    loss = enc.loss(regression=regression, dist_weight=2.0)
    terms = loss.terms(logits, target)
    d = torch.sigmoid(logits[:, 1])
    reg = F.mse_loss(d, target[:, 1]) if regression == "mse" else F.smooth_l1_loss(d, target[:, 1], beta=0.1)
    torch.testing.assert_close(terms["dist"], reg.detach())
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], target[:, 0])
    torch.testing.assert_close(terms["bce"], bce.detach())
    torch.testing.assert_close(terms["loss"], terms["bce"] + terms["dice"] + 2.0 * reg)
    loss(logits, target).backward()
    assert torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        loss(logits[:, :1], target[:, :1])
    with pytest.raises(ValueError, match="regression"):
        DistanceLoss(regression="l1")


def test_distance_loss_in_deep_supervision() -> None:
    from seglab.losses import DeepSupervisionLoss
    from seglab.models import SegOutput

    enc = DistanceEncoding()
    target = enc.encode(touching_nuclei(np.random.default_rng(9), 32, 32))[None]
    ds = DeepSupervisionLoss(enc.loss(), weights="halving")
    out = SegOutput(torch.randn(1, 2, 32, 32), [torch.randn(1, 2, 16, 16)], None)
    terms = ds.terms(out, target)
    assert {"loss", "out", "aux0", "bce", "dice", "dist"} <= set(terms)


# -- registry and parameters ---------------------------------------------------------------------------------


def test_registry_and_round_trips() -> None:
    enc = get_encoding("boundary", width=3)
    assert (enc.out_channels, enc.activation, enc.width) == (3, "softmax", 3)
    assert (
        encoding_from_dict(enc.to_dict()) == enc and encoding_from_dict(enc.to_dict()) != BoundaryEncoding()
    )
    assert encoding_from_dict({"name": "distance"}).out_channels == 2
    assert repr(enc) == "BoundaryEncoding(width=3)"
    with pytest.raises(ValueError, match="Did you mean 'boundary'"):
        get_encoding("bondary")
    with pytest.raises(TypeError, match="does not take"):
        get_encoding("distance", width=2)
    with pytest.raises(ValueError, match="width"):
        get_encoding("boundary", width=0)
    with pytest.raises(ValueError, match="'name'"):
        encoding_from_dict({"width": 2})


def test_decode_params_validation_and_dict() -> None:
    p = DecodeParams(fg_threshold=np.float32(0.25), seed_threshold=0.6, min_seed_size=np.int64(3), min_size=0)
    assert p.to_dict() == {
        "fg_threshold": 0.25, "seed_threshold": 0.6, "min_seed_size": 3, "min_size": 0, "clear_border": False,
    }  # fmt: skip
    assert DecodeParams.from_dict(p.to_dict()) == p and DecodeParams.from_dict({}) == DecodeParams()
    for bad in (
        {"fg_threshold": 1.0},
        {"seed_threshold": float("nan")},
        {"min_seed_size": 0},
        {"min_size": -1},
    ):
        with pytest.raises(ValueError):
            DecodeParams(**bad)
    with pytest.raises(TypeError):
        DecodeParams(min_size=2.5)
    with pytest.raises(TypeError, match="clear_border"):
        DecodeParams(clear_border=1)
    assert DecodeParams(clear_border=np.bool_(True)).clear_border is True
    with pytest.raises(ValueError, match="unknown decoding parameter"):
        DecodeParams.from_dict({"threshold": 0.5})
