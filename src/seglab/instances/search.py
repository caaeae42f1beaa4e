"""Choosing the decoding parameters on validation images: a coordinate search over a grid."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from seglab.errors import InvalidTypeError, InvalidValueError
from seglab.instances.base import DecodeParams, InstanceEncoding
from seglab.instances.watershed import finish_objects
from seglab.metrics.matching import instance_metrics

__all__ = ["DEFAULT_GRID", "SearchResult", "metric_function", "search_params"]

DEFAULT_GRID: dict[str, tuple[float, ...]] = {
    "fg_threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "seed_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
    "min_seed_size": (1, 4, 8, 16, 32),
    "min_size": (0, 8, 16, 32, 64),
    "clear_border": (False, True),
}
"""Values tried for each :class:`DecodeParams` field by :func:`search_params`."""

Metric = str | Callable[[dict[str, float]], float]


@dataclass(frozen=True)
class SearchResult:
    """The outcome of :func:`search_params`.

    Attributes:
        params: the best parameters found.
        score: their score (the chosen metric, pooled over the images).
        metrics: :func:`~seglab.metrics.instance_metrics` at the best parameters.
        trials: how many parameter sets were decoded and scored.
    """

    params: DecodeParams
    score: float
    metrics: dict[str, float]
    trials: int


def metric_function(metric: Metric) -> tuple[Callable[[dict[str, float]], float], tuple[float, ...]]:
    """The scoring function of a metric name and the IoU thresholds :func:`instance_metrics` needs for it.

    Args:
        metric: ``"+"``-joined :func:`~seglab.metrics.instance_metrics` keys (their mean), or a
            callable taking that dict.

    Returns:
        ``(score(metrics dict) -> float, thresholds)``; the thresholds always include 0.5 (and
        0.75 for a callable).

    Raises:
        TypeError: a metric that is neither a non-empty string nor a callable.

    Example:
        >>> score, taus = metric_function("f1@0.75+seg")
        >>> taus, score({"f1@0.75": 0.5, "seg": 1.0})
        ((0.5, 0.75), 0.75)
    """
    if callable(metric):
        return metric, (0.5, 0.75)
    if not isinstance(metric, str) or not metric.strip():
        raise InvalidTypeError(f"metric must be a name such as 'f1@0.5+seg' or a callable; got {metric!r}.")
    names = [n.strip() for n in metric.split("+")]
    taus = {float(n.split("@", 1)[1]) for n in names if "@" in n and n.split("@", 1)[1]}
    thresholds = tuple(sorted(taus | {0.5}))

    def score(m: dict[str, float]) -> float:
        unknown = [n for n in names if n not in m]
        if unknown:
            raise InvalidValueError(f"unknown metric name(s) {unknown} in {metric!r}; known: {sorted(m)}.")
        return float(np.mean([m[n] for n in names]))

    return score, thresholds


class _Scorer:
    """Decodes and scores parameter sets, reusing the last decoding when only the last step
    (``min_size``, ``clear_border``) changes."""

    def __init__(
        self, encoding: InstanceEncoding, outputs: list[Any], labels: list[Any], metric: Metric
    ) -> None:
        self.encoding, self.outputs, self.labels = encoding, outputs, labels
        self.score_fn, self.thresholds = metric_function(metric)
        self.cache: dict[DecodeParams, tuple[float, dict[str, float]]] = {}
        self._last: tuple[DecodeParams, list[np.ndarray]] | None = None

    def __call__(self, params: DecodeParams) -> float:
        if params not in self.cache:
            base = dataclasses.replace(params, min_size=0, clear_border=False)
            if self._last is None or self._last[0] != base:
                self._last = (base, [self.encoding.decode(x, base) for x in self.outputs])
            preds = [finish_objects(p, params) for p in self._last[1]]
            m = instance_metrics(preds, self.labels, thresholds=self.thresholds)
            value = self.score_fn(m)
            self.cache[params] = (value if math.isfinite(value) else -math.inf, m)
        return self.cache[params][0]


def _check_grid(grid: Mapping[str, Sequence[Any]] | None) -> dict[str, tuple[Any, ...]]:
    grid = DEFAULT_GRID if grid is None else grid
    known = [f.name for f in dataclasses.fields(DecodeParams)]
    unknown = sorted(set(grid) - set(known))
    if unknown:
        raise InvalidValueError(f"grid names unknown decoding parameter(s) {unknown}; known: {known}.")
    out = {}
    for name, values in grid.items():
        values = tuple(v.item() if isinstance(v, np.generic) else v for v in values)
        if not values:
            raise InvalidValueError(f"grid[{name!r}] is empty; give at least one value.")
        out[name] = values
    return out


def search_params(
    encoding: InstanceEncoding,
    outputs: Sequence[Any],
    labels: Sequence[Any],
    *,
    metric: Metric = "f1@0.5+seg",
    grid: Mapping[str, Sequence[Any]] | None = None,
    start: DecodeParams | None = None,
    rounds: int = 2,
) -> SearchResult:
    """Choose :class:`DecodeParams` maximising a metric on validation images (coordinate search).

    Starting from ``start``, each round tries every grid value of one parameter at a time, the
    others fixed, and keeps the best (ties keep the current value); it stops after ``rounds``
    rounds or a round without change. Scores pool all images (:func:`instance_metrics`).

    Args:
        encoding: the encoding the outputs come from.
        outputs: per validation image, the model's probabilities ``(out_channels, H, W)``.
        labels: the matching true label images ``(H, W)``.
        metric: ``"+"``-joined :func:`~seglab.metrics.instance_metrics` keys, averaged (default
            ``"f1@0.5+seg"``: the mean of F1 at IoU 0.5 and CTC SEG), or a callable taking that
            dict and returning a score to maximise.
        grid: values to try per parameter (default :data:`DEFAULT_GRID`); parameters left out
            keep their start value.
        start: the initial parameters (default ``DecodeParams()``).
        rounds: maximum number of passes over the parameters.

    Returns:
        :class:`SearchResult`.

    Raises:
        ValueError: no images, lists of different lengths, unknown grid or metric names,
            ``rounds < 1``.
        MissingExtraError: scikit-image is not installed.

    Example:
        >>> from seglab.instances import get_encoding
        >>> enc = get_encoding("distance")
        >>> lab = np.zeros((24, 24), int); lab[2:10, 2:10] = 1; lab[12:20, 4:14] = 2
        >>> start = DecodeParams(min_size=100)  # removes both objects: score 0
        >>> res = search_params(enc, [enc.encode(lab).numpy()], [lab], grid={"min_size": [0, 100]}, start=start)
        >>> res.params.min_size, res.score, res.trials
        (0, 1.0, 2)
    """
    if len(outputs) != len(labels) or not len(outputs):
        raise InvalidValueError(
            f"search_params needs one label image per output and at least one; got {len(outputs)} and {len(labels)}."
        )
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise InvalidValueError(f"rounds must be an int >= 1; got {rounds!r}.")
    scorer = _Scorer(encoding, list(outputs), list(labels), metric)
    space = _check_grid(grid)
    best = DecodeParams() if start is None else start
    best_score = scorer(best)
    for _ in range(rounds):
        changed = False
        for name, values in space.items():
            for value in values:
                candidate = dataclasses.replace(best, **{name: value})
                score = scorer(candidate)
                if score > best_score:
                    best, best_score, changed = candidate, score, True
        if not changed:
            break
    return SearchResult(best, best_score, scorer.cache[best][1], len(scorer.cache))
