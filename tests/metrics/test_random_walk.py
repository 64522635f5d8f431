"""The random-walk null of trajectory PCA: the closed form and the step-profile limit against
walks simulated independently here (explicit Gaussian steps, numpy's SVD), with tolerances
of a few standard errors of the simulated mean."""

from __future__ import annotations

import numpy as np
import pytest

from dlscope.errors import UserError
from dlscope.metrics.random_walk import profile_shares, simulate_shares, walk_null, walk_shares


def _explicit_walks(steps, dim, walks, seed):
    """Top shares of explicit walks: Gaussian directions scaled to `steps`, cumulated from a
    random start, centred PCA by the SVD."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(walks):
        z = rng.standard_normal((len(steps), dim))
        z *= (np.asarray(steps) / np.linalg.norm(z, axis=1))[:, None]
        x = np.vstack([rng.standard_normal(dim), z]).cumsum(0)
        sv = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
        out.append(sv / sv.sum())
    return np.array(out)


@pytest.mark.parametrize("n", [2, 3, 9, 25, 60])
def test_closed_form_is_the_eigenvalues_of_the_centred_cumsum_matrix(n):
    L, C = np.tril(np.ones((n, n))), np.eye(n) - 1 / n
    ev = np.sort(np.linalg.eigvalsh(C @ L @ L.T @ C))[::-1][:n - 1]
    np.testing.assert_allclose(walk_shares(n), ev / ev.sum(), rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(ev.sum(), (n * n - 1) / 6, rtol=1e-10)


def test_closed_form_limits_and_published_values():
    assert walk_shares(10_000)[0] == pytest.approx(6 / np.pi**2, rel=1e-4)  # A&S-D's 6/π²
    assert walk_shares(9)[:2].sum() == pytest.approx(0.782, abs=1e-3)  # SCIENCE.md §8: 78%
    assert walk_shares(25)[:2].sum() == pytest.approx(0.763, abs=1e-3)  # 76%
    assert np.all(np.diff(walk_shares(25)) < 0)
    with pytest.raises(UserError):
        walk_shares(1)


@pytest.mark.parametrize("n", [9, 25])
def test_closed_form_matches_simulated_walks_within_standard_errors(n):
    """Finite dimension d biases the mean share by about 0.3/d (measured: 1.3e-4 at d=2000,
    4e-5 at 5000, 1e-5 at 20000); 1/d is allowed on top of 4 standard errors."""
    dim = 2000
    sim = _explicit_walks(np.ones(n - 1), dim, 100, seed=n)[:, :2].sum(1)
    se = sim.std(ddof=1) / np.sqrt(len(sim))
    assert abs(sim.mean() - walk_shares(n)[:2].sum()) < 4 * se + 1 / dim


def test_profile_limit_and_both_simulation_paths_agree_with_explicit_walks():
    steps = 2.0 * 0.7 ** np.arange(12)  # a decaying step profile, 13 snapshots
    ref = _explicit_walks(steps, 3000, 100, seed=1)[:, :2].sum(1)
    se_ref = ref.std(ddof=1) / np.sqrt(len(ref))
    for dim in (3000, 30_000):  # explicit vectors inside simulate_shares; a Wishart draw
        got = simulate_shares(steps, dim, walks=300, seed=2)[:, :2].sum(1)
        se = np.hypot(se_ref, got.std(ddof=1) / np.sqrt(len(got)))
        assert abs(got.mean() - ref.mean()) < 4 * se + 1 / 3000
    same = simulate_shares(steps, 3000, walks=300, seed=3)[:, :2].sum(1)  # spread, same d
    assert 0.7 < same.std(ddof=1) / ref.std(ddof=1) < 1.4
    assert abs(profile_shares(steps)[:2].sum() - ref.mean()) < 4 * se_ref + 1 / 3000
    assert profile_shares(steps)[:2].sum() > walk_shares(13)[:2].sum()  # decay concentrates


def test_simulation_is_seeded_and_rows_sum_to_one():
    a = simulate_shares([1.0, 2.0, 0.5], dim=50, walks=3, seed=7)
    np.testing.assert_array_equal(a, simulate_shares([1.0, 2.0, 0.5], dim=50, walks=3, seed=7))
    np.testing.assert_allclose(a.sum(1), 1.0)
    assert not np.allclose(a, simulate_shares([1.0, 2.0, 0.5], dim=50, walks=3, seed=8))


def test_walk_null_of_a_trajectory_uses_its_steps_and_dimension():
    rng = np.random.default_rng(0)
    walk = np.vstack([np.zeros(4000), rng.standard_normal((8, 4000))]).cumsum(0)
    null = walk_null(walk, walks=6, seed=1)
    steps = np.linalg.norm(np.diff(walk, axis=0), axis=1)
    assert (null["snapshots"], null["dim"], null["walks"]) == (9, 4000, 6)
    assert null["closed_form"] == pytest.approx(walk_shares(9)[:2].sum())
    assert null["profile"] == pytest.approx(profile_shares(steps)[:2].sum())
    assert null["simulated"] == pytest.approx(simulate_shares(steps, 4000, 6, 1)[:, :2].sum(1)
                                              .mean())
    for bad in (walk[:2], np.zeros((5, 10)), np.full((4, 3), np.nan)):
        with pytest.raises(UserError):
            walk_null(bad)
    with pytest.raises(UserError):
        simulate_shares([1.0, -1.0], dim=10)
