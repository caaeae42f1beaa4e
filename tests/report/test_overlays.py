"""Overlays: display scaling, tints, error colours and panels."""

import numpy as np
import pytest
from PIL import Image

from seglab.report.overlays import (
    CLASS_COLORS,
    ERROR_COLORS,
    colorize,
    comparison_panel,
    error_map,
    overlay_mask,
    save_png,
    to_display,
)


def test_to_display_stretches_16_bit_and_handles_channels():
    img = np.linspace(0, 60000, 100 * 80).reshape(1, 100, 80).astype(np.uint16)
    out = to_display(img)
    assert out.shape == (100, 80, 3) and out.dtype == np.uint8
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 255
    assert np.array_equal(out[..., 0], out[..., 1])  # grey
    rgb = to_display(np.random.default_rng(0).random((3, 10, 12)))
    assert rgb.shape == (10, 12, 3) and not np.array_equal(rgb[..., 0], rgb[..., 1])
    assert to_display(np.full((5, 5), 3.0)).max() == 0  # constant image: no division by zero
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        to_display(np.zeros((1, 2, 3, 4)))


def test_error_map_colours_each_case():
    truth = np.array([[0, 1, 1, 2], [0, 0, 2, 0]])
    pred = np.array([[1, 1, 0, 1], [0, 0, 2, 0]])
    out = error_map(truth, pred)
    assert out[0, 0].tolist() == list(ERROR_COLORS["fp"])
    assert out[0, 1].tolist() == list(ERROR_COLORS["tp"])
    assert out[0, 2].tolist() == list(ERROR_COLORS["fn"])
    assert out[0, 3].tolist() == list(ERROR_COLORS["wrong_class"])
    assert out[1, 2].tolist() == list(ERROR_COLORS["tp"])
    assert out[1, 0].tolist() == [0, 0, 0]
    assert ERROR_COLORS["fp"] != ERROR_COLORS["fn"]
    with pytest.raises(ValueError, match="differ in size"):
        error_map(truth, pred[:, :2])


def test_error_map_shows_dimmed_image_under_background():
    img = np.full((1, 2, 4), 100.0)
    img[0, 0, 0] = 0.0
    out = error_map(np.zeros((2, 4), int), np.zeros((2, 4), int), img, dim=0.5)
    assert out.max() <= 128 and out[1, 1, 0] > 0


def test_overlay_and_colorize():
    img = np.zeros((1, 8, 8))
    mask = np.zeros((8, 8), int)
    mask[2:6, 2:6] = 1
    over = overlay_mask(img, mask, alpha=1.0)
    assert over[3, 3].tolist() == list(CLASS_COLORS[1])
    assert over[0, 0].tolist() == [0, 0, 0]
    col = colorize(mask)
    assert col[3, 3].tolist() == list(CLASS_COLORS[1]) and col[0, 0].tolist() == [0, 0, 0]
    many = colorize(np.array([[20, 20]]))
    assert many[0, 0].tolist() == many[0, 1].tolist() and many[0, 0].any()  # stable colour beyond the palette


def test_panel_layout_and_png(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.random((1, 60, 100))
    truth = (rng.random((60, 100)) > 0.5).astype(int)
    panel = comparison_panel(img, truth, 1 - truth, max_width=50)
    # four 30x50 tiles, 2 per row for wide images, with title bars and gaps
    assert panel.shape[1] == 2 * 50 + 6 and panel.shape[0] > 2 * 30
    two = comparison_panel(img, None, truth, max_width=None)
    assert two.shape[1] == 2 * 100 + 6
    path = save_png(panel, tmp_path / "sub" / "p.png")
    with Image.open(path) as im:
        assert im.size == (panel.shape[1], panel.shape[0]) and im.mode == "RGB"


@pytest.mark.parametrize(
    "options", [{}, {"optimize": False, "compress_level": 1}, {"optimize": False, "compress_level": 9}]
)
def test_save_png_is_lossless_at_every_level(tmp_path, options) -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    with Image.open(save_png(rgb, tmp_path / "x.png", **options)) as im:
        np.testing.assert_array_equal(np.asarray(im), rgb)
