"""Permutohedral lattice: fast high-dimensional Gaussian filtering in NumPy/SciPy.

Adams, Baek and Davis, "Fast High-Dimensional Filtering Using the Permutohedral Lattice",
Eurographics 2010.

Filtering ``N`` values with a Gaussian over ``d``-dimensional features,
``out_i = sum_j exp(-|f_i - f_j|^2 / 2) v_j``, costs ``O(N^2)`` done directly. The lattice
approximates it in ``O(N d)`` per filtered signal: each point is *splatted* with barycentric
weights onto the ``d + 1`` vertices of the lattice simplex that encloses it, the lattice values are
*blurred* with a ``[1, 2, 1] / 4`` kernel along each of the ``d + 1`` lattice directions, and each
point *slices* (reads back) the blurred values of its ``d + 1`` vertices with the same weights.
Only vertices that some point touches exist, so memory grows with the data, not with the volume
of feature space.

Everything that depends on the features alone (the enclosing simplices, the barycentric weights,
the vertex table and each vertex's neighbours) is computed once in the constructor and stored as
two sparse matrices (splat ``V x N`` and slice ``N x V``) plus neighbour index arrays; every
:meth:`PermutohedralLattice.filter` call is then two sparse matrix products and ``d + 1`` gathers.

The result is the exact Gaussian up to an overall gain (about ``(2 pi)^(-d/2)`` of the exact sum)
and a small, position-dependent error (the lattice is not shift-invariant); callers that normalise
by the filtered ones (as the dense CRF does) do not see the gain. :attr:`~PermutohedralLattice.
self_weight` gives each point's own contribution to its output, so a caller can exclude it.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy import sparse

from seglab.errors import InvalidValueError

__all__ = ["PermutohedralLattice"]

# Vertex keys are packed into one int64 per vertex (mixed radix): the product of the per-axis key
# ranges must stay below this.
_MAX_KEY_SPACE = 2**62
# Ranks are int8 and the self-weight table enumerates 3^(d+1) blur paths: plenty for images (d <= 5).
_MAX_DIM = 10


class PermutohedralLattice:
    """A permutohedral lattice built once for a point set, reused to filter many signals.

    Args:
        features: ``(N, d)`` point positions, already divided by the Gaussian's standard deviation
            along each axis (so the kernel is ``exp(-|f_i - f_j|^2 / 2)``), ``d >= 1``.

    Raises:
        ValueError: ``features`` is not a 2-D real array, is empty, has more than 10 dimensions,
            holds NaN/inf, or spans a range too large to key (only for absurdly small standard
            deviations: increase them).

    Shape:
        - features: ``(N, d)``.
        - :meth:`filter`: input ``(N, K)`` or ``(N,)``, output the same shape, float32.

    Example:
        >>> import numpy as np
        >>> f = np.random.default_rng(0).random((1000, 3)) * 4   # (N, d) in units of sigma
        >>> lattice = PermutohedralLattice(f)
        >>> lattice.filter(np.ones((1000, 2))).shape
        (1000, 2)
    """

    def __init__(self, features: np.ndarray) -> None:
        f = _check_features(features)  # (d, N) float32
        d, n = f.shape
        d1 = d + 1
        self.num_points = n
        self.dim = d
        # Every per-point quantity is stored coordinate-major, (d+1, N), so that each operation
        # runs over long contiguous rows.
        rem0, delta, rank = _enclosing_simplex(_elevate(f))  # (d+1, N) each
        del f
        rem0_i = rem0[:d].astype(np.int64) * d1  # (d, N) integer lattice coordinates
        del rem0
        low, radix, space = _key_layout(rem0_i)
        weights_t, by_rank_radix = _barycentric(delta, rank, radix)  # (d+1, N) each
        del delta
        codes, simplex = _vertex_codes(rem0_i, low, radix, by_rank_radix, rank, space)
        del rem0_i, by_rank_radix, rank

        keys, index = _unique_codes(codes, space, simplex)  # (V,), (N, d+1)
        v = keys.size
        self.num_vertices = v
        self._self_weight = _self_weight(weights_t, _simplex_blur_matrix(d))  # (N,)
        flat_index = index.ravel()
        flat_weights = weights_t.T.ravel()  # (N*(d+1),) point-major
        indptr = np.arange(0, n * d1 + 1, d1)
        self._slice = sparse.csr_matrix((flat_weights, flat_index, indptr), shape=(n, v))  # (N, V)
        self._splat = self._slice.T  # (V, N), CSC: a scatter-add per column

        # --- neighbours of every vertex along the d+1 lattice directions (index V = absent: zero)
        radix_total = sum(radix)
        self._neighbours: list[tuple[np.ndarray, np.ndarray]] = []
        for j in range(d1):
            # one step along direction j: every coordinate -1 and coordinate j + (d+1); for j = d only
            # the -1 on the d stored coordinates shows (coordinate d is implied by sum = 0)
            step = -radix_total + (d1 * int(radix[j]) if j < d else 0)
            self._neighbours.append((_lookup(keys, keys + step), _lookup(keys, keys - step)))

    @property
    def self_weight(self) -> np.ndarray:
        """``(N,)`` float32: each point's weight on itself in :meth:`filter`'s output.

        It is ``w^T M w`` with the point's barycentric weights ``w`` and the blur's response ``M``
        between the vertices of one simplex on the infinite lattice. It is exact where every vertex
        that the blur passes through between two vertices of the point's simplex exists, which
        holds inside the data; for points isolated in feature space it overestimates (the real
        lattice drops the missing vertices' share).
        """
        return self._self_weight

    def filter(self, values: np.ndarray) -> np.ndarray:
        """Gaussian-filter ``values`` over the lattice's points: splat, blur, slice.

        Args:
            values: ``(N, K)`` or ``(N,)`` real values, one row per point.

        Returns:
            The filtered values, float32, the shape of ``values``, with the lattice's gain (divide
            by ``filter(ones)`` for a normalised filter).

        Raises:
            ValueError: ``values`` does not have ``N`` rows.
        """
        vals = np.asarray(values, dtype=np.float32)
        squeeze = vals.ndim == 1
        if squeeze:
            vals = vals[:, None]  # (N, 1)
        if vals.ndim != 2 or vals.shape[0] != self.num_points:
            raise InvalidValueError(
                f"values must have shape ({self.num_points}, K) or ({self.num_points},); got {np.shape(values)}."
            )
        grid = np.zeros((self.num_vertices + 1, vals.shape[1]), np.float32)  # (V+1, K); row V stays 0
        grid[:-1] = self._splat @ vals  # (V, K)
        for down, up in self._neighbours:
            grid[:-1] = 0.5 * grid[:-1] + 0.25 * (grid[down] + grid[up])  # (V, K): right side is built first
        out = self._slice @ grid[:-1]  # (N, K)
        return out[:, 0] if squeeze else out


def _check_features(features: np.ndarray) -> np.ndarray:
    """``(N, d)`` finite real positions as a contiguous float32 ``(d, N)`` array."""
    f = np.asarray(features)
    if f.ndim != 2 or f.shape[0] == 0 or f.shape[1] == 0:
        raise InvalidValueError(f"features must have shape (N, d) with N, d >= 1; got {f.shape}.")
    if not (np.issubdtype(f.dtype, np.floating) or np.issubdtype(f.dtype, np.integer)):
        raise InvalidValueError(f"features must be real numbers; got dtype {f.dtype}.")
    f = np.ascontiguousarray(f.T, dtype=np.float32)  # (d, N): free for f.T of a float32 (d, N) array
    if not np.isfinite(f).all():
        raise InvalidValueError("features hold NaN or inf; clean the image or the positions first.")
    if f.shape[0] > _MAX_DIM:
        raise InvalidValueError(
            f"the lattice supports up to {_MAX_DIM} feature dimensions; got {f.shape[0]}."
        )
    return f


def _elevate(f: np.ndarray) -> np.ndarray:
    """Elevate ``(d, N)`` positions onto the hyperplane ``sum(x) = 0`` of R^{d+1}: ``(d+1, N)``.

    Scaled so that the [1, 2, 1] blur along the d+1 directions approximates a unit Gaussian (Adams
    et al., section 3.1): ``x_0 = sum_m c_m``, ``x_r = sum_{m >= r} c_m - r c_{r-1}``, with
    ``c = f * scale``. The result is ``x / (d+1)``, in which the remainder-0 lattice points are the
    integer points.
    """
    d, n = f.shape
    scale = [math.sqrt(2.0 / 3.0) / math.sqrt((m + 1.0) * (m + 2.0)) for m in range(d)]
    elevated = np.empty((d + 1, n), np.float32)  # (d+1, N)
    suffix = np.zeros(n, np.float32)  # (N,)
    for r in range(d, 0, -1):
        cf = f[r - 1] * scale[r - 1]  # (N,)
        np.multiply(cf, -float(r), out=elevated[r])
        elevated[r] += suffix
        suffix += cf
    elevated[0] = suffix
    return elevated


def _enclosing_simplex(elevated: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The remainder-0 point ``rem0``, the offsets ``delta`` and the coordinate ranks of the
    simplex that encloses each point (``elevated`` is consumed)."""
    d1, n = elevated.shape
    # the nearest remainder-0 point (in these units: round every coordinate)
    rem0 = np.rint(elevated)  # (d+1, N)
    resid = np.subtract(elevated, rem0, out=elevated)  # (d+1, N) in [-1/2, 1/2]
    coord_sum = rem0.sum(0).astype(np.int8)  # (N,) exact: small integers
    # rank[c] = how many coordinates have a larger residual (ties: the earlier one ranks lower)
    rank = np.zeros((d1, n), np.int8)  # (d+1, N)
    for a in range(d1):
        for b in range(a + 1, d1):
            a_lower = resid[a] < resid[b]  # (N,)
            rank[a] += a_lower
            rank[b] += ~a_lower
    # move to the remainder-0 point whose coordinates sum to zero: shift the ranks by the sum;
    # coordinates whose rank leaves [0, d] wrap around and move by one lattice unit
    rank += coord_sum
    wrap_hi, wrap_lo = rank >= d1, rank < 0  # (d+1, N)
    np.subtract(rank, d1, out=rank, where=wrap_hi)
    np.add(rank, d1, out=rank, where=wrap_lo)
    np.subtract(rem0, 1.0, out=rem0, where=wrap_hi)
    np.add(rem0, 1.0, out=rem0, where=wrap_lo)
    np.add(resid, 1.0, out=resid, where=wrap_hi)
    np.subtract(resid, 1.0, out=resid, where=wrap_lo)
    return rem0, resid, rank  # resid is now delta = (elevated - rem0) / (d+1)


def _key_layout(rem0_i: np.ndarray) -> tuple[np.ndarray, list[int], int]:
    """The mixed-radix layout of the vertex keys: lowest coordinate, radix per coordinate, key space.

    Raises:
        ValueError: the features span more lattice cells than 64-bit keys can hold.
    """
    d = rem0_i.shape[0]
    pad = 2 * (d + 1)  # vertices lie within rem0 +- d; neighbours one lattice step further
    low = rem0_i.min(1) - pad  # (d,)
    span = rem0_i.max(1) + pad - low + 1  # (d,)
    space = math.prod(int(x) for x in span)
    if space >= _MAX_KEY_SPACE:
        raise InvalidValueError(
            "the features span too many lattice cells to key them in 64 bits: the Gaussian's "
            "standard deviations are far too small for the data's range; increase them."
        )
    radix = [1] * d
    for c in range(d - 2, -1, -1):
        radix[c] = radix[c + 1] * int(span[c + 1])
    return low, radix, space


def _barycentric(delta: np.ndarray, rank: np.ndarray, radix: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Barycentric weights of the d+1 simplex vertices (vertex r has remainder r), and the radix
    of the coordinate of each rank (for the vertex keys).

    With ``s_k`` the delta of the coordinate of rank k, ``w_0 = 1 + s_d - s_0`` and
    ``w_r = s_{d-r} - s_{d+1-r}``.
    """
    d1, n = delta.shape
    d = d1 - 1
    cols = np.arange(n)
    by_rank_delta = np.empty(d1 * n, np.float32)  # (d+1, N) flattened: s_k
    by_rank_radix = np.zeros(d1 * n, np.int64)  # radix of the coordinate of rank k (0 for coordinate d)
    for c in range(d1):
        at = rank[c].astype(np.intp) * n + cols  # (N,)
        by_rank_delta[at] = delta[c]
        if c < d:
            by_rank_radix[at] = radix[c]
    s_k = by_rank_delta.reshape(d1, n)
    weights_t = np.empty((d1, n), np.float32)  # (d+1, N)
    weights_t[0] = 1.0 + s_k[d] - s_k[0]
    for r in range(1, d1):
        weights_t[r] = s_k[d - r] - s_k[d + 1 - r]
    return weights_t, by_rank_radix.reshape(d1, n)


def _vertex_codes(
    rem0_i: np.ndarray,
    low: np.ndarray,
    radix: list[int],
    by_rank_radix: np.ndarray,
    rank: np.ndarray,
    space: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Integer keys ``(N, d+1)`` of the simplex vertices, and one code per simplex (or ``None``).

    The first d coordinates determine a vertex, packed in mixed radix. Vertex r of the simplex is
    rem0 + r on the coordinates of rank <= d - r and rem0 + r - (d+1) on the others: going from
    vertex r-1 to r adds 1 to every coordinate and -(d+1) to the coordinate of rank d+1-r. The
    simplex code (its remainder-0 vertex and its rank order) serves the sort path.
    """
    d, n = rem0_i.shape
    d1 = d + 1
    radix_total = sum(radix)
    codes = np.empty((n, d1), np.int64)  # (N, d+1)
    code = np.zeros(n, np.int64)  # (N,)
    for c in range(d):
        code += (rem0_i[c] - low[c]) * radix[c]
    codes[:, 0] = code
    for r in range(1, d1):
        code += radix_total - d1 * by_rank_radix[d1 - r]
        codes[:, r] = code
    simplex = None
    if space * d1**d < _MAX_KEY_SPACE:
        simplex = codes[:, 0] * d1**d
        for c in range(d):
            simplex += rank[c].astype(np.int64) * d1**c
    return codes, simplex


def _self_weight(weights_t: np.ndarray, m: np.ndarray) -> np.ndarray:
    """``w^T M w`` per point for coordinate-major weights ``(d+1, N)`` and a symmetric ``M``."""
    out = np.zeros(weights_t.shape[1], np.float32)  # (N,)
    for r in range(weights_t.shape[0]):
        inner = float(m[r, r]) * weights_t[r]
        for c in range(r + 1, weights_t.shape[0]):
            inner += float(2.0 * m[r, c]) * weights_t[c]
        out += weights_t[r] * inner
    return out


def _unique_codes(codes: np.ndarray, space: int, simplex: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct vertex codes and the index of each entry of ``codes`` among them.

    Args:
        codes: ``(N, d+1)`` vertex codes of every point's simplex.
        space: the number of possible codes.
        simplex: ``(N,)`` one code per distinct simplex, or ``None`` when it would overflow.

    A dense occupancy table (O(N), no sort) when the key space is small compared with the data,
    as for one-channel images. Otherwise a sort, but of the distinct simplices only: runs of equal
    simplices (neighbouring pixels usually share theirs) are merged first, then the simplices are
    made unique, and only their vertices are sorted.
    """
    n, d1 = codes.shape
    if space <= max(4 * codes.size, 1 << 20):
        occupied = np.zeros(space, bool)
        occupied[codes] = True
        keys = np.flatnonzero(occupied)  # (V,)
        lookup = np.zeros(space, np.int32 if keys.size < 2**31 else np.int64)
        lookup[keys] = np.arange(keys.size)
        return keys, lookup[codes]
    if simplex is None:
        keys, inverse = np.unique(codes, return_inverse=True)
        return keys, inverse.reshape(n, d1)
    new_run = np.ones(n, bool)  # (N,)
    new_run[1:] = simplex[1:] != simplex[:-1]
    starts = np.flatnonzero(new_run)  # (R,)
    distinct, which = np.unique(simplex[starts], return_inverse=True)  # (U,), (R,)
    representative = np.empty(distinct.size, np.intp)  # (U,) one run of each simplex
    representative[which] = starts  # (asking np.unique for first indices would need a slower stable sort)
    keys, inverse = np.unique(codes[representative], return_inverse=True)  # (V,), (U*(d+1),)
    run_of = np.cumsum(new_run) - 1  # (N,)
    return keys, inverse.reshape(-1, d1)[which.reshape(-1)[run_of]]


def _lookup(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions of ``wanted`` in the sorted ``keys``; ``len(keys)`` (the zero row) where absent."""
    pos = np.minimum(np.searchsorted(keys, wanted), keys.size - 1)  # (V,)
    return np.where(keys[pos] == wanted, pos, keys.size)


def _simplex_blur_matrix(d: int) -> np.ndarray:
    """``(d+1, d+1)`` response of the full blur between the vertices of one lattice simplex.

    Entry ``[r, s]`` is the value the blur (``[1, 2, 1] / 4`` along each of the ``d + 1``
    directions, on the infinite lattice) carries from a simplex's remainder-``s`` vertex to its
    remainder-``r`` vertex. The directions are the vectors ``(d+1) e_j - 1`` of ``R^{d+1}``; a blur
    path takes ``c_j in {-1, 0, 1}`` steps along each, with weight ``1/2`` for no step and ``1/4``
    for a step. By symmetry the matrix is the same for every simplex.
    """
    d1 = d + 1
    # canonical simplex (ranks in coordinate order): vertex r is r at ranks <= d - r, r - (d+1) after
    canon = np.array([[r if m <= d - r else r - d1 for m in range(d1)] for r in range(d1)])
    table: dict[tuple[int, ...], float] = {}
    for c in itertools.product((-1, 0, 1), repeat=d1):
        total = sum(c)
        disp = tuple(d1 * cj - total for cj in c)
        table[disp] = table.get(disp, 0.0) + math.prod(0.5 if cj == 0 else 0.25 for cj in c)
    m = np.zeros((d1, d1))
    for r in range(d1):
        for s in range(d1):
            m[r, s] = table.get(tuple(int(x) for x in canon[r] - canon[s]), 0.0)
    return m
