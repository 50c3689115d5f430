"""The oracle: optimal under its criterion (brute force), skips only hopeless prompts."""

import itertools

import numpy as np
import pytest
from scipy import stats

from openrlhf_cero.sim.oracle import OracleAllocator
from openrlhf_cero.sim.signal import group_signal


def _expected_grpo(n: int, p: float) -> float:
    k = np.arange(n + 1)
    return float((stats.binom.pmf(k, n, p) * group_signal(n, k)).sum())


def _oracle(p_by_id: dict[int, float], **kw) -> OracleAllocator:
    settings = dict(n_samples_per_prompt=8, min_samples=2, max_samples=16, seed=0)
    settings.update(kw)
    return OracleAllocator(pass_rates=lambda ids: np.array([p_by_id[int(i)] for i in ids]), **settings)


def _brute_force(values, budget: int, lo: int, hi: int):
    best, best_counts = -np.inf, None
    for counts in itertools.product(range(lo, hi + 1), repeat=len(values)):
        if sum(counts) == budget:
            total = sum(v(c) for v, c in zip(values, counts))
            if total > best + 1e-12:
                best, best_counts = total, counts
    return best, best_counts


@pytest.mark.parametrize("seed", range(6))
def test_oracle_maximises_expected_signal(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.03, 0.97, size=3)
    ids = np.arange(3, dtype=np.uint64)
    oracle = _oracle(dict(enumerate(p)), skip_zero_variance=1.0)
    budget = 24
    counts = oracle.plan(ids, budget)
    assert counts.sum() == budget and counts.min() >= 2 and counts.max() <= 16
    best, _ = _brute_force([lambda n, q=q: _expected_grpo(n, q) for q in p], budget, 2, 16)
    assert sum(_expected_grpo(c, q) for c, q in zip(counts, p)) == pytest.approx(best, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_rloo_oracle_minimises_gradient_variance(seed):
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.05, 0.95, size=3)
    oracle = _oracle(dict(enumerate(p)), skip_zero_variance=1.0, signal="rloo", advantage_estimator="rloo")
    counts = oracle.plan(np.arange(3, dtype=np.uint64), 24)
    variance = lambda n, q: -q * (1 - q) / (n - 1)  # noqa: E731
    best, _ = _brute_force([lambda n, q=q: variance(n, q) for q in p], 24, 2, 16)
    assert sum(variance(c, q) for c, q in zip(counts, p)) == pytest.approx(best, abs=1e-12)


def test_oracle_skips_hopeless_prompts_and_spends_n_on_the_rest():
    p = {0: 0.0, 1: 0.5, 2: 1.0, 3: 0.3, 4: 0.001}
    oracle = _oracle(p)
    counts = oracle.plan(np.arange(5, dtype=np.uint64), 40)
    assert counts[[0, 2, 4]].tolist() == [0, 0, 0]
    assert counts[[1, 3]].sum() == 16 and counts[[1, 3]].min() >= 2


def test_oracle_spreads_budget_it_cannot_use():
    """All prompts hopeless but skipping disabled: the budget is spread evenly, not piled up."""
    oracle = _oracle({i: 0.0 for i in range(4)}, skip_zero_variance=1.0)
    assert oracle.plan(np.arange(4, dtype=np.uint64), 32).tolist() == [8, 8, 8, 8]
