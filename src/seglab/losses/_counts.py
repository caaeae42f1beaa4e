"""Soft counts from logits in one op each, and the region losses fused on top of them.

Every region loss (Dice, IoU, Tversky) is a formula of three per-class sums, ``Σ p·g``, ``Σ p``
and ``Σ g``. Computing them through autograd stores several full-size intermediates and runs one
backward node per element-wise op; the ops here compute the sums and write the gradient in closed
form instead. Three engines cover the cases:

- ``sigmoid`` (binary and multilabel): ``∂/∂x = p·(1 - p)·(a + b·g)``.
- ``onehot`` (multiclass on the CPU with a few classes): one batched product of the
  probabilities with the one-hot target gives the whole ``(C, C)`` table of ``Σ p_c·[t = k]``.
- ``gather`` (multiclass otherwise): the probability of each pixel's true class is gathered and
  summed per class, without a one-hot tensor; ``dense`` is the same with one-hot compares in place
  of the scatters, for accelerators.

``a`` and ``b`` are the upstream gradients of ``Σ p`` and ``Σ p·g``. :class:`SoftCounts` returns
the counts (``soft_counts``); :class:`RatioRegion` also
folds the loss formula in (``1 - num / max(den, eps)`` with ``num`` and ``den`` linear in the
counts, which covers Dice, IoU and Tversky with ``gamma = 1``), so that a whole region loss is a
single autograd node: a call of a millisecond spends a tenth of it in the scalar bookkeeping of
the formula otherwise.

On the CPU the engines avoid fresh full-size buffers where they can (the gradient is written
over a one-hot or target copy the op owns): a first touch of freshly mapped memory costs as much
as the arithmetic on it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

ONEHOT_MAX_CLASSES = 5
"""On the CPU, up to this many classes the one-hot product beats the gather / scatter path (2x at
2 classes, 1.2x at 4, measured); beyond it the scatter path's O(L) cost wins."""


FLOAT_FORMULA_DEVICES = ("cpu",)
"""Devices where :class:`RatioRegion` evaluates the per-class formula on Python floats (no host
sync to pay); elsewhere it stays in tensor ops."""


def dense(t: Tensor) -> bool:
    """How to count classes: one-hot compares on accelerators (no atomics, no host sync, always
    deterministic), gather / scatter on the CPU (fewer passes over memory)."""
    return t.device.type != "cpu"


def onehot(target: Tensor, c: int) -> Tensor:
    """``(N, L)`` class ids -> ``(N, C, L)`` bool one-hot, by broadcasting a compare."""
    return target.unsqueeze(1) == torch.arange(c, device=target.device).view(1, c, 1)


def onehot_float(target: Tensor, valid: Tensor | None, like: Tensor) -> Tensor:
    """``(N, L)`` class ids -> ``(N, C, L)`` one-hot in ``like``'s dtype (``C`` from ``like``), 0
    at ignored pixels.

    The ids are compared as floats (exact below 2^24) straight into the float output: an integer
    compare with a float output computes in int64 and copies (an 8-byte temporary per element).
    """
    n, c, length = like.shape
    classes = torch.arange(c, dtype=like.dtype, device=target.device).view(1, c, 1)
    ids = target.to(like.dtype).unsqueeze(1)  # (N, 1, L)
    g = torch.eq(ids, classes, out=like.new_empty(n, c, length))
    return g if valid is None else g.mul_(valid.unsqueeze(1))


def class_counts(target: Tensor, valid: Tensor | None, c: int, per_image: bool, dense: bool) -> Tensor:
    """Pixels per class, ``(C,)`` or ``(N, C)`` with ``per_image``, ignored pixels excluded."""
    n = target.shape[0]
    if dense:
        oh = onehot(target, c)  # (N, C, L)
        if valid is not None:
            oh = oh & valid.unsqueeze(1)
        return oh.sum((2,) if per_image else (0, 2))
    ones = torch.ones((), dtype=torch.int64, device=target.device).expand(target.shape)
    src = ones if valid is None else valid.long()
    counts = torch.zeros(n, c, dtype=torch.int64, device=target.device).scatter_add_(1, target, src)  # (N, C)
    return counts if per_image else counts.sum(0)


def true_class_sum(values: Tensor, target: Tensor, c: int, per_image: bool, dense: bool) -> Tensor:
    """``Σ values`` over the pixels of each class: ``(C,)`` or ``(N, C)`` (differentiable)."""
    n = target.shape[0]
    if dense:
        return (onehot(target, c) * values.unsqueeze(1)).sum((2,) if per_image else (0, 2))
    sums = values.new_zeros(n, c).scatter_add(1, target, values)  # (N, C): parallel over images
    return sums if per_image else sums.sum(0)


def _upstream(
    g_sp: Tensor | None, g_inter: Tensor | None, like: Tensor, per_image: bool
) -> tuple[Tensor, Tensor]:
    """The upstream gradients ``a`` (of ``Σ p``) and ``b`` (of ``Σ p·g``) as ``(N|1, C, 1)``."""
    n, c, _ = like.shape
    shape = (n, c, 1) if per_image else (1, c, 1)
    a = (g_sp if g_sp is not None else like.new_zeros(shape)).reshape(shape)
    b = (g_inter if g_inter is not None else like.new_zeros(shape)).reshape(shape)
    return a, b


# ------------------------------------------------------------------------------------------------
# sigmoid engine: binary and multilabel masks
# ------------------------------------------------------------------------------------------------
def _sigmoid_forward(
    x: Tensor, g: Tensor, valid: Tensor | None, per_image: bool, squared: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(Σ p·g, Σ p, Σ g, p)`` (``Σ p²``, ``Σ g²`` when squared), ``(C,)`` or ``(N, C)``."""
    p = torch.sigmoid(x)  # (N, C, L)
    pm = p if valid is None else p * valid
    if x.shape[1] == 1 and not per_image:  # one channel pooled: dot products, no temporaries
        gf, pf = g.reshape(-1), p.view(-1)
        inter = torch.dot(pf, gf).view(1)  # g is 0 at ignored pixels
        sp = (torch.dot(pm.reshape(-1), pf) if squared else pm.sum()).view(1)
        sg = (torch.dot(gf, gf) if squared else gf.sum()).view(1)
    else:
        dims = (2,) if per_image else (0, 2)
        inter = (p * g).sum(dims)  # (C,) or (N, C)
        sp = (pm * p if squared else pm).sum(dims)
        sg = (g * g if squared else g).sum(dims)
    return inter, sp, sg, p


def _sigmoid_backward(
    a: Tensor, b: Tensor | float, p: Tensor, g: Tensor, valid: Tensor | None, squared: bool, own_g: bool
) -> Tensor:
    """``∂/∂x = p·(1 - p)·(a + b·g)`` (``2·a·p`` in place of ``a`` for squared sums), written
    over ``g`` when the op owns it. ``a`` and ``b`` broadcast to ``(N, C, L)``; a float ``b``
    (one channel pooled, on the CPU) comes with a 0-dim ``a``."""
    if isinstance(b, float):  # one pass: a + b·g
        if squared:
            grad_p = torch.add((2.0 * a) * p, g, alpha=b, out=g if own_g else None)
        else:
            grad_p = torch.add(a, g, alpha=b, out=g if own_g else torch.empty_like(g))
    elif squared:  # ∂(Σ p²)/∂p = 2·a·p
        grad_p = torch.addcmul((2.0 * a) * p, g, b, out=g if own_g else None)  # (N, C, L)
    elif own_g:
        grad_p = g.mul_(b).add_(a)
    else:  # g·b + a: two light passes beat addcmul over a stride-0 (expanded) base
        grad_p = (g * b).add_(a)  # (N, C, L)
    if valid is not None:
        grad_p = grad_p.mul_(valid)
    # grad_p is ours: write ∂/∂x = grad_p·p·(1 - p) into it
    return torch.ops.aten.sigmoid_backward.grad_input(grad_p, p, grad_input=grad_p)


# ------------------------------------------------------------------------------------------------
# one-hot engine: multiclass, CPU, few classes
# ------------------------------------------------------------------------------------------------
def _onehot_forward(
    x: Tensor, target: Tensor, valid: Tensor | None, per_image: bool, squared: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(Σ p·g, Σ p, Σ g, p, g)`` with ``g`` the float one-hot target."""
    p = x.softmax(1)  # (N, C, L)
    g = onehot_float(target, valid, p)  # (N, C, L), 0 at ignored pixels
    m = torch.bmm(p, g.transpose(1, 2))  # (N, C, C): m[n, c, k] = Σ_l p_c·[t = k]
    if not per_image:
        m = m.sum(0, keepdim=True)  # (1, C, C)
    inter = m.diagonal(dim1=1, dim2=2)  # (N|1, C)
    dims = 2 if per_image else (0, 2)
    sg = g.sum(dims)  # (C,) or (N, C): class sizes (exact: sums of ones)
    if squared:
        pm = p if valid is None else p * valid.unsqueeze(1)
        sp = (pm * p).sum(dims)
    else:
        sp = m.sum(2)  # row sums: Σ p over the valid pixels
    if not per_image:
        inter, sp = inter[0], sp.reshape(-1)
    return inter.contiguous(), sp, sg, p, g


def _onehot_backward(
    a: Tensor, b: Tensor, p: Tensor, g: Tensor, valid: Tensor | None, squared: bool
) -> Tensor:
    """The gradient w.r.t. the logits, written over ``g`` (which the op owns)."""
    # ∂loss/∂p = a + b·g (2·a·p + b·g for squared sums); 0 at ignored pixels
    big = g.mul_(b)  # (N, C, L)
    big = big.addcmul_(p, 2.0 * a) if squared else big.add_(a)
    if valid is not None:
        big = big.mul_(valid.unsqueeze(1))
    # the softmax Jacobian, applied in place: the CPU kernel reads each pixel's C values before it
    # writes them (exact equality with the out-of-place op is tested)
    return torch.ops.aten._softmax_backward_data.out(big, p, 1, p.dtype, grad_input=big)


# ------------------------------------------------------------------------------------------------
# gather engine: multiclass, many classes or accelerators
# ------------------------------------------------------------------------------------------------
def _gather_forward(
    x: Tensor, target: Tensor, valid: Tensor | None, per_image: bool, squared: bool, dense: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(Σ p·g, Σ p, p, p_true)`` without a one-hot target (class sizes come separately)."""
    c = x.shape[1]
    p = x.softmax(1)  # (N, C, L)
    p_true = p.gather(1, target.unsqueeze(1)).squeeze(1)  # (N, L)
    pm = p
    if valid is not None:
        v = valid.to(p.dtype)  # (N, L)
        p_true = p_true * v
        pm = p * v.unsqueeze(1)
    dims = (2,) if per_image else (0, 2)
    sp = (pm * p if squared else pm).sum(dims)  # (C,) or (N, C)
    if dense or per_image:
        inter = true_class_sum(p_true, target, c, per_image, dense)
    else:  # pooled on the CPU: a weighted bincount is one serial pass, faster than scatter_add
        inter = torch.bincount(target.reshape(-1), weights=p_true.reshape(-1), minlength=c)[:c]  # (C,)
    return inter, sp, p, p_true


def _gather_backward(
    a: Tensor,
    b: Tensor,
    p: Tensor,
    p_true: Tensor,
    target: Tensor,
    valid: Tensor | None,
    per_image: bool,
    squared: bool,
    dense: bool,
) -> Tensor:
    """``∂/∂x_c = p_c·(a_c - s) + [c = t]·p_t·b_t`` with ``s = Σ_k a_k·p_k + p_t·b_t``
    (``2·a_k·p_k`` in place of ``a_k`` for squared sums)."""
    n, c, _ = p.shape
    if per_image:
        b_t = b.view(n, c).gather(1, target)  # (N, L): b at each pixel's class
    else:
        b_t = b.reshape(-1).index_select(0, target.reshape(-1)).view_as(target)
    pb = p_true * b_t  # (N, L)
    if squared:
        q = (2.0 * a) * p  # (N, C, L): ∂(Σ p²)/∂p, per class
        s = (p * q).sum(1) + pb  # (N, L)
    elif dense:  # an element-wise product and sum: exact also where TF32 matmuls are on
        q = a
        s = (p * a).sum(1) + pb  # (N, L) = Σ_c a_c·p_c + p_t·b_t
    else:
        q = a
        s = (a.view(-1, 1, c) @ p).squeeze(1) + pb  # (N, L), one pass on the CPU
    grad = (q - s.unsqueeze(1)).mul_(p)  # (N, C, L)
    if dense:
        grad = grad.add_(onehot(target, c) * pb.unsqueeze(1))
    else:
        grad.scatter_add_(1, target.unsqueeze(1), pb.unsqueeze(1))
    if valid is not None:
        grad = grad.mul_(valid.unsqueeze(1))
    return grad


# ------------------------------------------------------------------------------------------------
# one dispatch for both ops
# ------------------------------------------------------------------------------------------------
ENGINES = ("sigmoid", "onehot", "gather", "dense")
"""``gather`` counts by gather / bincount / scatter (CPU), ``dense`` by one-hot compares
(accelerators: no atomics, no host sync, deterministic)."""


def _engine_forward(
    ctx: torch.autograd.function.FunctionCtx,
    x: Tensor,
    target: Tensor,
    valid: Tensor | None,
    engine: str,
    per_image: bool,
    squared: bool,
    source: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(Σ p·g, Σ p, Σ g)`` by ``engine``; what its backward pass needs goes on ``ctx``.

    ``source`` (sigmoid engine): the tensor a private float ``target`` was converted from. The op
    then overwrites ``target`` with the gradient and rebuilds it from ``source`` should a second
    backward pass come; with ``None`` the target is the caller's and is never written.
    """
    ctx.engine, ctx.per_image, ctx.squared, ctx.source, ctx.g = engine, per_image, squared, source, None
    if engine == "sigmoid":
        inter, sp, sg, p = _sigmoid_forward(x, target, valid, per_image, squared)
        if source is None:
            ctx.save_for_backward(p, target, valid)
        else:  # the target copy is ours: held on ctx (not saved), overwritten by the backward pass
            ctx.save_for_backward(p, None, valid)
            ctx.g = target
    elif engine == "onehot":
        inter, sp, sg, p, g = _onehot_forward(x, target, valid, per_image, squared)
        ctx.save_for_backward(p, target, valid)
        ctx.g = g  # ours as well
    else:
        is_dense = engine == "dense"
        sg = class_counts(target, valid, x.shape[1], per_image, is_dense).to(x.dtype)
        inter, sp, p, p_true = _gather_forward(x, target, valid, per_image, squared, is_dense)
        ctx.save_for_backward(p, p_true, target, valid)
    return inter, sp, sg


def _engine_backward(ctx: torch.autograd.function.FunctionCtx, a: Tensor, b: Tensor | float) -> Tensor:
    """The gradient w.r.t. the logits from the upstream gradients ``a`` (of ``Σ p``) and ``b``
    (of ``Σ p·g``)."""
    saved = ctx.saved_tensors
    p = saved[0]
    if ctx.engine == "sigmoid":
        _, target, valid = saved
        own = ctx.source is not None
        if own:
            target, ctx.g = ctx.g, None
            if target is None:  # a second backward pass: the first one wrote over the copy
                target = _rebuild_target(ctx.source, valid, p)
        return _sigmoid_backward(a, b, p, target, valid, ctx.squared, own_g=own)
    if ctx.engine == "onehot":
        _, target, valid = saved
        g, ctx.g = ctx.g, None
        if g is None:  # a second backward pass through the graph
            g = onehot_float(target, valid, p)
        return _onehot_backward(a, b, p, g, valid, ctx.squared)
    _, p_true, target, valid = saved
    return _gather_backward(a, b, p, p_true, target, valid, ctx.per_image, ctx.squared, ctx.engine == "dense")


class SoftCounts(torch.autograd.Function):
    """The soft counts ``(Σ p·g, Σ p, Σ g)`` of logits (sigmoid or softmax applied inside), each
    ``(C,)`` or ``(N, C)``, with a closed-form gradient. ``Σ g`` (class sizes) takes none."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, target: Tensor, valid: Tensor | None, engine: str,
        per_image: bool, squared: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:  # fmt: skip
        inter, sp, sg = _engine_forward(ctx, x, target, valid, engine, per_image, squared, None)
        ctx.mark_non_differentiable(sg)
        return inter, sp, sg

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(
        ctx: torch.autograd.function.FunctionCtx, g_inter: Tensor, g_sp: Tensor, _g_sg: Tensor
    ) -> tuple:  # type: ignore[override]
        a, b = _upstream(g_sp, g_inter, ctx.saved_tensors[0], ctx.per_image)
        return _engine_backward(ctx, a, b), None, None, None, None, None


# ------------------------------------------------------------------------------------------------
# a whole region loss as one op
# ------------------------------------------------------------------------------------------------
class Ratio(NamedTuple):
    """``loss = 1 - num / max(den, eps)`` with ``num = k_i·I + smooth`` and
    ``den = d_i·I + d_p·P + d_g·G + smooth`` in the counts ``I = Σ p·g``, ``P = Σ p``, ``G = Σ g``.

    Dice: ``(2, 0, 1, 1)``; IoU: ``(1, -1, 1, 1)``; Tversky: ``(1, 1 - alpha - beta, alpha, beta)``.
    The methods take tensors or floats alike.
    """

    k_i: float
    d_i: float
    d_p: float
    d_g: float
    smooth: float
    eps: float

    def parts(self, inter: Tensor | float, sp: Tensor | float, sg: Tensor | float) -> tuple:
        """``(num, den)`` before the clamp."""
        num = inter * self.k_i + self.smooth
        return num, sp * self.d_p + sg * self.d_g + inter * self.d_i + self.smooth

    def value(self, inter: Tensor, sp: Tensor, sg: Tensor) -> Tensor:
        """The loss through plain (autograd-tracked) tensor ops."""
        num, den = self.parts(inter, sp, sg)
        return 1.0 - num / den.clamp_min(self.eps)

    def terms(self, inter: float, sp: float, sg: float) -> tuple[float, float, float]:
        """The loss and its derivatives with respect to ``I`` and ``P`` at one class's counts.

        Plain floats (double precision): a handful of classes cost microseconds this way, where
        each tensor op on a few elements costs several.
        """
        num, den = self.parts(inter, sp, sg)
        den_c = max(den, self.eps)
        score = num / den_c
        # clamp_min passes the gradient where den >= eps (torch's convention, kept for parity)
        slope = score / den_c if den >= self.eps else 0.0  # num / den_c²
        return 1.0 - score, slope * self.d_i - self.k_i / den_c, slope * self.d_p

    def slopes(self, inter: Tensor, sp: Tensor, sg: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`terms`'s derivatives as tensor ops (accelerators: no host sync)."""
        num, den = self.parts(inter, sp, sg)
        den_c = den.clamp_min(self.eps)
        slope = num / den_c / den_c * (den >= self.eps).to(den.dtype)
        return slope * self.d_i - self.k_i / den_c, slope * self.d_p


class RatioRegion(torch.autograd.Function):
    """A region loss from logits in one autograd op: the counts of ``engine`` (see
    :func:`_engine_forward` for ``source``), the :class:`Ratio` per class, and with ``reduction``
    ``"mean"`` or ``"sum"`` its reduction over every entry (a scalar out); with ``None`` the
    per-class losses, ``(C,)`` or ``(N, C)``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, x: Tensor, target: Tensor, valid: Tensor | None, engine: str,
        per_image: bool, squared: bool, ratio: Ratio, source: Tensor | None, reduction: str | None = None,
    ) -> Tensor:  # fmt: skip
        inter, sp, sg = _engine_forward(ctx, x, target, valid, engine, per_image, squared, source)
        ctx.reduction, ctx.shape = reduction, inter.shape
        if x.device.type in FLOAT_FORMULA_DEVICES:  # a few numbers: the formula in floats
            if inter.numel() == 1:
                rows = [(inter.item(), sp.item(), sg.item())]
            else:
                rows = zip(*torch.stack([inter, sp, sg]).reshape(3, -1).tolist())
            loss, d_inter, d_sp = zip(*(ratio.terms(*r) for r in rows))
            ctx.d_inter, ctx.d_sp = d_inter, d_sp  # tuples of floats
            if reduction is not None:
                total = math.fsum(loss)
                return torch.tensor(total / len(loss) if reduction == "mean" else total, dtype=x.dtype)
            return torch.tensor(loss, dtype=x.dtype).view(ctx.shape)
        loss = ratio.value(inter, sp, sg)
        ctx.d_inter, ctx.d_sp = ratio.slopes(inter, sp, sg)
        if reduction is not None:
            return loss.mean() if reduction == "mean" else loss.sum()
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, g_loss: Tensor) -> tuple:  # type: ignore[override]
        p = ctx.saved_tensors[0]
        count = math.prod(ctx.shape)
        if isinstance(ctx.d_sp, tuple):  # CPU: the chain rule on floats
            if ctx.reduction is not None:  # d(mean)/d(entry) = 1 / count, d(sum)/d(entry) = 1
                g = g_loss.item()
                up = [g / count if ctx.reduction == "mean" else g] * count
            else:
                up = g_loss.reshape(-1).tolist()
            if len(up) == 1:  # one channel pooled: b stays a float (a scalar multiplier)
                a = torch.tensor(up[0] * ctx.d_sp[0], dtype=p.dtype)
                b = up[0] * ctx.d_inter[0]
            else:
                g_sp = torch.tensor([u * d for u, d in zip(up, ctx.d_sp)], dtype=p.dtype)
                g_inter = torch.tensor([u * d for u, d in zip(up, ctx.d_inter)], dtype=p.dtype)
                a, b = _upstream(g_sp, g_inter, p, ctx.per_image)
        else:
            if ctx.reduction is not None:
                g_loss = g_loss.expand(ctx.shape)
                g_loss = g_loss / count if ctx.reduction == "mean" else g_loss
            a, b = _upstream(g_loss * ctx.d_sp, g_loss * ctx.d_inter, p, ctx.per_image)
        return _engine_backward(ctx, a, b), None, None, None, None, None, None, None, None


def _rebuild_target(source: Tensor, valid: Tensor | None, like: Tensor) -> Tensor:
    """The float target again, from the tensor it was converted from (0 at ignored pixels)."""
    g = source.reshape(like.shape).to(like.dtype, copy=True)
    return g if valid is None else g.masked_fill_(~valid, 0)
