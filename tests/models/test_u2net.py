from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import seglab
from seglab.layers import RSU
from seglab.layers.rsu import CeilMaxPool2d
from seglab.models import SegOutput, model_info
from seglab.models.u2net import U2NET_SMALL_CHANNELS, U2Net


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(
    ("name", "count", "paper"), [("u2net", 44_009_869, 44.01e6), ("u2net_small", 1_131_181, 1.13e6)]
)
def test_parameter_counts_match_paper(name: str, count: int, paper: float) -> None:
    m = seglab.create_model(name, in_channels=3, num_classes=1)
    assert n_params(m) == count
    assert abs(n_params(m) / paper - 1) < 0.01


def test_stage_layout_of_table_1() -> None:
    m = seglab.create_model("u2net")
    enc = [(s.height, s.dilated, s.in_channels, s.out_channels) for s in m.encoder]
    assert enc == [
        (7, False, 3, 64),
        (6, False, 64, 128),
        (5, False, 128, 256),
        (4, False, 256, 512),
        (4, True, 512, 512),
        (4, True, 512, 512),
    ]
    dec = [(s.height, s.dilated, s.in_channels, s.out_channels) for s in m.decoder]
    assert dec == [
        (4, True, 1024, 512),
        (4, False, 1024, 256),
        (5, False, 512, 128),
        (6, False, 256, 64),
        (7, False, 128, 64),
    ]
    assert [h.in_channels for h in m.sides] == [64, 64, 128, 256, 512, 512]
    assert all(h.kernel_size == (3, 3) for h in m.sides)
    assert m.fuse.kernel_size == (1, 1) and m.fuse.in_channels == 6
    assert isinstance(m.pool, CeilMaxPool2d)
    small = seglab.create_model("u2net_small")
    assert all(isinstance(s, RSU) and s.out_channels == 64 for s in [*small.encoder, *small.decoder])


def test_full_model_at_a_small_odd_size() -> None:
    m = seglab.create_model("u2net", num_classes=2).eval()
    with torch.no_grad():
        res = m(torch.randn(1, 3, 45, 19), aux=True)
    assert res.out.shape == (1, 2, 45, 19)
    assert len(res.aux) == 6 and all(a.shape == (1, 2, 45, 19) for a in res.aux)
    assert torch.isfinite(res.out).all()


@pytest.mark.parametrize("hw", [(301, 257), (1, 1), (2, 3), (5, 70), (33, 32)])
def test_any_input_size(hw: tuple[int, int]) -> None:
    m = seglab.create_model("u2net_small", width=0.25 if hw == (301, 257) else 0.125).eval()
    with torch.no_grad():
        res = m(torch.randn(1, 3, *hw), aux=True)
    assert res.out.shape == (1, 1, *hw)
    assert [a.shape for a in res.aux] == [torch.Size([1, 1, *hw])] * 6


def test_u2net_small_at_301x257() -> None:
    m = seglab.create_model("u2net_small", in_channels=1, num_classes=3).eval()
    with torch.no_grad():
        assert m(torch.randn(1, 1, 301, 257)).shape == (1, 3, 301, 257)


def test_aux_contract_order_and_fusion() -> None:
    """aux = [d1 .. d6]: side head i applied to De_1 .. De_5, En_6, resized to the input; the
    fused map is the 1x1 conv of their concatenation; model(x) is the fused map."""
    m = seglab.create_model("u2net", num_classes=2, width=0.125).eval()
    feats: dict[str, torch.Tensor] = {}
    for i, stage in enumerate(m.encoder):
        stage.register_forward_hook(lambda _m, _i, o, k=f"En{i + 1}": feats.__setitem__(k, o))
    for i, stage in enumerate(m.decoder):
        stage.register_forward_hook(lambda _m, _i, o, k=f"De{5 - i}": feats.__setitem__(k, o))
    x = torch.randn(2, 3, 53, 41)
    with torch.no_grad():
        res = m(x, aux=True)
        plain = m(x)
        assert isinstance(res, SegOutput) and res.cls is None
        assert feats["En6"].shape[-2:] == (2, 2) and feats["De1"].shape[-2:] == (53, 41)
        sources = [feats["De1"], feats["De2"], feats["De3"], feats["De4"], feats["De5"], feats["En6"]]
        for i, (side, src) in enumerate(zip(res.aux, sources)):
            expected = m.sides[i](src)
            if i > 0:
                expected = F.interpolate(expected, size=(53, 41), mode="bilinear", align_corners=False)
            torch.testing.assert_close(side, expected)
        torch.testing.assert_close(res.out, m.fuse(torch.cat(res.aux, 1)))
        torch.testing.assert_close(plain, res.out)


def test_decoder_receives_deeper_map_then_skip() -> None:
    """De_5's input is cat(resize(En_6 -> En_5 size), En_5), the paper's order."""
    m = seglab.create_model("u2net_small", width=0.125).eval()
    seen: dict[str, torch.Tensor] = {}
    m.encoder[4].register_forward_hook(lambda _m, _i, o: seen.__setitem__("En5", o))
    m.encoder[5].register_forward_hook(lambda _m, _i, o: seen.__setitem__("En6", o))
    m.decoder[0].register_forward_pre_hook(lambda _m, i: seen.__setitem__("in", i[0]))
    with torch.no_grad():
        m(torch.randn(1, 3, 70, 100))
    en5, en6 = seen["En5"], seen["En6"]
    assert en5.shape[-2:] == (5, 7) and en6.shape[-2:] == (3, 4)
    expected = torch.cat([F.interpolate(en6, size=(5, 7), mode="bilinear", align_corners=False), en5], 1)
    torch.testing.assert_close(seen["in"], expected)


def test_train_step_lowers_deep_supervision_bce() -> None:
    torch.manual_seed(0)
    m = seglab.create_model("u2net_small", width=0.25)
    x = torch.randn(2, 3, 32, 32)
    y = (x[:, :1] > 0).float()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)

    def loss_fn() -> torch.Tensor:
        res = m(x, aux=True)
        return sum(F.binary_cross_entropy_with_logits(t, y) for t in [res.out, *res.aux])

    first = loss_fn()
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    assert loss_fn().item() < 0.9 * first.item()


def test_deep_supervision_loss_equals_seven_bce_terms() -> None:
    """The registered default ("bce", wrapped by the trainer in DeepSupervisionLoss with equal
    weights) is the paper's loss: BCE(fused) + sum of BCE(side_i), i = 1..6."""
    from seglab.losses import BCELoss, DeepSupervisionLoss, build

    m = seglab.create_model("u2net_small", width=0.125)
    x = torch.randn(2, 3, 29, 23)
    mask = torch.randint(0, 2, (2, 29, 23))  # (N, H, W) int64, as the datasets yield
    y = mask[:, None].float()
    res = m(x, aux=True)
    by_hand = sum(F.binary_cross_entropy_with_logits(t, y) for t in [res.out, *res.aux])
    torch.testing.assert_close(DeepSupervisionLoss(BCELoss(), weights="equal")(res, mask), by_hand)
    for name in ("u2net", "u2net_small"):
        spec = model_info(name).default_loss
        assert spec == "bce"
        torch.testing.assert_close(DeepSupervisionLoss(build(spec), weights="equal")(res, mask), by_hand)


def test_initial_logits_are_small() -> None:
    """Heads keep PyTorch's fan-in init (the authors' choice): the first BCE is near log 2."""
    m = seglab.create_model("u2net_small", width=0.25)
    res = m(torch.rand(2, 3, 64, 64), aux=True)
    assert all(t.abs().mean() < 2 for t in [res.out, *res.aux])


def test_batch_one_tiny_training_input_has_clear_error() -> None:
    m = seglab.create_model("u2net_small", width=0.125)
    with pytest.raises(ValueError, match=r"deepest maps.*1x1.*batch of 2"):
        m(torch.randn(1, 3, 32, 20))
    assert m(torch.randn(2, 3, 32, 20)).shape == (2, 1, 32, 20)
    assert m(torch.randn(1, 3, 33, 20)).shape == (1, 1, 33, 20)  # deepest map 2x1
    m.eval()
    assert m(torch.randn(1, 3, 32, 20)).shape == (1, 1, 32, 20)
    inst = seglab.create_model("u2net_small", width=0.125, norm="instance").eval()
    with pytest.raises(ValueError, match="instance norm"):
        inst(torch.randn(2, 3, 16, 16))


def test_norm_and_act_options() -> None:
    m = seglab.create_model("u2net_small", width=0.125, norm="group", act="silu")
    assert any(isinstance(x, nn.GroupNorm) for x in m.modules())
    assert not any(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    assert m(torch.randn(1, 3, 40, 20)).shape == (1, 1, 40, 20)
    with pytest.raises(ValueError, match="group norm with one channel per group"):
        m(torch.randn(1, 3, 20, 20))  # width 0.125 leaves 2 channels, i.e. 2 groups of 1
    with pytest.raises(ValueError, match="Did you mean 'relu'"):
        seglab.create_model("u2net", act="rellu")


def test_width_scales_every_stage() -> None:
    m = seglab.create_model("u2net", width=0.5)
    assert [s.out_channels for s in m.encoder] == [32, 64, 128, 256, 256, 256]
    assert [s.out_channels for s in m.decoder] == [256, 128, 64, 32, 32]
    assert m.decoder[0].in_channels == 512
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="width"):
            seglab.create_model("u2net_small", width=bad)
    for bad in (True, "1", None):
        with pytest.raises(TypeError, match="width"):
            seglab.create_model("u2net_small", width=bad)


def test_custom_channel_tables_are_checked() -> None:
    enc, dec = U2NET_SMALL_CHANNELS
    m = U2Net(1, 2, encoder_channels=[(2, 4)] * 6, decoder_channels=[(2, 3)] * 5)
    assert m(torch.randn(2, 1, 40, 40)).shape == (2, 2, 40, 40)
    with pytest.raises(ValueError, match="6 \\(mid, out\\) channel pairs"):
        U2Net(3, 1, encoder_channels=enc[:5], decoder_channels=dec)
    with pytest.raises(ValueError, match="positive"):
        U2Net(3, 1, encoder_channels=enc, decoder_channels=[(0, 4)] * 5)
    with pytest.raises(TypeError, match="pairs"):
        U2Net(3, 1, encoder_channels=[16] * 6, decoder_channels=dec)


def test_export_with_dynamic_height_and_width() -> None:
    """One exported graph serves every size >= 33 (deepest maps at least 2x2), odd ones included."""
    m = seglab.create_model("u2net_small", width=0.125).eval()
    dims = {2: torch.export.Dim("h", min=33, max=2048), 3: torch.export.Dim("w", min=33, max=2048)}
    ep = torch.export.export(
        m, (torch.randn(2, 3, 64, 48),), dynamic_shapes=({**dims, 0: torch.export.Dim("n", min=1, max=64)},)
    )
    graph = ep.module()
    with torch.no_grad():
        for n, hw in [(1, (101, 77)), (3, (33, 40))]:
            x = torch.randn(n, 3, *hw)
            torch.testing.assert_close(graph(x), m(x), rtol=1e-4, atol=1e-5)


def test_registry_metadata() -> None:
    info = model_info("u2net")
    assert "Qin" in info.paper and "2020" in info.paper
    assert "any size" in info.input_rule
    assert "U²-Net†" in model_info("u2net_small").paper
