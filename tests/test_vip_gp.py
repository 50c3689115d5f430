"""VIP's logit GP: the textbook posterior, carried means, and better-than-prior predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from openrlhf_cero.allocators.vip_gp import SequentialLogitGP, logit, observation_targets, sigmoid


def _unit_rows(rng: np.random.Generator, size: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(size, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _rbf(x: np.ndarray, y: np.ndarray, length_scale: float) -> np.ndarray:
    """The kernel from squared distances, written independently of the module's shortcut."""
    sq = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return np.exp(-sq / (2 * length_scale**2))


def _gp(dim: int, **kw) -> SequentialLogitGP:
    settings = dict(dim=dim, length_scale=0.7, prior_logit=-0.5, window=10_000, noise_scale=1.0, dtype=np.float64)
    settings.update(kw)
    return SequentialLogitGP(**settings)


def test_one_update_equals_textbook_posterior_mean():
    rng = np.random.default_rng(0)
    dim, ell, prior = 6, 0.7, -0.5
    train, test = _unit_rows(rng, 30, dim), _unit_rows(rng, 20, dim)
    trials = rng.integers(4, 17, 30)
    successes = rng.binomial(trials, 0.4).astype(float)
    gp = _gp(dim)
    ids = np.arange(30, dtype=np.uint64)
    gp.update(ids, train, gp.predict(ids, train), successes, trials)
    got = gp.predict(np.arange(100, 120, dtype=np.uint64), test).logits

    y, noise = observation_targets(successes, trials, 1.0)
    k_train = _rbf(train, train, ell) + np.diag(noise + 1e-6)
    expected = prior + _rbf(test, train, ell) @ np.linalg.solve(k_train, y - prior)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    # Trained prompts carry their posterior mean at the training inputs.
    anchors = np.array([gp.anchors[i][0] for i in range(30)])
    np.testing.assert_allclose(anchors, prior + _rbf(train, train, ell) @ np.linalg.solve(k_train, y - prior), atol=1e-9)


def test_second_update_uses_first_posterior_as_prior_mean():
    """Carried mean: step 2 is a textbook GP step whose prior mean is step 1's posterior mean."""
    rng = np.random.default_rng(1)
    dim, ell, prior = 5, 0.7, -0.5
    x1, x2, test = _unit_rows(rng, 12, dim), _unit_rows(rng, 9, dim), _unit_rows(rng, 15, dim)
    n1, n2 = rng.integers(4, 9, 12), rng.integers(4, 9, 9)
    s1, s2 = rng.binomial(n1, 0.3).astype(float), rng.binomial(n2, 0.7).astype(float)
    ids1, ids2 = np.arange(12, dtype=np.uint64), np.arange(50, 59, dtype=np.uint64)
    gp = _gp(dim)
    gp.update(ids1, x1, gp.predict(ids1, x1), s1, n1)
    gp.update(ids2, x2, gp.predict(ids2, x2), s2, n2)
    got = gp.predict(np.arange(200, 215, dtype=np.uint64), test).logits

    def step(mean_fn, x, s, n):
        y, noise = observation_targets(s, n, 1.0)
        alpha = np.linalg.solve(_rbf(x, x, ell) + np.diag(noise + 1e-6), y - mean_fn(x))
        return lambda z: mean_fn(z) + _rbf(z, x, ell) @ alpha

    m0 = lambda z: np.full(z.shape[0], prior)  # noqa: E731
    m2 = step(step(m0, x1, s1, n1), x2, s2, n2)
    np.testing.assert_allclose(got, m2(test), atol=1e-9)


def test_seen_prompt_keeps_its_own_mean_plus_later_corrections():
    rng = np.random.default_rng(2)
    dim = 4
    x1, x2 = _unit_rows(rng, 3, dim), _unit_rows(rng, 3, dim)
    gp = _gp(dim)
    ids1, ids2 = np.array([1, 2, 3], dtype=np.uint64), np.array([4, 5, 6], dtype=np.uint64)
    gp.update(ids1, x1, gp.predict(ids1, x1), np.array([8.0, 0.0, 4.0]), np.array([8, 8, 8]))
    after_first = gp.predict(ids1, x1).logits
    np.testing.assert_allclose(after_first, [gp.anchors[i][0] for i in (1, 2, 3)])
    before = gp.predict(ids2, x2)
    gp.update(ids2, x2, before, np.array([1.0, 2.0, 3.0]), np.array([8, 8, 8]))
    y, noise = observation_targets(np.array([1.0, 2.0, 3.0]), np.array([8, 8, 8]), 1.0)
    alpha = np.linalg.solve(_rbf(x2, x2, 0.7) + np.diag(noise + 1e-6), y - before.logits)
    np.testing.assert_allclose(gp.predict(ids1, x1).logits, after_first + _rbf(x1, x2, 0.7) @ alpha, atol=1e-9)


def test_float32_hot_path_close_to_float64():
    rng = np.random.default_rng(3)
    dim = 32
    x = _unit_rows(rng, 200, dim)
    n = rng.integers(4, 17, 200)
    s = rng.binomial(n, 0.5).astype(float)
    ids = np.arange(200, dtype=np.uint64)
    results = []
    for dtype in (np.float64, np.float32):
        gp = _gp(dim, dtype=dtype)
        gp.update(ids, x, gp.predict(ids, x), s, n)
        results.append(gp.predict(np.arange(1000, 1100, dtype=np.uint64), _unit_rows(np.random.default_rng(9), 100, dim)).logits)
    np.testing.assert_allclose(results[1], results[0], atol=1e-4)


def test_missing_features_fall_back_to_anchor_or_prior():
    gp = _gp(3)
    features = np.full((2, 3), np.nan)
    ids = np.array([11, 12], dtype=np.uint64)
    first = gp.predict(ids, features)
    assert np.all(first.logits == -0.5) and not first.has_features.any()
    gp.update(ids, features, first, np.array([7.0, 0.0]), np.array([8, 8]))
    after = gp.predict(ids, None).logits
    assert after[0] > -0.5 > after[1]  # each prompt's own outcome moved its mean
    assert gp.predict(np.array([13], dtype=np.uint64), None).logits[0] == -0.5


def test_window_keeps_only_the_latest_points():
    rng = np.random.default_rng(4)
    gp = _gp(4, window=10)
    for step in range(3):
        x = _unit_rows(rng, 6, 4)
        ids = np.arange(step * 6, step * 6 + 6, dtype=np.uint64)
        gp.update(ids, x, gp.predict(ids, x), np.full(6, 3.0), np.full(6, 8))
    assert gp.win_alpha.size == 10 and gp.win_features.shape == (10, 4)
    assert gp.win_update.tolist() == [2] * 4 + [3] * 6


def _clustered_prompts(rng: np.random.Generator, clusters: int, per_cluster: int, dim: int):
    centres = _unit_rows(rng, clusters, dim)
    x = np.repeat(centres, per_cluster, axis=0) + 0.15 * rng.normal(size=(clusters * per_cluster, dim)) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    rates = np.repeat(rng.beta(0.5, 0.5, clusters), per_cluster)
    return x, rates


def test_similar_prompts_share_pass_rates_gp_beats_prior_on_unseen_prompts():
    """Train on half of each cluster; predict the other half (never seen) from similarity."""
    rng = np.random.default_rng(5)
    x, rates = _clustered_prompts(rng, clusters=20, per_cluster=20, dim=16)
    seen = np.arange(rates.size) % 2 == 0
    gp = SequentialLogitGP(dim=16, length_scale=0.4, prior_logit=-1.0, window=8192, noise_scale=1.0, dtype=np.float64)
    ids = np.arange(rates.size, dtype=np.uint64)
    for _ in range(3):  # three epochs over the seen half, 8 rollouts each
        trials = np.full(seen.sum(), 8)
        successes = rng.binomial(trials, rates[seen]).astype(float)
        gp.update(ids[seen], x[seen], gp.predict(ids[seen], x[seen]), successes, trials)
    predicted = sigmoid(gp.predict(ids[~seen], x[~seen]).logits)
    observed = rng.binomial(8, rates[~seen]) / 8
    brier_gp = np.mean((predicted - observed) ** 2)
    brier_prior = np.mean((sigmoid(-1.0) - observed) ** 2)
    assert brier_gp < 0.5 * brier_prior, (brier_gp, brier_prior)


def test_state_round_trip_is_exact():
    rng = np.random.default_rng(6)
    gp = _gp(8, dtype=np.float32)
    for step in range(3):
        x = _unit_rows(rng, 10, 8)
        ids = rng.integers(0, 2**63, 10, dtype=np.uint64) | np.uint64(2**63)  # ids above 2^63 too
        gp.update(ids, x, gp.predict(ids, x), rng.integers(0, 9, 10).astype(float), np.full(10, 8))
    copy = _gp(8, dtype=np.float32)
    copy.load_state(json.loads(json.dumps(gp.state())))
    probe_ids = np.concatenate([ids, np.arange(5, dtype=np.uint64)])
    probe_x = np.concatenate([x, _unit_rows(rng, 5, 8)])
    assert np.array_equal(copy.predict(probe_ids, probe_x).logits, gp.predict(probe_ids, probe_x).logits)
    with pytest.raises(ValueError, match="dimension"):
        _gp(9).load_state(gp.state())


def test_observation_targets_are_finite_at_all_or_nothing():
    y, noise = observation_targets(np.array([0.0, 8.0, 4.0]), np.array([8, 8, 8]), 1.0)
    assert np.all(np.isfinite(y)) and np.all(noise > 0)
    np.testing.assert_allclose(y, logit(np.array([0.5 / 9, 8.5 / 9, 0.5])))


@pytest.mark.parametrize("noise_scale", [1.0, 0.0])
def test_a_prompt_repeated_in_a_batch_is_one_pooled_observation(noise_scale):
    """OpenRLHF data sets repeat prompts: two rows of one prompt update the GP exactly as
    one row with their successes and trials added (binomial counts pool), and the update
    never fails, even with ``noise_scale`` 0 (which made ``K + Sigma`` singular)."""
    rng = np.random.default_rng(3)
    x = _unit_rows(rng, 6, 4)
    ids = np.arange(6, dtype=np.uint64)
    successes, trials = np.array([1.0, 2, 0, 4, 3, 1]), np.array([4.0, 4, 4, 8, 6, 2])
    repeated = np.r_[ids, ids[[1, 3]]]
    once, twice = _gp(4, noise_scale=noise_scale), _gp(4, noise_scale=noise_scale)
    once.update(
        ids, x, once.predict(ids, x), successes + np.isin(ids, [1, 3]) * successes, trials + np.isin(ids, [1, 3]) * trials
    )
    x_rep = x[repeated.astype(int)]
    twice.update(repeated, x_rep, twice.predict(repeated, x_rep), successes[repeated.astype(int)], trials[repeated.astype(int)])
    np.testing.assert_allclose(twice.win_alpha, once.win_alpha, rtol=1e-9, atol=1e-12)
    assert twice.anchors.keys() == once.anchors.keys()
    for pid in once.anchors:
        assert twice.anchors[pid][0] == pytest.approx(once.anchors[pid][0], abs=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_distinct_prompts_with_equal_features_factorise_with_jitter(dtype):
    """Different prompts whose features coincide (texts the featuriser cannot tell apart)
    with interpolating noise cannot be pooled (they are different prompts): the update
    still factorises, and the posterior stays finite and between the observed rates."""
    rng = np.random.default_rng(4)
    row = _unit_rows(rng, 1, 8)
    x = np.repeat(row, 3, axis=0)
    ids = np.array([10, 11, 12], dtype=np.uint64)
    gp = _gp(8, noise_scale=0.0, dtype=dtype)
    gp.update(ids, x, gp.predict(ids, x), np.array([1.0, 7.0, 4.0]), np.array([8.0, 8.0, 8.0]))
    assert np.all(np.isfinite(gp.win_alpha))
    low, high = observation_targets(np.array([1.0, 7.0]), np.array([8.0, 8.0]), 0.0)[0]
    for pid in ids.tolist():
        assert low - 1e-6 <= gp.anchors[pid][0] <= high + 1e-6


def test_cholesky_jitter_grows_until_the_factorisation_succeeds():
    """Rounding in single precision can leave an off-diagonal entry above the diagonal for
    two rows with equal features (what BLAS kernels like OpenBLAS's Haswell one produce):
    the matrix is then not positive definite; the factor is found with a small jitter."""
    from openrlhf_cero.allocators.vip_gp import _cholesky_with_jitter

    kernel = np.array([[1.0, 1.0 + 2e-6], [1.0 + 2e-6, 1.0]], dtype=np.float32)
    diagonal = np.full(2, 1e-6, dtype=np.float32)
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky((kernel + np.diag(diagonal)).astype(np.float64))
    factor, lower = _cholesky_with_jitter(kernel, diagonal)
    rebuilt = np.tril(factor) @ np.tril(factor).T
    assert np.all(np.isfinite(rebuilt))
    np.testing.assert_allclose(rebuilt, kernel, atol=2e-3)  # jitter well below the kernel's unit scale
