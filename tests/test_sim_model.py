"""The simulator's model: the group gradient, initial pass rates, calibration to docs/sources.md section 3.
(tests/test_sim_loss.py checks the learning rule against OpenRLHF's own loss.)"""

import numpy as np
import pytest
from scipy import stats

from openrlhf_cero.sim.calibration import PUBLISHED, calibration_report, zero_variance_share
from openrlhf_cero.sim.scenario import make_scenario
from openrlhf_cero.sim.signal import (
    ESTIMATORS,
    expected_group_gradient,
    expected_group_gradient_lookup,
    group_gradient,
    whitening_factor,
)
from openrlhf_cero.sim.world import initial_pass_rates


def _advantages(rewards: np.ndarray, estimator: str) -> np.ndarray:
    """The advantages of shape_rewards, in numpy (unbiased std + 1e-9 for group_norm)."""
    n = rewards.size
    if estimator == "group_norm":
        return (rewards - rewards.mean()) / (rewards.std(ddof=1) + 1e-9)
    if estimator == "rloo":
        return rewards - (rewards.sum() - rewards) / (n - 1)
    return rewards - rewards.mean()


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_group_gradient_is_the_sum_over_the_group_of_advantage_times_score(estimator):
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(2, 40))
        p = float(rng.random())
        rewards = (rng.random(n) < p).astype(float)
        want = float(np.sum(_advantages(rewards, estimator) * (rewards - p)))
        assert group_gradient(n, rewards.sum(), estimator) == pytest.approx(want, rel=1e-9, abs=1e-12)


def test_whitening_factor_is_one_over_the_steps_advantage_std():
    sizes, wins = np.array([2, 5, 8, 3]), np.array([1, 0, 3, 3])
    advantages = np.concatenate([_advantages((np.arange(n) < k).astype(float), "reinforce_baseline") for n, k in zip(sizes, wins)])
    assert whitening_factor(sizes, wins, "reinforce_baseline") == pytest.approx(1 / advantages.std(), rel=1e-12)
    assert whitening_factor(sizes, wins, "group_norm") == 1.0


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_expected_group_gradient_matches_scipy_binomial(estimator):
    p = np.array([0.0, 0.02, 0.3, 0.5, 0.97, 1.0])
    table = expected_group_gradient(p, 24, estimator)
    for i, pi in enumerate(p):
        for n in (1, 2, 5, 8, 24):
            k = np.arange(n + 1)
            want = (stats.binom.pmf(k, n, pi) * group_gradient(n, k, estimator)).sum()
            assert table[i, n] == pytest.approx(want, abs=1e-9)
    lookup = expected_group_gradient_lookup(np.random.default_rng(3).random(500), 24, estimator)
    exact = expected_group_gradient(np.random.default_rng(3).random(500), 24, estimator)
    assert np.abs(lookup - exact).max() <= 1e-5 * exact.max()


def test_expected_gradient_per_rollout_rises_with_group_size():
    """GRPO (token-mean): a rollout in a larger group teaches more on average (fewer
    zero-variance groups), towards sqrt(p(1-p)); RLOO's is p(1-p) at every n >= 2."""
    p = np.array([0.02, 0.3, 0.5, 0.97])
    n = np.arange(2, 33)
    per_rollout = expected_group_gradient(p, 32, "group_norm")[:, 2:] / n
    assert (np.diff(per_rollout, axis=1) > 0).all()
    assert (per_rollout < np.sqrt(p * (1 - p))[:, None] + 1e-9).all()
    rloo = expected_group_gradient(p, 32, "rloo")[:, 2:] / n
    np.testing.assert_allclose(rloo, np.repeat((p * (1 - p))[:, None], n.size, axis=1), atol=1e-12)


def test_initial_pass_rates_follow_the_fitted_beta():
    scenario = make_scenario("deepscaler", {"unsolvable_share": 0.0})
    p, unsolvable = initial_pass_rates(scenario, 20000, np.random.default_rng(1))
    assert not unsolvable.any()
    assert stats.kstest(p, stats.beta(0.35, 0.68).cdf).pvalue > 0.01


def test_unsolvable_share_is_drawn_at_the_stated_rate():
    scenario = make_scenario("deepscaler")
    p, unsolvable = initial_pass_rates(scenario, 50000, np.random.default_rng(2))
    assert unsolvable.mean() == pytest.approx(scenario.unsolvable_share, abs=4 * np.sqrt(0.02 * 0.98 / 50000))
    assert (p[unsolvable] == 0).all()


@pytest.mark.parametrize("n", [8, 16, 64])
def test_zero_variance_share_at_start_matches_published_figures(n):
    """Analytic share within the published range +- its stated tolerance, and the world's
    sampled groups agree with the analytic value."""
    scenario = make_scenario("deepscaler")
    exact = zero_variance_share(scenario, n)
    figure = PUBLISHED[f"zero_variance_start_n{n}"]
    assert figure.accepts(exact), (exact, figure)
    size = 40000
    p, _ = initial_pass_rates(scenario, size, np.random.default_rng(n))
    wins = np.random.default_rng(100 + n).binomial(n, p)
    sampled = np.mean((wins == 0) | (wins == n))
    assert sampled == pytest.approx(exact, abs=4 * np.sqrt(exact * (1 - exact) / size))


def test_pure_beta_fit_falls_just_short_of_published_shares():
    """Documented in docs/simulator.md: Beta(0.35, 0.68) alone gives 0.444 / 0.336 / 0.195,
    just under the published ranges; the 2% unsolvable prompts close the gap."""
    pure = make_scenario("deepscaler", {"unsolvable_share": 0.0})
    assert [round(zero_variance_share(pure, n), 3) for n in (8, 16, 64)] == pytest.approx([0.444, 0.336, 0.195], abs=1e-3)


def test_training_dynamics_match_published_run():
    """Uniform n=8 on the deepscaler preset, ~50 visits per prompt: every figure of docs/sources.md section 3
    within its stated tolerance (PUBLISHED)."""
    measured = calibration_report(make_scenario("deepscaler"), seed=0)
    misses = {k: (v, PUBLISHED[k]) for k, v in measured.items() if k in PUBLISHED and not PUBLISHED[k].accepts(v)}
    assert not misses
    assert measured["visits"] >= 45
