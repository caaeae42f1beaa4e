"""U-Net 3+: parameter counts, full-scale wiring against a direct re-computation, full-scale deep
supervision, the classification-guided module and its gate, input sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seglab
from seglab.models import model_info
from seglab.models.unet3p import EMPTY_LOGIT, UNet3Plus

SMALL = {"channels": (4, 8, 16, 32, 64), "cat_channels": 4}


def _n_params(**kw: object) -> int:
    with torch.device("meta"):
        model = UNet3Plus(**kw)
    return sum(p.numel() for p in model.parameters())


def _reference_forward(m: UNet3Plus, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The paper's data flow written out directly: each skip pooled / interpolated by its own factor."""
    d = m.depth
    enc = [m.encoder.stem(x)]
    for down, conv in zip(m.encoder.downs, m.encoder.encoders):
        enc.append(conv(down(enc[-1])))
    dec = {d: enc[d]}
    for i in range(d - 1, -1, -1):
        stage = m.decoders[i]
        parts = [
            conv(F.max_pool2d(enc[k], 2 ** (i - k)) if k < i else enc[k])
            for k, conv in enumerate(stage.finer)
        ]
        for k, conv in zip(range(i + 1, d + 1), stage.coarser):
            parts.append(
                conv(F.interpolate(dec[k], scale_factor=2 ** (k - i), mode="bilinear", align_corners=False))
            )
        dec[i] = stage.fuse(torch.cat(parts, dim=1))
    out = m.heads[0](dec[0])
    side = [
        F.interpolate(m.heads[k](dec[k]), scale_factor=2**k, mode="bilinear", align_corners=False)
        for k in range(1, d + 1)
    ]
    return out, side


# -- parameter counts ------------------------------------------------------------------------------
def test_parameter_counts_exact_and_paper() -> None:
    full = _n_params(in_channels=3, num_classes=1)
    plain = _n_params(in_channels=3, num_classes=1, deep_supervision=False)
    assert full == 26_983_109
    assert plain == 26_965_249
    # four extra 3x3 heads: three on 320-channel decoder stages, one on the 1024-channel bottleneck
    assert full - plain == 3 * (320 * 9 + 1) + (1024 * 9 + 1)
    for n in (full, plain):
        assert abs(n - 26.97e6) / 26.97e6 < 0.01
    assert (
        _n_params(in_channels=3, num_classes=2, cgm=True) - _n_params(in_channels=3, num_classes=2)
        == 1024 * 2 + 2
    )


def test_stage_widths() -> None:
    with torch.device("meta"):
        model = UNet3Plus(in_channels=1)
    assert len(model.decoders) == 4
    for i, stage in enumerate(model.decoders):
        assert [b[0].in_channels for b in stage.finer] == [64, 128, 256, 512, 1024][: i + 1]
        assert [b[0].in_channels for b in stage.coarser] == [320] * (3 - i) + [1024]
        assert all(
            b[0].out_channels == 64 and b[0].kernel_size == (3, 3) for b in [*stage.finer, *stage.coarser]
        )
        assert stage.fuse[0].in_channels == stage.fuse[0].out_channels == 320
    assert [h.kernel_size for h in model.heads] == [(3, 3)] * 5


# -- wiring and deep supervision --------------------------------------------------------------------
@pytest.mark.parametrize("down", ["maxpool", "strided"])
def test_full_scale_wiring_matches_direct_computation(down: str) -> None:
    model = UNet3Plus(in_channels=2, num_classes=3, down=down, **SMALL).eval()
    x = torch.randn(2, 2, 32, 48)
    with torch.no_grad():
        res = model(x, aux=True)
        out, side = _reference_forward(model, x)
    torch.testing.assert_close(res.out, out)
    assert len(res.aux) == 4  # decoder levels 1, 2, 3, then the bottleneck
    for got, want in zip(res.aux, side):
        assert got.shape == (2, 3, 32, 48)
        torch.testing.assert_close(got, want)
    assert res.cls is None


def test_training_outputs_and_gradients() -> None:
    model = UNet3Plus(in_channels=1, num_classes=2, cgm=True, **SMALL)
    res = model(torch.randn(2, 1, 32, 32), aux=True)
    assert res.out.shape == (2, 2, 32, 32)
    assert [a.shape for a in res.aux] == [(2, 2, 32, 32)] * 4
    assert res.cls.shape == (2, 2)
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = sum(((o - 1) ** 2).mean() for o in [res.out, *res.aux])
    loss = loss + F.binary_cross_entropy_with_logits(res.cls, target)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []
    assert model.cgm[1].weight.grad.abs().sum() > 0  # the CGM is trained, no argmax in the way


def test_without_deep_supervision() -> None:
    model = UNet3Plus(in_channels=1, deep_supervision=False, **SMALL)
    assert len(model.heads) == 1
    res = model(torch.randn(1, 1, 32, 32), aux=True)
    assert res.aux == [] and res.cls is None


def test_aux_false_skips_side_heads_and_cgm_in_training() -> None:
    model = UNet3Plus(in_channels=1, cgm=True, **SMALL)
    calls: list[str] = []
    for k, head in enumerate(model.heads):
        head.register_forward_hook(lambda *_, k=k: calls.append(f"head{k}"))
    model.cgm.register_forward_hook(lambda *_: calls.append("cgm"))
    model(torch.randn(2, 1, 32, 32))
    assert calls == ["head0"]
    calls.clear()
    model(torch.randn(2, 1, 32, 32), aux=True)
    assert calls == ["head0", "head1", "head2", "head3", "head4", "cgm"]
    calls.clear()
    model.eval()  # the gate needs the CGM even without aux
    with torch.no_grad():
        model(torch.randn(1, 1, 32, 32))
    assert calls == ["head0", "cgm"]


# -- classification-guided module --------------------------------------------------------------------
def test_cgm_logits_are_max_pooled_bottleneck_scores() -> None:
    model = UNet3Plus(in_channels=1, num_classes=2, cgm=True, **SMALL).eval()
    bottleneck = {}
    model.encoder.encoders[-1].register_forward_hook(lambda m, i, o: bottleneck.__setitem__("x", o))
    with torch.no_grad():
        res = model(torch.randn(3, 1, 32, 32), aux=True)
        expected = model.cgm[1](bottleneck["x"]).amax(dim=(2, 3))
    torch.testing.assert_close(res.cls, expected)


def _forced_cgm_model(present: tuple[bool, ...]) -> UNet3Plus:
    model = UNet3Plus(in_channels=1, num_classes=len(present), cgm=True, **SMALL)
    with torch.no_grad():
        model.cgm[1].weight.zero_()
        model.cgm[1].bias.copy_(torch.tensor([8.0 if p else -8.0 for p in present]))
    return model


def test_cgm_gate_zeroes_absent_classes_in_eval_only() -> None:
    model = _forced_cgm_model((True, False))
    x = torch.randn(2, 1, 32, 32)
    model.eval()
    with torch.no_grad():
        gated = model(x, aux=True)
        plain = model(x)
        model.cgm_gate = False
        ungated = model(x, aux=True)
    torch.testing.assert_close(gated.out[:, 0], ungated.out[:, 0])
    assert (gated.out[:, 1] == EMPTY_LOGIT).all()
    assert torch.sigmoid(gated.out[:, 1]).max() == 0
    torch.testing.assert_close(plain, gated.out)
    for g, u in zip(gated.aux, ungated.aux):
        torch.testing.assert_close(g[:, 0], u[:, 0])
        assert (g[:, 1] == EMPTY_LOGIT).all()
    assert (ungated.out[:, 1] != EMPTY_LOGIT).all()
    torch.testing.assert_close(gated.cls, ungated.cls)
    # training mode never gates
    model.train()
    model.cgm_gate = True
    res = model(x, aux=True)
    assert (res.out != EMPTY_LOGIT).all()


def test_cgm_gate_is_per_image() -> None:
    model = _forced_cgm_model((True,))
    with torch.no_grad():
        model.cgm[1].weight.fill_(0.05)  # the score now follows the bottleneck, which differs per image
        model.cgm[1].bias.zero_()
    model.eval()
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        res = model(x, aux=True)
    ranked = res.cls[:, 0].sort().values
    model.cgm_threshold = float(torch.sigmoid((ranked[1] + ranked[2]) / 2))  # two images below, two above
    with torch.no_grad():
        res = model(x, aux=True)
    absent = torch.sigmoid(res.cls[:, 0]) < model.cgm_threshold
    assert absent.sum() == 2
    for n in range(4):
        assert bool((res.out[n] == EMPTY_LOGIT).all()) == bool(absent[n])


# -- input sizes and options -----------------------------------------------------------------------
def test_rejects_sizes_not_divisible_and_pads_on_request() -> None:
    model = UNet3Plus(in_channels=1, **SMALL)
    with pytest.raises(ValueError, match=r"divisible by 16.*H in \(16, 32\)"):
        model(torch.randn(1, 1, 24, 32))
    padded = UNet3Plus(in_channels=1, num_classes=2, pad=True, **SMALL)
    res = padded(torch.randn(2, 1, 24, 40), aux=True)
    assert res.out.shape == (2, 2, 24, 40)
    assert [a.shape for a in res.aux] == [(2, 2, 24, 40)] * 4


@pytest.mark.parametrize(
    "options",
    [
        {"depth": 2, "channels": (4, 8, 16)},
        {"depth": 3, "channels": None, "base_channels": 4, "norm": "group", "up": "nearest"},
        {"down": "pixel_unshuffle", "act": "leaky_relu", "norm": "instance"},
    ],
)
def test_depth_and_options(options: dict[str, object]) -> None:
    kw = {**SMALL, **options}
    model = UNet3Plus(in_channels=3, num_classes=2, **kw)
    res = model(torch.randn(2, 3, 32, 32), aux=True)
    assert res.out.shape == (2, 2, 32, 32)
    assert len(res.aux) == model.depth
    assert model.decoders[0].out_channels == 4 * (model.depth + 1)


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="'bilinear', 'nearest'"):
        UNet3Plus(up="transposed")
    with pytest.raises(ValueError, match="cat_channels"):
        UNet3Plus(cat_channels=0)
    with pytest.raises(ValueError, match="cgm_threshold"):
        UNet3Plus(cgm_threshold=1.5)
    with pytest.raises(ValueError, match="Did you mean 'maxpool'"):
        UNet3Plus(down="maxpol")


def test_registry_entry() -> None:
    info = model_info("unet3p")
    assert info.default_loss == "focal+ms_ssim+iou"
    model = seglab.create_model("unet3p", in_channels=1, num_classes=1, **info.test_options)
    assert isinstance(model, UNet3Plus) and model.cgm is not None


def test_overfits_a_tiny_batch_with_deep_supervision() -> None:
    x = torch.randn(2, 1, 32, 32)
    y = (x > 0.3).float()
    model = UNet3Plus(in_channels=1, num_classes=1, **SMALL)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        res = model(x, aux=True)
        loss = sum(nn.functional.binary_cross_entropy_with_logits(o, y) for o in [res.out, *res.aux])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
