"""Pictures of predictions: display scaling, mask overlays, error maps and side-by-side panels.

Everything works on NumPy arrays and returns ``uint8`` RGB images ``(H, W, 3)``; :func:`save_png`
writes them. Colours:

* classes: a fixed palette (:data:`CLASS_COLORS`), background left uncoloured;
* truth and prediction of a binary mask in distinct colours (:data:`TRUTH_COLOR` green,
  :data:`PRED_COLOR` magenta), so the two tiles of a panel are never confused;
* errors (:func:`error_map`): true positives light grey, **false positives orange**, **false
  negatives blue** (the Okabe–Ito colour-blind-safe pair), and, for multi-class masks,
  foreground of the wrong class purple; correct background shows the darkened image. When a panel
  shrinks the error map, a pixel of the small map shows the most important case of the pixels it
  covers (false negative, then false positive, wrong class, true positive), so a one-pixel rim of
  missed foreground stays visible instead of being averaged into the grey of the correct pixels.

Example:
    >>> import numpy as np
    >>> img = np.random.rand(1, 32, 48).astype(np.float32)
    >>> truth = np.zeros((32, 48), np.int64); truth[8:20, 8:20] = 1
    >>> panel = comparison_panel(img, truth, np.roll(truth, 3, axis=1))
    >>> panel.dtype, panel.shape[2]
    (dtype('uint8'), 3)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from seglab._files import atomic_write
from seglab.errors import InvalidValueError

__all__ = [
    "CLASS_COLORS",
    "ERROR_COLORS",
    "OBJECT_COLORS",
    "PRED_COLOR",
    "TRUTH_COLOR",
    "colorize",
    "comparison_panel",
    "error_codes",
    "error_map",
    "instance_colors",
    "instance_overlay",
    "object_error_overlay",
    "overlay_mask",
    "save_png",
    "to_display",
]

# tab10-like palette; index 0 (background) is never drawn
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),
    (0, 200, 83),
    (230, 25, 75),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (170, 110, 40),
)

ERROR_COLORS: dict[str, tuple[int, int, int]] = {
    "tp": (215, 215, 215),
    "fp": (230, 159, 0),  # orange
    "fn": (0, 114, 178),  # blue
    "wrong_class": (204, 121, 167),  # reddish purple
}


TRUTH_COLOR: tuple[int, int, int] = (0, 200, 83)  # green: the truth of a binary mask
PRED_COLOR: tuple[int, int, int] = (220, 40, 220)  # magenta: the prediction of a binary mask

# error_codes values, in increasing importance (what a shrunken error map keeps)
_TN, _TP, _WRONG, _FP, _FN = 0, 1, 2, 3, 4
_CODE_COLORS = {_TP: "tp", _WRONG: "wrong_class", _FP: "fp", _FN: "fn"}


def _class_color(c: int) -> tuple[int, int, int]:
    if c < len(CLASS_COLORS):
        return CLASS_COLORS[c]
    rng = np.random.default_rng(c)  # stable colours for many classes
    return tuple(int(v) for v in rng.integers(40, 256, 3))  # type: ignore[return-value]


def to_display(image: np.ndarray, *, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Scale an image of any dtype/range to ``uint8`` RGB for viewing (percentile stretch per channel).

    Args:
        image: ``(C, H, W)`` or ``(H, W)``; one channel is shown grey, three as RGB, others by
            their first channel.
        low: lower percentile mapped to 0.
        high: upper percentile mapped to 255.

    Returns:
        ``(H, W, 3)`` uint8.

    Raises:
        ValueError: an array that is not 2-D or 3-D.
    """
    arr = np.asarray(image, dtype=np.float64)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise InvalidValueError(f"to_display expects (C, H, W) or (H, W); got shape {arr.shape}.")
    chans = arr[:3] if arr.shape[0] == 3 else arr[:1]
    out = np.empty(chans.shape, dtype=np.uint8)
    for i, ch in enumerate(chans):
        finite = ch[np.isfinite(ch)]
        lo, hi = np.percentile(finite, [low, high]) if finite.size else (0.0, 1.0)
        if hi <= lo:
            hi = lo + 1.0
        out[i] = (np.clip((np.nan_to_num(ch, nan=lo) - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(
            np.uint8
        )
    if out.shape[0] == 1:
        out = np.repeat(out, 3, axis=0)
    return np.ascontiguousarray(out.transpose(1, 2, 0))


def _mask2d(mask: np.ndarray, what: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    if m.ndim != 2:
        raise InvalidValueError(f"{what} must be an (H, W) label array; got shape {m.shape}.")
    return m.astype(np.int64)


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class ids ``(H, W)`` -> ``(H, W, 3)`` uint8 with :data:`CLASS_COLORS` (background black)."""
    m = _mask2d(mask, "mask")
    out = np.zeros((*m.shape, 3), dtype=np.uint8)
    for c in np.unique(m):
        if c > 0:
            out[m == c] = _class_color(int(c))
    return out


def overlay_mask(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    alpha: float = 0.45,
    outline: bool = True,
    colors: dict[int, tuple[int, int, int]] | None = None,
) -> np.ndarray:
    """The image with each foreground class tinted in its colour (and outlined).

    Args:
        image: ``(C, H, W)`` raw image (any range) or an ``(H, W, 3)`` uint8 display image.
        mask: ``(H, W)`` class ids.
        alpha: opacity of the tint.
        outline: draw the class boundaries at full opacity.
        colors: class id -> RGB for some classes (default :data:`CLASS_COLORS`).

    Returns:
        ``(H, W, 3)`` uint8.
    """
    base = _display(image)
    m = _mask2d(mask, "mask")
    if m.shape != base.shape[:2]:
        raise InvalidValueError(f"mask {m.shape} and image {base.shape[:2]} differ in size.")
    out = base.astype(np.float64)
    for c in np.unique(m):
        if c <= 0:
            continue
        sel = m == c
        color = np.array((colors or {}).get(int(c), _class_color(int(c))), dtype=np.float64)
        out[sel] = (1 - alpha) * out[sel] + alpha * color
        if outline:
            out[_boundary(sel)] = color
    return out.round().astype(np.uint8)


def _boundary(sel: np.ndarray) -> np.ndarray:
    """Pixels of ``sel`` with a 4-neighbour outside it."""
    inner = sel.copy()
    inner[1:, :] &= sel[:-1, :]
    inner[:-1, :] &= sel[1:, :]
    inner[:, 1:] &= sel[:, :-1]
    inner[:, :-1] &= sel[:, 1:]
    return sel & ~inner


def _display(image: np.ndarray) -> np.ndarray:
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[-1] == 3 and arr.dtype == np.uint8 and arr.shape[0] != 3:
        return arr
    return to_display(arr)


def error_map(
    truth: np.ndarray, pred: np.ndarray, image: np.ndarray | None = None, *, dim: float = 0.4
) -> np.ndarray:
    """Where the prediction is right and wrong, in colour.

    True positives light grey, false positives orange, false negatives blue, and (multi-class)
    foreground with the wrong class purple; correct background shows the image darkened by
    ``dim`` (black without an image).

    Args:
        truth: ``(H, W)`` class ids (0 = background).
        pred: ``(H, W)`` class ids.
        image: optional ``(C, H, W)`` raw image shown under the correct background.
        dim: brightness of the image under the correct background.

    Returns:
        ``(H, W, 3)`` uint8.

    Raises:
        ValueError: shapes differ.

    Example:
        >>> t = np.array([[0, 1], [1, 0]]); p = np.array([[1, 1], [0, 0]])
        >>> error_map(t, p)[0, 0].tolist(), error_map(t, p)[1, 0].tolist()
        ([230, 159, 0], [0, 114, 178])
    """
    codes = error_codes(truth, pred)
    if image is not None:
        base = _display(image)
        if base.shape[:2] != codes.shape:
            raise InvalidValueError(f"image {base.shape[:2]} and masks {codes.shape} differ in size.")
    else:
        base = None
    return _paint_codes(codes, base, dim)


def error_codes(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Per pixel: 0 correct background, 1 true positive, 2 wrong class, 3 false positive, 4 false negative.

    The codes grow with how much a reader needs to see the case; :func:`comparison_panel` keeps the
    largest code of the pixels it merges when it shrinks an error map.

    Raises:
        InvalidValueError: shapes differ.

    Example:
        >>> error_codes(np.array([[0, 1, 1, 2]]), np.array([[1, 1, 0, 1]])).tolist()
        [[3, 1, 4, 2]]
    """
    t, p = _mask2d(truth, "truth"), _mask2d(pred, "pred")
    if t.shape != p.shape:
        raise InvalidValueError(f"truth {t.shape} and pred {p.shape} differ in size.")
    codes = np.zeros(t.shape, dtype=np.uint8)
    codes[(t > 0) & (p == t)] = _TP
    codes[(t > 0) & (p > 0) & (p != t)] = _WRONG
    codes[(t == 0) & (p > 0)] = _FP
    codes[(t > 0) & (p == 0)] = _FN
    return codes


def _paint_codes(codes: np.ndarray, base: np.ndarray | None, dim: float) -> np.ndarray:
    if base is not None:
        out = (base.astype(np.float64) * dim).round().astype(np.uint8)
    else:
        out = np.zeros((*codes.shape, 3), dtype=np.uint8)
    for code, name in _CODE_COLORS.items():
        out[codes == code] = ERROR_COLORS[name]
    return out


def _resize_codes(codes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize error codes to ``(h, w)``: shrinking keeps the largest code of each block, growing repeats."""
    h, w = codes.shape
    rows = (np.arange(size[0]) * h) // size[0]
    cols = (np.arange(size[1]) * w) // size[1]
    return np.maximum.reduceat(np.maximum.reduceat(codes, rows, axis=0), cols, axis=1)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def _resize(rgb: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return rgb
    h, w = rgb.shape[:2]
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(
        Image.fromarray(rgb).resize(size, Image.Resampling.BOX if scale < 1 else Image.Resampling.NEAREST)
    )


def comparison_panel(
    image: np.ndarray,
    truth: np.ndarray | None,
    pred: np.ndarray,
    *,
    titles: Sequence[str] = (
        "image",
        "truth",
        "prediction",
        "errors (FP orange, FN blue, correct grey)",
    ),
    max_width: int | None = 640,
    min_width: int | None = None,
    columns: int | None = None,
) -> np.ndarray:
    """Image; truth; prediction; errors — as one RGB picture with a title above each tile.

    Binary masks show the truth in :data:`TRUTH_COLOR` and the prediction in :data:`PRED_COLOR`;
    multi-class masks use the class palette in both. A shrunken error tile keeps the most
    important case per pixel (see :func:`error_codes`).

    Args:
        image: ``(C, H, W)`` raw image.
        truth: ``(H, W)`` class ids, or ``None`` (then only image and prediction are shown).
        pred: ``(H, W)`` class ids.
        titles: the tile titles, in order.
        max_width: shrink each tile to at most this width (``None``: full size).
        min_width: enlarge narrower tiles by a whole factor (pixels repeated) to at least this
            width, so small images stay legible (``None``: never enlarge).
        columns: tiles per row (default: 2 for wide images with four tiles, else all in one row).

    Returns:
        ``(H', W', 3)`` uint8.
    """
    display = to_display(image)
    binary = int(np.max(pred)) <= 1 and (truth is None or int(np.max(truth)) <= 1)
    tiles = [display]
    if truth is not None:
        tiles.append(overlay_mask(display, truth, colors={1: TRUTH_COLOR} if binary else None))
    tiles.append(overlay_mask(display, pred, colors={1: PRED_COLOR} if binary else None))
    names = list(titles) if truth is not None else [titles[0], titles[2]]
    w = tiles[0].shape[1]
    scale = min(1.0, max_width / w) if max_width else 1.0
    if min_width and w * scale < min_width:
        scale = float(math.ceil(min_width / w))
    tiles = [_resize(t, scale) for t in tiles]
    if truth is not None:  # resized by importance, not averaged: thin misses stay visible
        small = tiles[0].shape[:2]
        codes = error_codes(truth, pred)
        tiles.append(_paint_codes(_resize_codes(codes, small) if scale != 1 else codes, tiles[0], 0.4))
    th, tw = tiles[0].shape[:2]
    if columns is None:
        columns = 2 if len(tiles) == 4 and tw > th else len(tiles)
    rows = -(-len(tiles) // columns)
    font_size = max(12, min(24, tw // 30))
    bar = font_size + 10
    gap = 6
    canvas = Image.new(
        "RGB", (columns * tw + (columns - 1) * gap, rows * (th + bar) + (rows - 1) * gap), "white"
    )
    draw = ImageDraw.Draw(canvas)
    font = _font(font_size)
    for i, (tile, name) in enumerate(zip(tiles, names)):
        r, c = divmod(i, columns)
        x, y = c * (tw + gap), r * (th + bar + gap)
        draw.text((x + 4, y + 4), name, fill=(20, 20, 20), font=font)
        canvas.paste(Image.fromarray(tile), (x, y + bar))
    return np.asarray(canvas)


def save_png(
    rgb: np.ndarray, path: str | os.PathLike[str], *, optimize: bool = True, compress_level: int = 3
) -> Path:
    """Write an ``(H, W, 3)`` uint8 array as PNG (parent folders created); returns the path.

    Args:
        rgb: the picture.
        path: the file.
        optimize: smallest file (about 10 % smaller, 20-50x slower to write: seconds for a
            700x1100 overlay); ``False`` writes at zlib level ``compress_level``, for reports with
            many large pictures and for the overlays ``seglab predict`` writes beside each mask.
        compress_level: zlib level without ``optimize`` (1: fastest, 25 % larger than
            ``optimize``; 9: smallest).
    """
    path = Path(path)
    options = {"optimize": True} if optimize else {"compress_level": int(compress_level)}
    with atomic_write(path, "wb") as f:
        Image.fromarray(np.asarray(rgb, dtype=np.uint8)).save(f, format="PNG", **options)
    return path


# -- instance label images ---------------------------------------------------------------------------------
OBJECT_COLORS: dict[str, tuple[int, int, int]] = {
    "matched": (0, 158, 115),  # bluish green
    "merged": (213, 94, 0),  # vermillion: one predicted object over several true ones
    "split": (204, 121, 167),  # reddish purple: the pieces of a split true object
    "spurious": (230, 159, 0),  # orange, as false positives
    "missed": (0, 114, 178),  # blue, as false negatives: outline of the true object
}
"""Colours of :func:`object_error_overlay` (Okabe–Ito, colour-blind safe), by object status."""

_SAMPLE_PIXELS = 1 << 22  # display limits of larger images come from a strided sample of this many pixels


def instance_colors(n: int) -> np.ndarray:
    """``(n + 1, 3)`` uint8 colours of labels ``0..n``: 0 black, then hues spaced by the golden ratio.

    Example:
        >>> instance_colors(2)[0].tolist(), len(instance_colors(2))
        ([0, 0, 0], 3)
    """
    i = np.arange(1, n + 1)
    hue = (i * 0.6180339887) % 1.0
    sat = 0.65 + 0.35 * ((i * 7) % 3) / 2
    # HSV -> RGB with value 1 (colorsys, vectorised)
    k = (np.array([5.0, 3.0, 1.0])[None] + hue[:, None] * 6.0) % 6.0  # (n, 3)
    rgb = 1.0 - sat[:, None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return np.concatenate([np.zeros((1, 3), np.uint8), np.round(255 * rgb).astype(np.uint8)])


def _display_limits(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> list[tuple[float, float]]:
    """Per shown channel, the ``(low, high)`` percentiles :func:`to_display` stretches (of a strided
    sample for images over ``_SAMPLE_PIXELS`` pixels)."""
    arr = np.asarray(image)
    arr = arr[None] if arr.ndim == 2 else arr
    chans = arr[:3] if arr.shape[0] == 3 else arr[:1]
    step = max(1, int(np.ceil(np.sqrt(chans[0].size / _SAMPLE_PIXELS))))
    limits = []
    for ch in chans:
        sample = np.asarray(ch[::step, ::step], dtype=np.float64)
        finite = sample[np.isfinite(sample)]
        lo, hi = np.percentile(finite, [low, high]) if finite.size else (0.0, 1.0)
        limits.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
    return limits


def _display_rows(image: np.ndarray, limits: Sequence[tuple[float, float]], y0: int, y1: int) -> np.ndarray:
    """Rows ``y0:y1`` of the display image ``(y1 - y0, W, 3)`` uint8, stretched to ``limits``."""
    arr = np.asarray(image)
    arr = arr[None] if arr.ndim == 2 else arr
    chans = arr[:3] if arr.shape[0] == 3 else arr[:1]
    out = np.empty((len(limits), y1 - y0, arr.shape[-1]), np.uint8)
    for i, (lo, hi) in enumerate(limits):
        band = np.nan_to_num(np.asarray(chans[i, y0:y1], dtype=np.float64), nan=lo)
        out[i] = (np.clip((band - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(np.repeat(out, 3 // len(limits), axis=0).transpose(1, 2, 0))


def _label_edges(labels: np.ndarray) -> np.ndarray:
    """Object pixels with a 4-neighbour of another label (background included)."""
    edge = np.zeros(labels.shape, bool)
    edge[1:] |= labels[1:] != labels[:-1]
    edge[:-1] |= labels[:-1] != labels[1:]
    edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    return edge & (labels > 0)


def _check_labels(labels: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise InvalidValueError(f"{what} must be an (H, W) label image; got shape {lab.shape}.")
    if lab.shape != tuple(shape[-2:]):
        raise InvalidValueError(f"image {tuple(shape[-2:])} and {what} {lab.shape} differ in size.")
    return lab


def instance_overlay(
    image: np.ndarray, labels: np.ndarray, *, alpha: float = 0.4, rows: int = 1024
) -> np.ndarray:
    """The image with every object tinted in its own colour (:func:`instance_colors`) and outlined.

    Built ``rows`` rows at a time, so an 8192 x 8192 label image needs little beyond the output;
    the display stretch is :func:`to_display`'s (its percentiles from a strided sample of large
    images).

    Args:
        image: ``(C, H, W)`` raw image (any range) or ``(H, W)``.
        labels: ``(H, W)`` instance labels (0 background).
        alpha: opacity of the tint (outlines are opaque).
        rows: rows per band.

    Returns:
        ``(H, W, 3)`` uint8.

    Raises:
        ValueError: sizes differ or ``labels`` is not 2-D.

    Example:
        >>> lab = np.zeros((8, 8), int); lab[1:4, 1:4] = 1; lab[4:7, 1:4] = 2
        >>> rgb = instance_overlay(np.zeros((1, 8, 8)), lab)
        >>> rgb[1, 1].tolist() == instance_colors(2)[1].tolist(), rgb[0, 0].tolist()
        (True, [0, 0, 0])
    """
    lab = _check_labels(labels, np.shape(image), "labels")
    limits = _display_limits(image)
    colors = instance_colors(int(lab.max(initial=0)))
    h = lab.shape[0]
    out = np.empty((*lab.shape, 3), np.uint8)
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        a, b = max(0, y0 - 1), min(h, y1 + 1)  # one row of context for the outlines
        edge = _label_edges(lab[a:b])[y0 - a : y0 - a + y1 - y0]
        cur = lab[y0:y1]
        color = colors[cur]  # (h, W, 3)
        band = _display_rows(image, limits, y0, y1).astype(np.float32)
        fg = cur > 0
        band[fg] = (1 - alpha) * band[fg] + alpha * color[fg]
        band[edge] = color[edge]
        out[y0:y1] = np.round(band).astype(np.uint8)
    return out


def object_error_overlay(
    image: np.ndarray,
    pred: np.ndarray,
    truth: np.ndarray,
    errors: object | None = None,
    *,
    alpha: float = 0.35,
    dim: float = 0.6,
) -> np.ndarray:
    """Predicted objects coloured by what happened to them; missed true objects outlined.

    Colours (:data:`OBJECT_COLORS`): matched green, merged (a predicted object over two or more
    true ones) vermillion, split (the pieces of one true object) purple, spurious orange: tinted
    and outlined; a missed true object gets a blue outline. The statuses are those of
    :func:`seglab.metrics.object_errors`.

    Args:
        image: ``(C, H, W)`` raw image or ``(H, W)``.
        pred: ``(H, W)`` predicted labels.
        truth: ``(H, W)`` true labels.
        errors: ``object_errors(pred, truth)`` if already computed.
        alpha: opacity of the tint.
        dim: brightness of the image underneath.

    Returns:
        ``(H, W, 3)`` uint8.

    Example:
        >>> t = np.zeros((6, 8), int); t[:3, :3] = 1; t[:3, 3:6] = 2; t[4:, :3] = 3
        >>> p = np.zeros_like(t); p[:3, :6] = 1
        >>> rgb = object_error_overlay(np.zeros((1, 6, 8)), p, t)
        >>> rgb[2, 0].tolist() == list(OBJECT_COLORS["merged"]), rgb[4, 0].tolist() == list(OBJECT_COLORS["missed"])
        (True, True)
    """
    from seglab.metrics.matching import OBJECT_STATUSES, object_errors

    p = _check_labels(pred, np.shape(image), "pred").astype(np.int64, copy=False)
    t = _check_labels(truth, np.shape(image), "truth").astype(np.int64, copy=False)
    err = object_errors(p, t) if errors is None else errors
    palette = np.array([OBJECT_COLORS.get(name, (0, 0, 0)) for name in OBJECT_STATUSES], np.float32)
    out = _display_rows(image, _display_limits(image), 0, p.shape[0]).astype(np.float32) * dim
    status = np.full(int(p.max(initial=0)) + 1, -1, np.int64)
    status[np.asarray(err.pred_ids, np.int64)] = err.pred_status  # type: ignore[attr-defined]
    code = status[p]  # (H, W): -1 background
    fg = code >= 0
    color = palette[np.where(fg, code, 0)]
    out[fg] = (1 - alpha) * out[fg] + alpha * color[fg]
    edge = _label_edges(p)
    out[edge] = color[edge]
    missed = np.zeros(int(t.max(initial=0)) + 1, bool)
    missed[np.asarray(err.true_ids, np.int64)] = np.asarray(err.true_status) == OBJECT_STATUSES.index(
        "missed"
    )  # type: ignore[attr-defined]
    outline = _label_edges(t) & missed[t]
    out[outline] = OBJECT_COLORS["missed"]
    return np.round(out).astype(np.uint8)
