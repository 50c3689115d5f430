"""VIP's variance-minimising allocation against scipy's general solver and brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.optimize import minimize

from openrlhf_cero.allocators.variance_allocation import (
    VarianceModel,
    continuous_allocation,
    integer_allocation,
    objective,
)


def _random_instance(rng: np.random.Generator, lo: int, max_prompts: int, max_span: int):
    size = int(rng.integers(2, max_prompts + 1))
    hi = lo + int(rng.integers(1, max_span + 1))
    p = rng.beta(0.4, 0.6, size=size).clip(1e-3, 1 - 1e-3)
    a = p * (1 - p)
    budget = int(rng.integers(size * lo, size * hi + 1))
    return a, budget, hi


def _scipy_optimum(model: VarianceModel, a: np.ndarray, budget: int, lo: int, hi: int, start: np.ndarray) -> float:
    """SLSQP on the same (convex) objective, from ``start``; inf if it ends infeasible."""
    f = lambda n: objective(model, a, n, envelope=True)  # noqa: E731
    grad = lambda n: -a * model.marginal_envelope(n)  # noqa: E731
    start = np.clip(start + (budget - start.sum()) / a.size, lo, hi)
    res = minimize(
        f,
        start,
        jac=grad,
        method="SLSQP",
        bounds=[(lo, hi)] * a.size,
        constraints=[{"type": "eq", "fun": lambda n: n.sum() - budget, "jac": lambda n: np.ones_like(n)}],
        options={"ftol": 1e-14, "maxiter": 1000},
    )
    feasible = abs(res.x.sum() - budget) < 1e-6 and np.all(res.x >= lo - 1e-9) and np.all(res.x <= hi + 1e-9)
    return float(res.fun) if feasible else np.inf


@pytest.mark.parametrize("kind,lo", [("rloo", 2), ("rloo", 3), ("grpo", 2), ("grpo", 3), ("grpo", 4)])
def test_continuous_matches_scipy_on_random_instances(kind, lo):
    """200 instances in all (40 per model and lower bound); relative objective gap <= 1e-6."""
    rng = np.random.default_rng(1000 + lo + (kind == "grpo") * 10)
    model = VarianceModel(kind, lo)
    for _ in range(40):
        a, budget, hi = _random_instance(rng, lo, max_prompts=24, max_span=32)
        n = continuous_allocation(model, a, budget, lo, hi)
        assert n.sum() == pytest.approx(budget, abs=1e-8)
        assert n.min() >= lo - 1e-12 and n.max() <= hi + 1e-12
        ours = objective(model, a, n, envelope=True)
        reference = _scipy_optimum(model, a, budget, lo, hi, np.full(a.size, budget / a.size))
        if not abs(ours - reference) <= 1e-6 * abs(reference):  # a second start before judging
            spread = lo + (hi - lo) * np.sqrt(a) / np.sqrt(a).max()
            reference = min(reference, _scipy_optimum(model, a, budget, lo, hi, spread))
        assert abs(ours - reference) <= 1e-6 * abs(reference), (ours, reference)


def test_rloo_closed_form_interior():
    """RLOO KKT: n_q = 1 + sqrt(a_q / lambda) when no bound is active."""
    a = np.array([0.05, 0.1, 0.2, 0.25])
    model = VarianceModel("rloo", 2)
    n = continuous_allocation(model, a, 40, 2, 64)
    lam = a / (n - 1) ** 2
    assert np.allclose(lam, lam[0], rtol=1e-9)
    assert np.allclose(n, 1 + np.sqrt(a / lam[0]))


def test_grpo_envelope_touches_h_at_four_when_lo_is_two():
    model = VarianceModel("grpo", 2)
    assert model.envelope_end() == pytest.approx(4.0, abs=1e-9)
    grid = np.linspace(2, 40, 2001)
    envelope, h = model.h_envelope(grid), model.h(grid)
    assert np.all(envelope <= h + 1e-15)
    assert np.allclose(envelope[grid >= 4], h[grid >= 4])
    assert np.all(np.diff(envelope, 2) >= -1e-12)  # convex


def _brute_force(model: VarianceModel, a: np.ndarray, budget: int, lo: int, hi: int) -> float:
    return min(
        objective(model, a, np.array(c))
        for c in itertools.product(range(lo, hi + 1), repeat=a.size)
        if sum(c) == budget
    )


@pytest.mark.parametrize("kind,lo", [("rloo", 2), ("rloo", 3), ("grpo", 2), ("grpo", 3)])
def test_integer_matches_brute_force(kind, lo):
    rng = np.random.default_rng(7 + lo + (kind == "grpo") * 100)
    model = VarianceModel(kind, lo)
    for _ in range(150):
        a, budget, hi = _random_instance(rng, lo, max_prompts=5, max_span=6)
        n = integer_allocation(model, a, budget, lo, hi)
        assert n.dtype.kind == "i"
        assert int(n.sum()) == budget
        assert n.min() >= lo and n.max() <= hi
        best = _brute_force(model, a, budget, lo, hi)
        assert objective(model, a, n) <= best * (1 + 1e-12), (a, budget, hi, n)


def test_equal_weights_give_uniform_split():
    model = VarianceModel("grpo", 2)
    n = integer_allocation(model, np.full(16, 0.2), 16 * 8, 2, 32)
    assert np.all(n == 8)
    n = integer_allocation(model, np.full(5, 0.2), 23, 2, 32)
    assert sorted(n.tolist()) == [4, 4, 5, 5, 5]


def test_more_variance_gets_more_rollouts():
    """Monotone: a prompt with larger a_q never gets fewer rollouts."""
    rng = np.random.default_rng(3)
    for kind in ("rloo", "grpo"):
        model = VarianceModel(kind, 2)
        a = np.sort(rng.uniform(1e-4, 0.25, 64))
        n = integer_allocation(model, a, 64 * 8, 2, 32)
        assert np.all(np.diff(n) >= 0)
        assert n[0] < n[-1]


def test_bounds_at_the_extremes_of_the_budget():
    model = VarianceModel("rloo", 2)
    a = np.array([0.01, 0.2, 0.25])
    assert np.all(integer_allocation(model, a, 6, 2, 16) == 2)
    assert np.all(integer_allocation(model, a, 48, 2, 16) == 16)
    with pytest.raises(ValueError):
        continuous_allocation(model, a, 49, 2, 16)
