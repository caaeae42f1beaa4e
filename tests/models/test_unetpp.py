"""U-Net++: parameter counts, nested wiring (against MONAI), deep supervision, pruning, input sizes."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import seglab
from seglab.models import SegOutput, model_info
from seglab.models.unetpp import UNetPlusPlus
from tests._optional import peer

SMALL = (4, 8, 16, 32, 64)


def _n_params(**kw: object) -> int:
    with torch.device("meta"):
        model = UNetPlusPlus(**kw)
    return sum(p.numel() for p in model.parameters())


def _run_log(model: nn.Module) -> tuple[list[str], list[torch.utils.hooks.RemovableHandle]]:
    """Record the names of the encoder stages, nodes and heads that run (in order)."""
    log: list[str] = []
    handles = []
    for prefix, container in (
        ("enc", model.encoder.encoders),
        ("node", model.decoder.nodes),
        ("head", model.heads),
    ):
        items = container.items() if isinstance(container, nn.ModuleDict) else enumerate(container)
        for key, module in items:
            handles.append(module.register_forward_hook(lambda *_, n=f"{prefix}{key}": log.append(n)))
    return log, handles


# -- parameter counts ------------------------------------------------------------------------------
def test_parameter_counts_exact_and_paper() -> None:
    assert _n_params(in_channels=1, num_classes=1) == 9_045_348
    assert _n_params(in_channels=1, num_classes=1, norm="none") == 9_041_700
    assert _n_params(in_channels=1, num_classes=1, base_channels=64) == 36_164_292
    assert _n_params(in_channels=1, num_classes=1, base_channels=64, norm="none") == 36_156_996
    for kw, paper in (({}, 9.04e6), ({"base_channels": 64}, 36.16e6)):
        for norm in ("batch", "none"):
            n = _n_params(in_channels=1, num_classes=1, norm=norm, **kw)
            assert abs(n - paper) / paper < 0.01, (kw, norm, n)
    # the paper's table: deep supervision adds only three 1x1 heads (3 * (32 + 1))
    assert (
        _n_params(in_channels=1, num_classes=1)
        - _n_params(in_channels=1, num_classes=1, deep_supervision=False)
        == 99
    )


def test_node_widths_follow_the_dense_rule() -> None:
    model = UNetPlusPlus(in_channels=1, channels=SMALL)
    assert set(model.decoder.nodes) == {f"{i}_{j}" for j in range(1, 5) for i in range(5 - j)}
    for key, node in model.decoder.nodes.items():
        i, j = map(int, key.split("_"))
        assert node.in_channels == (j + 1) * SMALL[i]
        assert node.out_channels == SMALL[i]
    assert len(model.heads) == 4


# -- wiring: identical to MONAI's BasicUNetPlusPlus where the architectures coincide ----------------
def _monai_key(key: str) -> str | None:
    """Our state-dict key for a MONAI BasicUNetPlusPlus key (features with f0 == f1, halving above)."""
    parts = key.split(".")
    head = parts[0]
    _, a, b = head.rsplit("_", 2) if head.count("_") >= 2 else (None, None, None)
    if head.startswith("final_conv_0_"):
        return f"heads.{int(head[-1]) - 1}.{parts[-1]}"
    rest = parts[1:]
    if head.startswith("conv_"):
        target = "encoder.stem" if a == "0" else f"encoder.encoders.{int(a) - 1}"
        if rest[0] == "convs":
            rest = rest[1:]
    elif head.startswith("upcat_"):
        if rest[0] == "upsample":
            return f"decoder.ups.{a}_{b}.op.{rest[-1]}"
        target, rest = f"decoder.nodes.{a}_{b}", rest[1:]
    else:
        return None
    block = rest[0].split("_")[1]  # conv_0 / conv_1
    layer = "0" if rest[1] == "conv" else "1"
    return f"{target}.{block}.{layer}.{rest[-1]}"


@pytest.mark.parametrize("train", [False, True])
def test_matches_monai_basic_unetplusplus(train: bool) -> None:
    monai_nets = peer("monai.networks.nets")
    ref = monai_nets.BasicUNetPlusPlus(
        spatial_dims=2,
        in_channels=2,
        out_channels=3,
        features=(8, 8, 16, 32, 64, 8),
        deep_supervision=True,
        act="relu",
        norm="batch",
        bias=False,
    )
    ours = UNetPlusPlus(in_channels=2, num_classes=3, channels=(8, 8, 16, 32, 64))
    mapped = {_monai_key(k): v for k, v in ref.state_dict().items()}
    assert None not in mapped
    assert set(mapped) == set(ours.state_dict())
    ours.load_state_dict(mapped)
    ref.train(train)
    ours.train(train)
    x = torch.randn(2, 2, 32, 48)
    with torch.no_grad():
        expected = ref(x)  # [X^{0,1}, ..., X^{0,4}] heads
        res = ours(x, aux=True)
    torch.testing.assert_close(res.out, expected[-1], rtol=1e-4, atol=1e-5)
    assert len(res.aux) == 3  # X^{0,3}, X^{0,2}, X^{0,1}: nearest to the output first
    for got, want in zip(res.aux, expected[-2::-1]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_each_node_sees_its_level_and_the_upsampled_node_below(depth: int) -> None:
    model = UNetPlusPlus(in_channels=1, depth=depth, base_channels=4).eval()
    outputs: dict[str, torch.Tensor] = {}
    inputs: dict[str, torch.Tensor] = {}
    ups: dict[str, torch.Tensor] = {}
    handles = [model.encoder.stem.register_forward_hook(lambda m, i, o: outputs.__setitem__("0_0", o))]
    for k, enc in enumerate(model.encoder.encoders, 1):
        handles.append(enc.register_forward_hook(lambda m, i, o, k=k: outputs.__setitem__(f"{k}_0", o)))
    for key, node in model.decoder.nodes.items():
        handles.append(node.register_forward_hook(lambda m, i, o, key=key: outputs.__setitem__(key, o)))
        handles.append(node.register_forward_hook(lambda m, i, o, key=key: inputs.__setitem__(key, i[0])))
        handles.append(
            model.decoder.ups[key].register_forward_hook(
                lambda m, i, o, key=key: ups.__setitem__(key, (i[0], o))
            )
        )
    with torch.no_grad():
        model(torch.randn(1, 1, 2**depth * 2, 2**depth * 2))
    for h in handles:
        h.remove()
    assert len(inputs) == depth * (depth + 1) // 2
    for key, got in inputs.items():
        i, j = map(int, key.split("_"))
        up_in, up_out = ups[key]
        assert up_in is outputs[f"{i + 1}_{j - 1}"]
        expected = torch.cat([outputs[f"{i}_{c}"] for c in range(j)] + [up_out], dim=1)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


# -- deep supervision outputs -----------------------------------------------------------------------
def test_aux_contract_and_order_in_training() -> None:
    model = UNetPlusPlus(in_channels=1, num_classes=2, channels=SMALL)
    tops: dict[int, torch.Tensor] = {}
    for j in range(1, 5):
        model.decoder.nodes[f"0_{j}"].register_forward_hook(lambda m, i, o, j=j: tops.__setitem__(j, o))
    res = model(torch.randn(2, 1, 32, 32), aux=True)
    assert isinstance(res, SegOutput) and res.cls is None
    assert res.out.shape == (2, 2, 32, 32)
    assert [a.shape for a in res.aux] == [(2, 2, 32, 32)] * 3
    torch.testing.assert_close(res.out, model.heads[3](tops[4]))
    for j, a in zip((3, 2, 1), res.aux):  # nearest to the output first
        torch.testing.assert_close(a, model.heads[j - 1](tops[j]))


def test_deep_supervision_trains_every_head_and_node() -> None:
    model = UNetPlusPlus(in_channels=1, num_classes=1, channels=SMALL)
    res = model(torch.randn(2, 1, 32, 32), aux=True)
    (sum(((o - 1) ** 2).mean() for o in [res.out, *res.aux])).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_without_deep_supervision_single_head_no_aux() -> None:
    model = UNetPlusPlus(in_channels=1, channels=SMALL, deep_supervision=False)
    assert len(model.heads) == 1
    res = model(torch.randn(1, 1, 32, 32), aux=True)
    assert res.aux == []
    with pytest.raises(ValueError, match="deep_supervision=True"):
        model.prune(2)
    with pytest.raises(ValueError, match="deep_supervision=True"):
        UNetPlusPlus(channels=SMALL, deep_supervision=False, ds_output="average")
    model.prune(4)  # the whole model is always allowed
    assert model.prune_level is None


def test_eval_outputs_final_and_average() -> None:
    model = UNetPlusPlus(in_channels=1, num_classes=2, channels=SMALL).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        res = model(x, aux=True)
        plain = model(x)
        model.ds_output = "average"
        avg = model(x)
        avg_res = model(x, aux=True)
    torch.testing.assert_close(plain, res.out)
    torch.testing.assert_close(avg, torch.stack([*res.aux, res.out]).mean(0))
    torch.testing.assert_close(avg_res.out, avg)
    assert len(avg_res.aux) == 3
    with pytest.raises(ValueError, match="Did you mean 'average'"):
        model.ds_output = "averge"


def test_eval_without_aux_runs_only_the_needed_head() -> None:
    model = UNetPlusPlus(in_channels=1, channels=SMALL).eval()
    log, handles = _run_log(model)
    with torch.no_grad():
        model(torch.randn(1, 1, 32, 32))
    assert [n for n in log if n.startswith("head")] == ["head3"]
    log.clear()
    with torch.no_grad():
        model(torch.randn(1, 1, 32, 32), aux=True)
    assert [n for n in log if n.startswith("head")] == ["head0", "head1", "head2", "head3"]
    for h in handles:
        h.remove()


# -- pruning -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("level", [1, 2, 3])
def test_pruned_output_equals_the_sub_network_head(level: int) -> None:
    model = UNetPlusPlus(in_channels=1, num_classes=2, channels=SMALL).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        full = model(x, aux=True)
        model.prune(level)
        pruned = model(x, aux=True)
        model.ds_output = "average"
        pruned_avg = model(x)
    heads = [*full.aux[::-1], full.out]  # X^{0,1}, ..., X^{0,4}
    torch.testing.assert_close(pruned.out, heads[level - 1])
    assert len(pruned.aux) == level - 1
    for got, want in zip(pruned.aux, heads[level - 2 :: -1] if level > 1 else []):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(pruned_avg, torch.stack(heads[:level]).mean(0))


@pytest.mark.parametrize("level", [1, 2, 3, 4])
def test_pruning_skips_the_deeper_nodes(level: int) -> None:
    model = UNetPlusPlus(in_channels=1, channels=SMALL, prune=level).eval()
    log, handles = _run_log(model)
    with torch.no_grad():
        model(torch.randn(1, 1, 32, 32))
    ran_nodes = {n[4:] for n in log if n.startswith("node")}
    assert ran_nodes == {f"{i}_{j}" for j in range(1, level + 1) for i in range(level + 1 - j)}
    assert [n for n in log if n.startswith("enc")] == [f"enc{k}" for k in range(level)]
    assert [n for n in log if n.startswith("head")] == [f"head{level - 1}"]
    # training ignores pruning: the whole grid runs and all heads are supervised
    log.clear()
    model.train()
    res = model(torch.randn(2, 1, 32, 32), aux=True)
    assert len({n for n in log if n.startswith("node")}) == 10
    assert len(res.aux) == 3
    for h in handles:
        h.remove()


def test_pruning_lowers_flops() -> None:
    model = UNetPlusPlus(in_channels=1, channels=SMALL).eval()
    x = torch.randn(1, 1, 64, 64)
    flops = []
    for level in (1, 2, 3, 4, None):
        model.prune(level)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model(x)
        flops.append(counter.get_total_flops())
    assert flops[0] < flops[1] < flops[2] < flops[3]
    assert flops[3] == flops[4]


def test_prune_at_construction_equals_prune_method_and_validates() -> None:
    a = UNetPlusPlus(in_channels=1, channels=SMALL, prune=2).eval()
    b = UNetPlusPlus(in_channels=1, channels=SMALL).eval()
    b.load_state_dict(a.state_dict())
    assert b.prune(2) is b and b.active_level == 2
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))
    b.prune(None)
    assert b.active_level == 4
    for bad in (0, 5, True, "2", 2.0):
        with pytest.raises(ValueError, match=r"prune level must be an integer in 1\.\.4"):
            b.prune(bad)
    with pytest.raises(ValueError, match="prune level"):
        seglab.create_model("unetpp", channels=SMALL, prune=7)


# -- input sizes and options -----------------------------------------------------------------------
def test_rejects_sizes_not_divisible_and_pads_on_request() -> None:
    model = UNetPlusPlus(in_channels=1, channels=SMALL)
    with pytest.raises(ValueError, match=r"divisible by 16.*H in \(32, 48\), W in \(32, 48\)"):
        model(torch.randn(1, 1, 40, 36))
    padded = UNetPlusPlus(in_channels=1, num_classes=2, channels=SMALL, pad=True)
    res = padded(torch.randn(2, 1, 40, 36), aux=True)
    assert res.out.shape == (2, 2, 40, 36)
    assert [a.shape for a in res.aux] == [(2, 2, 40, 36)] * 3


@pytest.mark.parametrize(
    "options",
    [
        {"up": "bilinear"},
        {"up": "nearest", "down": "strided"},
        {"up": "pixel_shuffle", "down": "pixel_unshuffle"},
        {"norm": "group", "act": "gelu", "dropout": 0.2},
        {"norm": "instance", "depth": 2, "base_channels": 4, "channels": None},
    ],
)
def test_sampling_and_norm_options(options: dict[str, object]) -> None:
    kw = {"channels": SMALL, **options}
    model = UNetPlusPlus(in_channels=3, num_classes=2, **kw)
    x = torch.randn(2, 3, 32, 32)
    res = model(x, aux=True)
    assert res.out.shape == (2, 2, 32, 32)
    assert len(res.aux) == model.depth - 1
    model.eval()
    assert model(x).shape == (2, 2, 32, 32)


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="Did you mean 'bilinear'"):
        UNetPlusPlus(up="bilinaer")
    with pytest.raises(ValueError, match="Did you mean 'final'"):
        UNetPlusPlus(channels=SMALL, ds_output="fina")
    with pytest.raises(ValueError, match="depth"):
        UNetPlusPlus(depth=6)
    with pytest.raises(ValueError, match="dropout"):
        UNetPlusPlus(channels=SMALL, dropout=1.0)


def test_registry_entry() -> None:
    info = model_info("unetpp")
    assert info.default_loss == "0.5*bce+dice"
    model = seglab.create_model("unetpp", in_channels=1, num_classes=1, **info.test_options)
    assert isinstance(model, UNetPlusPlus) and model.channels == (8, 16, 32, 64, 128)


def test_overfits_a_tiny_batch_with_deep_supervision() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 1, 32, 32)
    y = (x > 0.3).float()
    model = UNetPlusPlus(in_channels=1, num_classes=1, channels=SMALL)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        res = model(x, aux=True)
        loss = sum(nn.functional.binary_cross_entropy_with_logits(o, y) for o in [res.out, *res.aux])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]
