"""The oracle: its solver against exact dynamic programming, its value against the world's
own update, and its choice of prompts from a larger pool."""

import numpy as np
import pytest

from openrlhf_cero.sim.allocate import best_counts, exact_counts, greedy_counts
from openrlhf_cero.sim.oracle import OracleAllocator
from openrlhf_cero.sim.scenario import make_scenario
from openrlhf_cero.sim.signal import ESTIMATORS, expected_group_gradient
from openrlhf_cero.sim.world import PromptWorld

SMALL = {"dataset_size": 128, "eval_size": 64, "batch_size": 8, "clusters": 4}


def _value(values: np.ndarray, counts: np.ndarray) -> float:
    return float(values[np.arange(values.shape[0]), counts].sum())


def _brute_force(values: np.ndarray, budget: int, lo: int, hi: int) -> float:
    import itertools

    options = [0, *range(lo, hi + 1)]
    best = -np.inf
    for counts in itertools.product(options, repeat=values.shape[0]):
        if sum(counts) == budget:
            best = max(best, _value(values, np.array(counts)))
    return best


@pytest.mark.parametrize("seed", range(8))
def test_exact_solver_is_optimal(seed):
    rng = np.random.default_rng(seed)
    size, lo, hi = 4, 2, 7
    estimator = ESTIMATORS[seed % len(ESTIMATORS)]
    values = rng.random(size)[:, None] * expected_group_gradient(rng.random(size) ** 2, hi, estimator)
    budget = int(rng.integers(lo, size * hi + 1))
    counts = exact_counts(values, budget, lo, hi)
    assert counts.sum() == budget and ((counts == 0) | ((counts >= lo) & (counts <= hi))).all()
    assert _value(values, counts) == pytest.approx(_brute_force(values, budget, lo, hi), abs=1e-12)


def test_greedy_solver_is_near_optimal_on_oracle_like_pools():
    """Greedy on the concave hulls (used for large pools) against exact DP: the budget spent
    exactly and the value within 1% (it is exact when the budget falls on hull vertices)."""
    rng = np.random.default_rng(0)
    gaps = []
    for trial in range(30):
        size, budget = int(rng.integers(8, 40)), int(rng.integers(20, 160))
        estimator = ESTIMATORS[trial % 2]
        p = rng.beta(0.35, 0.68, size)
        values = (p * (1 - p) + 0.01)[:, None] * expected_group_gradient(p, 16, estimator)
        greedy = greedy_counts(values, budget, 2, 16)
        assert greedy.sum() == min(budget, 16 * size)
        assert ((greedy == 0) | ((greedy >= 2) & (greedy <= 16))).all()
        best = _value(values, exact_counts(values, budget, 2, 16))
        gaps.append((best - _value(values, greedy)) / best)
    assert max(gaps) < 0.01 and np.median(gaps) < 1e-9


def test_budget_of_no_value_is_spread_not_piled():
    counts = best_counts(np.zeros((40, 33)), 320, 2, 32)
    assert counts.sum() == 320 and counts.max() - counts[counts > 0].min() <= 1


def _world(estimator: str = "group_norm", **extra) -> PromptWorld:
    return PromptWorld(make_scenario("quick", {**SMALL, "signal": estimator, "drift_sd": 0.0, **extra}), seed=0)


def _oracle(world: PromptWorld, **options) -> OracleAllocator:
    sc = world.scenario
    return OracleAllocator(
        world=world, n_samples_per_prompt=sc.n, min_samples=sc.min_samples, max_samples=sc.max_samples, seed=0,
        advantage_estimator=sc.signal, **options,
    )


@pytest.mark.parametrize("metric", ["train", "eval"])
def test_improvement_weights_are_the_first_order_gain_of_the_world_update(metric):
    """sum_i c_i G_i predicts the change of the scenario's objective that train_step makes."""
    world = _world(metric=metric, lr_self=0.002, lr_cluster=0.0005, lr_global=0.0003)
    rng = np.random.default_rng(1)
    index = rng.choice(world.n_train, size=12, replace=False)
    sizes = rng.integers(2, 17, size=12)
    wins = rng.binomial(sizes, 0.5).astype(float)
    weights = world.improvement_weights(world.ids[index])
    before = world.mean_pass_rate(metric)
    gradient = world.train_step(index, sizes, wins)
    predicted = float(weights @ gradient)
    assert abs(predicted) > 1e-5
    assert world.mean_pass_rate(metric) - before == pytest.approx(predicted, rel=2e-2)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_oracle_maximises_the_expected_one_step_gain(estimator):
    world = _world(estimator)
    oracle = _oracle(world)
    ids = world.ids[:10]
    budget = 24
    counts = oracle.plan(ids, budget)
    values = oracle.value_table(ids)
    assert counts.sum() == budget
    assert _value(values, counts) == pytest.approx(_value(values, exact_counts(values, budget, 2, 32)), rel=1e-9)


def test_oracle_skips_hopeless_prompts_and_takes_a_larger_pool():
    world = _world()
    world.theta[:64] = 0.0  # p = 0.5
    world.theta[:8] = -30.0  # hopeless
    world.theta[8:16] = 30.0  # solved
    world.unsolvable[:] = False
    oracle = _oracle(world)
    budget = world.scenario.step_budget
    assert oracle.prompts_wanted(budget) == 4 * budget // world.scenario.n
    ids = world.ids[: oracle.prompts_wanted(budget)]
    counts = oracle.plan(ids, budget)
    assert counts.sum() == budget
    assert not counts[:16].any()
    assert (counts > 0).sum() < ids.size  # it skips


def test_oracle_rejects_a_pool_below_one():
    with pytest.raises(ValueError, match="pool_factor"):
        _oracle(_world(), pool_factor=0.5)
