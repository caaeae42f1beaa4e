"""Permutohedral lattice: against the exact Gaussian filter on small point sets."""

from __future__ import annotations

import numpy as np
import pytest

from seglab.postprocess import PermutohedralLattice, permutohedral
from seglab.postprocess.permutohedral import _unique_codes


def _exact_normalised(features: np.ndarray, values: np.ndarray) -> np.ndarray:
    d2 = ((features[:, None, :] - features[None, :, :]) ** 2).sum(-1)  # (N, N)
    kernel = np.exp(-d2 / 2.0)
    return kernel @ values / kernel.sum(1, keepdims=True)


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_normalised_filter_matches_exact_gaussian(dim: int) -> None:
    # measured mean errors: 0.019 (d=1), 0.022 (2), 0.024 (3), 0.030 (5) for a filtered spread of 0.3;
    # the lattice's kernel is a compact, slightly position-dependent stand-in for the Gaussian
    rng = np.random.default_rng(dim)
    features = rng.random((600, dim)) * 3.0  # (N, d), a dense cloud a few sigmas wide
    values = np.sin(2.0 * features[:, :1])  # (N, 1) varies on the kernel's scale
    lattice = PermutohedralLattice(features)
    approx = lattice.filter(values) / lattice.filter(np.ones((600, 1)))
    exact = _exact_normalised(features, values)
    err = np.abs(approx - exact)
    assert err.mean() < 0.04 and err.max() < 0.15
    assert np.abs(exact - exact.mean()).mean() > 0.25  # the comparison is not between two constants
    # white noise is averaged away the same way by both
    noise = rng.random((600, 1))
    err_noise = np.abs(
        lattice.filter(noise) / lattice.filter(np.ones((600, 1))) - _exact_normalised(features, noise)
    )
    assert err_noise.mean() < 0.005


def test_self_weight_matches_the_operator_diagonal_in_dense_data() -> None:
    rng = np.random.default_rng(0)
    features = rng.random((500, 3)) * 3.0
    lattice = PermutohedralLattice(features)
    diagonal = np.diagonal(lattice.filter(np.eye(500, dtype=np.float32)))  # (N,)
    rel = np.abs(lattice.self_weight / diagonal - 1.0)
    assert np.median(rel) < 0.03
    assert lattice.self_weight.shape == (500,) and lattice.self_weight.dtype == np.float32


def test_filter_is_linear_and_keeps_shape() -> None:
    rng = np.random.default_rng(1)
    lattice = PermutohedralLattice(rng.random((300, 2)) * 4.0)
    u, v = rng.random(300), rng.random(300)
    both = lattice.filter(np.stack([u, v], 1))  # (N, 2)
    np.testing.assert_allclose(
        lattice.filter(2.0 * u - 3.0 * v), 2.0 * both[:, 0] - 3.0 * both[:, 1], atol=1e-5
    )
    assert lattice.filter(u).shape == (300,) and lattice.filter(u).dtype == np.float32


def test_coincident_points_average_exactly() -> None:
    features = np.full((50, 3), 1.7)
    values = np.random.default_rng(2).random((50, 2))
    lattice = PermutohedralLattice(features)
    out = lattice.filter(values) / lattice.filter(np.ones((50, 1)))
    np.testing.assert_allclose(out, np.broadcast_to(values.mean(0), out.shape), rtol=1e-5)


def test_distant_clusters_do_not_interact() -> None:
    rng = np.random.default_rng(3)
    a = rng.random((100, 3))  # (100, 3) within one sigma
    b = rng.random((100, 3)) + 30.0  # 30 sigmas away
    lattice = PermutohedralLattice(np.concatenate([a, b]))
    indicator = np.r_[np.ones(100), np.zeros(100)]
    out = lattice.filter(indicator)
    assert np.all(out[100:] == 0.0) and np.all(out[:100] > 0.0)


def test_vertex_table_paths_agree() -> None:
    # the dense occupancy table (small key spaces) and the sort over distinct simplices (large
    # ones) must give the same vertex ids
    rng = np.random.default_rng(4)
    simplex_codes = rng.integers(0, 40_000, (300, 4))  # (S, d+1): the vertex codes of 300 simplices
    which = np.repeat(rng.integers(0, 300, 2000), rng.integers(1, 4, 2000))  # runs of equal simplices
    codes = simplex_codes[which]  # (N, d+1)
    keys_a, index_a = _unique_codes(codes, 40_000, None)
    keys_b, index_b = _unique_codes(codes, 2**40, which.astype(np.int64))
    keys_c, index_c = _unique_codes(codes, 2**40, None)
    np.testing.assert_array_equal(keys_a, np.unique(simplex_codes[np.unique(which)]))
    for keys, index in ((keys_b, index_b), (keys_c, index_c)):
        np.testing.assert_array_equal(keys, keys_a)
        np.testing.assert_array_equal(index, index_a)
    np.testing.assert_array_equal(keys_a[index_a], codes)


def test_five_dimensional_cloud_uses_the_sort_path_accurately(monkeypatch: pytest.MonkeyPatch) -> None:
    # a 5-D cloud four sigmas wide: its key space is too large for the dense occupancy table, so
    # the vertices come from the sort over distinct simplices (checked below); dense enough that
    # the filter moves the values (a step edge is blurred), so an identity filter would fail
    paths: list[bool] = []

    def spy(codes: np.ndarray, space: int, simplex: np.ndarray | None):
        paths.append(space > max(4 * codes.size, 1 << 20) and simplex is not None)
        return _unique_codes(codes, space, simplex)

    monkeypatch.setattr(permutohedral, "_unique_codes", spy)
    rng = np.random.default_rng(5)
    features = rng.random((800, 5)) * 4.0  # (N, 5)
    values = (features[:, :1] > 2.0).astype(np.float64)  # (N, 1) a step along the first feature
    lattice = PermutohedralLattice(features)
    assert paths == [True]
    approx = lattice.filter(values) / lattice.filter(np.ones((800, 1)))
    exact = _exact_normalised(features, values)
    moved = np.abs(exact - values).mean()  # measured 0.20
    assert moved > 0.15
    assert np.abs(approx - exact).mean() < 0.02  # measured 0.014
    assert np.abs(approx - values).mean() > 0.5 * moved  # the lattice moved the values too


def test_rejects_bad_features() -> None:
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        PermutohedralLattice(np.zeros(5))
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        PermutohedralLattice(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="NaN"):
        PermutohedralLattice(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match="real numbers"):
        PermutohedralLattice(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="increase them"):
        PermutohedralLattice(np.array([[0.0] * 5, [1e5] * 5]) * np.array([1, -1, 1, -1, 1]))
    lattice = PermutohedralLattice(np.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"\(4, K\)"):
        lattice.filter(np.ones((3, 1)))
