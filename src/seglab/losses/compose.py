"""Combining losses: weighted sums from spec strings, and deep supervision.

* :func:`build` parses a spec such as ``"0.5*bce+dice"`` or ``"focal+ms_ssim+iou"`` (U-Net 3+'s
  hybrid loss) into a :class:`CompositeLoss`, whose ``terms`` report every term for logging.
* :class:`DeepSupervisionLoss` applies a loss to a model's :class:`~seglab.models.SegOutput`:
  the main output, every auxiliary output (resized to the target) and, optionally, an
  image-level "is the class present" term on ``cls``. The trainer wraps every loss in it, so it
  reduces to the bare loss when a model has no auxiliary outputs.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch.nn.functional as F
from torch import Tensor, nn

from seglab._options import MODES, check_choice, did_you_mean
from seglab.errors import InvalidTypeError, InvalidValueError
from seglab.losses import functional as LF
from seglab.losses.bce import BCELoss, CrossEntropyLoss
from seglab.losses.dice import DiceLoss, IoULoss, TverskyLoss
from seglab.losses.focal import FocalLoss
from seglab.losses.ms_ssim import MSSSIMLoss

if TYPE_CHECKING:
    from seglab.models.base import SegOutput

__all__ = ["LOSSES", "CompositeLoss", "DeepSupervisionLoss", "build"]

LOSSES: dict[str, type[nn.Module]] = {
    "bce": BCELoss,
    "ce": CrossEntropyLoss,
    "dice": DiceLoss,
    "iou": IoULoss,
    "tversky": TverskyLoss,
    "focal": FocalLoss,
    "ms_ssim": MSSSIMLoss,
}
"""Spec term names and their classes (the canonical names are the keys reported by ``terms``)."""

_ALIASES = {
    "binary_cross_entropy": "bce",
    "cross_entropy": "ce",
    "jaccard": "iou",
    "msssim": "ms_ssim",
    "ssim": "ms_ssim",
}

# Options that mean different things in different losses (class weights vs pixel weights; focal's
# class balance vs Tversky's FP weight): they must be given per term when several terms take them.
_AMBIGUOUS = {"weight", "alpha", "beta", "gamma"}

_TERM_RE = re.compile(
    r"^\s*(?:(?P<w>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?(?P<name>[A-Za-z_][A-Za-z0-9_\-]*)\s*$"
)


class CompositeLoss(nn.Module):
    """A weighted sum of losses: ``Σ wᵢ·lossᵢ(pred, target)``.

    Usually made by :func:`build`. ``terms`` returns the total under ``"loss"`` (attached to the
    graph) and each term's unweighted value under its name (detached), for logging.

    Args:
        losses: term name -> loss module (each called as ``loss(pred, target)``).
        weights: term name -> weight (default 1 for every term).

    Raises:
        ValueError: no terms, a weight for an unknown term, a negative weight, or a term named
            ``"loss"``.

    Shape:
        As the terms' (all must accept the same ``(pred, target)``); output: scalar.

    Empty target:
        The weighted sum of the terms' empty-target values (see each loss); never NaN.

    Example:
        >>> import torch
        >>> loss = CompositeLoss({"bce": BCELoss(), "dice": DiceLoss()}, weights={"bce": 0.5})
        >>> sorted(loss.terms(torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))))
        ['bce', 'dice', 'loss']
    """

    def __init__(self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None) -> None:
        super().__init__()
        if not losses:
            raise InvalidValueError("CompositeLoss needs at least one term.")
        if "loss" in losses:
            raise InvalidValueError("'loss' is reserved for the total; name the term differently.")
        weights = dict(weights or {})
        unknown = set(weights) - set(losses)
        if unknown:
            raise InvalidValueError(f"weights for unknown terms {sorted(unknown)}; terms are {list(losses)}.")
        self.losses = nn.ModuleDict(dict(losses))
        self.weights: dict[str, float] = {}
        for name in losses:
            w = float(weights.get(name, 1.0))
            if not w >= 0.0:
                raise InvalidValueError(f"the weight of term {name!r} must be >= 0, got {w}.")
            self.weights[name] = w

    @property
    def spec(self) -> str:
        """The spec string this loss corresponds to, e.g. ``"0.5*bce+dice"``."""
        return "+".join(name if w == 1.0 else f"{w:g}*{name}" for name, w in self.weights.items())

    def _common(self, attr: str) -> Any:
        values = {getattr(m, attr, None) for m in self.losses.values()}
        return values.pop() if len(values) == 1 else None

    @property
    def mode(self) -> str | None:
        """The terms' common ``mode`` (``None`` if they differ or do not say)."""
        return self._common("mode")

    @property
    def ignore_index(self) -> int | None:
        """The terms' common ``ignore_index`` (``None`` if they differ or do not say)."""
        return self._common("ignore_index")

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """The weighted sum of the terms."""
        return self.terms(pred, target)["loss"]

    def terms(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        """``{"loss": total, name: unweighted term value (detached), ...}``."""
        total: Tensor | None = None
        parts: dict[str, Tensor] = {}
        for name, module in self.losses.items():
            value = module(pred, target)
            w = self.weights[name]
            contrib = value if w == 1.0 else w * value
            total = contrib if total is None else total + contrib
            parts[name] = value.detach()
        assert total is not None  # at least one term (checked in __init__)
        return {"loss": total, **parts}

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}"


# ------------------------------------------------------------------------------------------------
# build
# ------------------------------------------------------------------------------------------------
def _canonical(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = _ALIASES.get(key, key)
    if key not in LOSSES:
        choices = [*LOSSES, *_ALIASES]
        raise InvalidValueError(
            f"Unknown loss term {name!r}. Valid terms: {', '.join(repr(c) for c in LOSSES)} "
            f"(aliases: {', '.join(repr(a) for a in _ALIASES)})." + did_you_mean(key, choices)
        )
    return key


def parse_spec(spec: str) -> list[tuple[float, str]]:
    """Parse ``"0.5*bce+dice"`` into ``[(0.5, "bce"), (1.0, "dice")]`` (canonical names).

    Grammar: terms joined by ``+``; each term is ``name`` or ``weight*name`` with a non-negative
    decimal weight (``1e-3`` notation allowed). Names are case-insensitive; ``-`` and ``_`` are
    interchangeable; aliases: ``cross_entropy`` (ce), ``jaccard`` (iou), ``msssim``/``ssim``
    (ms_ssim), ``binary_cross_entropy`` (bce).

    Raises:
        TypeError: ``spec`` is not a string.
        ValueError: empty spec or term, a malformed term, an unknown name (did-you-mean), or a
            term given twice.
    """
    if not isinstance(spec, str):
        raise InvalidTypeError(
            f"a loss spec must be a string such as '0.5*bce+dice', got {type(spec).__name__}."
        )
    if not spec.strip():
        raise InvalidValueError("empty loss spec; write e.g. 'bce+dice' or '0.5*bce+dice'.")
    out: list[tuple[float, str]] = []
    seen: dict[str, str] = {}
    for raw in spec.split("+"):
        m = _TERM_RE.match(raw)
        if m is None:
            raise InvalidValueError(
                f"cannot parse loss term {raw.strip()!r} in {spec!r}; each term is 'name' or 'weight*name' "
                "with a number >= 0 (e.g. '0.5*bce+dice')."
            )
        name = _canonical(m.group("name"))
        if name in seen:
            raise InvalidValueError(
                f"loss term {name!r} appears twice in {spec!r} ({seen[name]!r} and {raw.strip()!r}); give it once "
                "with the summed weight (e.g. '2*dice')."
            )
        seen[name] = raw.strip()
        out.append((float(m.group("w")) if m.group("w") is not None else 1.0, name))
    return out


@functools.cache
def _accepted(cls: type) -> tuple[str, ...]:
    params = inspect.signature(cls.__init__).parameters
    return tuple(
        p
        for p in params
        if p != "self" and params[p].kind not in (params[p].VAR_POSITIONAL, params[p].VAR_KEYWORD)
    )


def build(spec: str, *, mode: str = "binary", **options: Any) -> CompositeLoss:
    """Build a loss from a spec string such as ``"bce+dice"`` or ``"0.5*bce+dice"``.

    Terms: ``bce``, ``ce``, ``dice``, ``iou`` (``jaccard``), ``tversky``, ``focal``, ``ms_ssim``
    (see :data:`LOSSES` and :func:`parse_spec`). Common recipes: ``"bce+dice"`` (binary),
    ``"ce+dice"`` (multiclass), ``"dice+focal"``, ``"focal+ms_ssim+iou"`` (U-Net 3+'s hybrid).

    Options:
        * ``mode`` goes to every term.
        * Any other keyword option is **shared**: it goes to every term whose class accepts it
          (``from_logits``, ``ignore_index``, ``reduction``, ``smooth``, ``per_image``, ...). An
          option no term accepts is a ``TypeError``. ``weight``, ``alpha``, ``beta`` and ``gamma``
          mean different things in different losses, so when more than one term takes them they
          must be given per term.
        * A keyword named after a term of the spec and holding a dict gives **per-term** options,
          which override the shared ones: ``build("bce+dice", dice={"smooth": 0.0})``.

    Args:
        spec: the spec string.
        mode: ``"binary"``, ``"multiclass"`` or ``"multilabel"`` for every term.
        **options: shared options and per-term dicts (see above).

    Returns:
        A :class:`CompositeLoss`; ``terms(pred, target)`` returns ``{"loss", <term names>}``
        (canonical names: a ``jaccard`` term is reported as ``"iou"``).

    Raises:
        ValueError: a malformed spec, an unknown term (did-you-mean), a term the mode does not
            allow (``bce`` with ``mode="multiclass"``: use ``ce``), ``reduction="none"`` with
            several terms.
        TypeError: an option no term accepts (did-you-mean), an ambiguous shared option, or a
            per-term option the term does not accept.

    Example:
        >>> import torch
        >>> loss = build("0.5*bce+dice", ignore_index=255, dice={"smooth": 0.0})
        >>> loss.spec
        '0.5*bce+dice'
        >>> sorted(loss.terms(torch.randn(2, 1, 8, 8), torch.randint(0, 2, (2, 8, 8))))
        ['bce', 'dice', 'loss']
    """
    check_choice("mode", mode, MODES)
    terms = parse_spec(spec)
    names = [n for _, n in terms]
    per_term, shared = _split_options(spec, names, options)
    modules: dict[str, nn.Module] = {}
    weights: dict[str, float] = {}
    for w, name in terms:
        cls = LOSSES[name]
        accepted = _accepted(cls)
        for key in per_term[name]:
            if key not in accepted:
                raise InvalidTypeError(
                    f"{cls.__name__} ({name!r}) has no option {key!r}. Valid: {', '.join(accepted)}."
                    + did_you_mean(key, accepted)
                )
        kwargs = {k: v for k, v in shared.items() if k in accepted}
        kwargs.update(per_term[name])
        kwargs.setdefault("mode", mode)
        modules[name] = cls(**kwargs)
        weights[name] = w
    return CompositeLoss(modules, weights)


def _split_options(
    spec: str, names: list[str], options: Mapping[str, Any]
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``build``'s keyword options as per-term dicts and shared options, checked."""
    per_term: dict[str, dict[str, Any]] = {n: {} for n in names}
    shared: dict[str, Any] = {}
    for key, value in options.items():
        term_key = key.lower().replace("-", "_")
        term_key = _ALIASES.get(term_key, term_key)
        if term_key in LOSSES:
            if term_key not in per_term:
                raise InvalidTypeError(
                    f"per-term options for {key!r}, but the spec {spec!r} has no {term_key!r} term."
                )
            if not isinstance(value, Mapping):
                raise InvalidTypeError(
                    f"per-term options must be a dict, e.g. {term_key}={{'smooth': 0.0}}; got {type(value).__name__}."
                )
            per_term[term_key].update(value)
        else:
            shared[key] = value
    if shared.get("reduction") == "none" and len(names) > 1:
        raise InvalidValueError(
            "reduction='none' cannot be combined across terms (their unreduced shapes differ); use 'mean' or "
            "'sum', or call the term modules one by one."
        )
    for key in shared:
        takers = [n for n in names if key in _accepted(LOSSES[n])]
        if not takers:
            valid = sorted({p for n in names for p in _accepted(LOSSES[n])} - {"mode"})
            raise InvalidTypeError(
                f"build() got option {key!r}, which none of the terms ({', '.join(names)}) accepts. "
                f"Valid options: {', '.join(valid)}." + did_you_mean(key, valid)
            )
        if key in _AMBIGUOUS and len(takers) > 1:
            raise InvalidTypeError(
                f"option {key!r} means different things for {', '.join(takers)}; pass it per term, e.g. "
                f"build({spec!r}, {takers[0]}={{{key!r}: ...}})."
            )
    return per_term, shared


# ------------------------------------------------------------------------------------------------
# Deep supervision
# ------------------------------------------------------------------------------------------------
_INTERP = {1: "linear", 2: "bilinear", 3: "trilinear"}


class DeepSupervisionLoss(nn.Module):
    """Apply a loss to every output of a model: main, auxiliary and image-level.

    ``forward(output, target)`` takes a :class:`~seglab.models.SegOutput` (``out``, ``aux``,
    ``cls``) or a plain logits tensor (then it is exactly ``loss(output, target)``) and returns

    ``w₀·loss(out, target) + Σᵢ wᵢ₊₁·loss(resize(aux[i]), target) + cls_weight·cls_loss(cls, present)``

    **Resize policy**: auxiliary outputs whose spatial size differs from the target's are resized
    to the target with bilinear interpolation of the *logits* (``align_corners=False``; linear or
    trilinear for 1-D / 3-D). The target is never down-sampled, so every output is scored on the
    full-resolution mask and region and MS-SSIM terms see the same geometry at every head; this
    is what U²-Net and DeepLab do with their side/auxiliary outputs.

    **Weights**: ``"equal"``: 1 for ``out`` and every auxiliary output — a sum, not a mean, as in
    U²-Net (fused output + six side outputs). ``"halving"``: 1 for ``out``, then 1/2, 1/4, ... for
    ``aux[0]``, ``aux[1]``, ... (models list ``aux`` nearest-to-output first). A sequence gives
    ``len(aux) + 1`` weights, ``out`` first.

    **Image-level term** (U-Net 3+'s classification-guided module): when ``output.cls`` is not
    ``None`` and ``cls_loss`` is set, ``cls`` ``(N, K)`` logits are scored against "class k is
    present in image n": binary: the mask is non-empty; multilabel: channel k is non-empty;
    multiclass: some non-ignored pixel has id k. ``cls_loss="bce"`` is the mean BCE with logits;
    a module is called as ``cls_loss(cls, present.float())``. Pixels equal to the loss's
    ``ignore_index`` never count as present.

    Args:
        loss: the per-output loss (any module ``loss(pred, target) -> Tensor``), or a spec
            string for :func:`build` with default options.
        weights: ``"equal"``, ``"halving"`` or a sequence of ``1 + len(aux)`` weights.
        cls_loss: ``None`` (ignore ``cls``), ``"bce"`` or a module.
        cls_weight: weight of the image-level term.

    Raises:
        ValueError: unknown ``weights`` string, negative weights, a weight sequence whose length
            does not match the outputs, auxiliary outputs with a different channel count, or a
            ``cls`` tensor whose shape does not match ``(N, C)``.
        TypeError: ``output`` is neither a tensor nor a ``SegOutput``.

    Shape:
        - output: ``SegOutput(out (N, C, H, W), aux [(N, C, h, w), ...], cls (N, C) | None)`` or a
          ``(N, C, H, W)`` tensor.
        - target: as the wrapped loss expects (e.g. ``(N, H, W)`` int64).
        - output of the loss: scalar.

    Empty target:
        Each output contributes the wrapped loss's empty-target value; the image-level target
        is "absent", so ``cls`` logits are pushed down. Never NaN.

    Example:
        >>> import torch
        >>> from seglab.models import SegOutput
        >>> ds = DeepSupervisionLoss(build("bce+dice"), weights="halving", cls_loss="bce")
        >>> out = SegOutput(torch.randn(2, 1, 32, 32), [torch.randn(2, 1, 16, 16)], torch.randn(2, 1))
        >>> sorted(ds.terms(out, torch.randint(0, 2, (2, 32, 32))))
        ['aux0', 'bce', 'cls', 'dice', 'loss', 'out']
    """

    def __init__(
        self,
        loss: nn.Module | str,
        weights: str | Sequence[float] = "equal",
        cls_loss: str | nn.Module | None = None,
        cls_weight: float = 1.0,
    ) -> None:
        super().__init__()
        if isinstance(loss, str):
            loss = build(loss)
        if not callable(loss):
            raise InvalidTypeError(f"loss must be a loss module or a spec string, got {type(loss).__name__}.")
        self.loss = loss
        if isinstance(weights, str):
            check_choice("weights", weights, ("equal", "halving"))
            self.weights: str | tuple[float, ...] = weights
        else:
            ws = tuple(float(w) for w in weights)
            if not ws or any(not w >= 0 for w in ws):
                raise InvalidValueError(
                    f"weights must be 'equal', 'halving' or a non-empty sequence of numbers >= 0; got {weights!r}."
                )
            self.weights = ws
        if isinstance(cls_loss, str):
            check_choice("cls_loss", cls_loss, ("bce",))
        elif cls_loss is not None and not callable(cls_loss):
            raise InvalidTypeError(
                f"cls_loss must be None, 'bce' or a loss module; got {type(cls_loss).__name__}."
            )
        self.cls_loss = cls_loss
        if not float(cls_weight) >= 0:
            raise InvalidValueError(f"cls_weight must be >= 0, got {cls_weight!r}.")
        self.cls_weight = float(cls_weight)

    def output_weights(self, n_aux: int) -> list[float]:
        """The weights of ``out`` and ``n_aux`` auxiliary outputs under this loss's policy."""
        if self.weights == "equal":
            return [1.0] * (n_aux + 1)
        if self.weights == "halving":
            return [0.5**i for i in range(n_aux + 1)]
        if len(self.weights) != n_aux + 1:
            raise InvalidValueError(
                f"DeepSupervisionLoss has {len(self.weights)} weight(s) but the model returned 1 main + {n_aux} "
                f"auxiliary output(s); pass {n_aux + 1} weights (main first) or use 'equal' / 'halving'."
            )
        return list(self.weights)

    def _inner_terms(self, pred: Tensor, target: Tensor) -> dict[str, Tensor]:
        terms = getattr(self.loss, "terms", None)
        if callable(terms):
            return terms(pred, target)
        return {"loss": self.loss(pred, target)}

    def _resize(self, aux: Tensor, out: Tensor, target: Tensor, i: int) -> Tensor:
        if aux.shape[:2] != out.shape[:2]:
            raise InvalidValueError(
                f"auxiliary output {i} has shape {tuple(aux.shape)} but the main output {tuple(out.shape)}: batch "
                "and channels must match (each head predicts the same classes)."
            )
        k = aux.ndim - 2
        size = tuple(target.shape[-k:])
        if tuple(aux.shape[2:]) == size:
            return aux
        return F.interpolate(aux, size=size, mode=_INTERP[k], align_corners=False)  # (N, C, *target spatial)

    def presence(self, out: Tensor, target: Tensor) -> Tensor:
        """``(N, C)`` bool: is class/channel ``c`` present in image ``n`` (ignored pixels excluded)."""
        n, c = out.shape[:2]
        ignore = getattr(self.loss, "ignore_index", None)
        valid = None if ignore is None else target != ignore
        if c == 1 or target.ndim == out.ndim:  # binary or multilabel masks
            t = target if target.ndim == out.ndim else target.unsqueeze(1)  # (N, C, *spatial)
            fg = t > 0.5 if t.is_floating_point() else t > 0
            if valid is not None:
                fg = fg & (valid if valid.ndim == t.ndim else valid.unsqueeze(1))
            return fg.reshape(n, t.shape[1], -1).any(-1)  # (N, C)
        t = target.reshape(n, -1).long()  # (N, L) class ids
        v = None if valid is None else valid.reshape(n, -1)
        if v is not None:
            t = t.masked_fill(~v, 0)
        return LF._class_counts(t, v, c, per_image=True, dense=LF._dense(t)) > 0  # (N, C)

    def _cls_term(self, cls: Tensor, out: Tensor, target: Tensor) -> Tensor:
        if cls.shape != out.shape[:2]:
            raise InvalidValueError(
                f"cls logits must be (N, C) = {tuple(out.shape[:2])} to match the main output; got {tuple(cls.shape)}."
            )
        present = self.presence(out, target).to(cls.dtype)  # (N, C)
        if self.cls_loss == "bce":
            return F.binary_cross_entropy_with_logits(cls, present)
        return self.cls_loss(cls, present)

    def forward(self, output: SegOutput | Tensor, target: Tensor) -> Tensor:
        """The weighted total (see the class docstring)."""
        if isinstance(output, Tensor):
            return self.loss(output, target)
        out, aux, cls = self._unpack(output)
        if not aux and (cls is None or self.cls_loss is None):
            w0 = self.output_weights(0)[0]
            value = self.loss(out, target)
            return value if w0 == 1.0 else w0 * value
        return self.terms(output, target)["loss"]

    def terms(self, output: SegOutput | Tensor, target: Tensor) -> dict[str, Tensor]:
        """``{"loss", "out", <inner terms of out>, "aux0", ..., "cls"}`` (extras detached)."""
        if isinstance(output, Tensor):
            inner = self._inner_terms(output, target)
            return {"loss": inner["loss"], "out": inner["loss"].detach(), **_extras(inner)}
        out, aux, cls = self._unpack(output)
        ws = self.output_weights(len(aux))
        inner = self._inner_terms(out, target)
        main = inner["loss"]
        total = main if ws[0] == 1.0 else ws[0] * main
        parts: dict[str, Tensor] = {"out": main.detach(), **_extras(inner)}
        for i, a in enumerate(aux):
            value = self.loss(self._resize(a, out, target, i), target)
            total = total + (value if ws[i + 1] == 1.0 else ws[i + 1] * value)
            parts[f"aux{i}"] = value.detach()
        if cls is not None and self.cls_loss is not None:
            value = self._cls_term(cls, out, target)
            total = total + (value if self.cls_weight == 1.0 else self.cls_weight * value)
            parts["cls"] = value.detach()
        return {"loss": total, **parts}

    @staticmethod
    def _unpack(output: Any) -> tuple[Tensor, list[Tensor], Tensor | None]:
        if not (hasattr(output, "out") and hasattr(output, "aux")):
            raise InvalidTypeError(
                "DeepSupervisionLoss takes a SegOutput (from model(x, aux=True)) or a logits tensor; got "
                f"{type(output).__name__}."
            )
        return output.out, list(output.aux), getattr(output, "cls", None)

    def extra_repr(self) -> str:
        return f"weights={self.weights!r}, cls_loss={self.cls_loss!r}, cls_weight={self.cls_weight}"


def _extras(inner: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inner loss's named terms (all but ``"loss"``), detached, without clobbering our keys."""
    reserved = {"loss", "out", "cls"}
    return {k: v.detach() for k, v in inner.items() if k not in reserved and not re.fullmatch(r"aux\d+", k)}
